"""The simulator's exception tree; :meth:`SimulatorError.to_response` is its one mapping onto vLLM's envelope."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import ClassVar

from fastapi.responses import Response

from inference_node.sim.protocol import ErrorInfo, ErrorResponse, json_response


class SimulatorError(Exception):
    """A request the simulator refuses, answered like vLLM's ``create_error_response``."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    err_type: str = "BadRequestError"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_response(self) -> Response:
        body = ErrorResponse(
            error=ErrorInfo(message=self.message, type=self.err_type, param=self.param, code=self.status.value)
        )
        return json_response(body, status_code=self.status.value)


class InvalidRequestError(SimulatorError):
    """400, like vLLM's VLLMValidationError: the message gains ``(parameter=..., value=...)``."""

    def __init__(self, message: str, *, parameter: str | None = None, value: object = None) -> None:
        extras = []
        if parameter is not None:
            extras.append(f"parameter={parameter}")
        if value is not None:
            extras.append(f"value={value}")
        super().__init__(f"{message} ({', '.join(extras)})" if extras else message, param=parameter)


class ModelNotFoundError(SimulatorError):
    """404 for a model name the server does not serve."""

    status = HTTPStatus.NOT_FOUND
    err_type = "NotFoundError"

    def __init__(self, model: str | None, served: Sequence[str]) -> None:
        super().__init__(f"The model `{model}` does not exist. Valid aliases: {', '.join(served)}.", param="model")


class InjectedError(SimulatorError):
    """An error answered because fault injection is armed in mode ``error``."""

    _TYPES: ClassVar[dict[int, str]] = {
        400: "BadRequestError",
        404: "NotFoundError",
        500: "InternalServerError",
        501: "NotImplementedError",
    }

    def __init__(self, status: int, message: str | None) -> None:
        http_status = HTTPStatus(status)
        default_message = "Internal server error" if status == 500 else http_status.phrase
        super().__init__(message or default_message)
        self.status = http_status
        self.err_type = self._TYPES.get(status, http_status.phrase.replace(" ", "").replace("-", "") + "Error")
