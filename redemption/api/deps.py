"""Typed FastAPI dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from redemption.state import ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.sluice
    return state


State = Annotated[ServiceState, Depends(get_state)]
