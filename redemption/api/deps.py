"""Typed FastAPI dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from redemption.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    # async on purpose: FastAPI runs plain `def` dependencies in a thread pool, a hop per request.
    state: ServiceState = request.app.state.sluice
    return state


State = Annotated[ServiceState, Depends(get_state)]
