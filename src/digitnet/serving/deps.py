"""Dependencies the routes declare: the model the app serves, and its work processes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from digitnet.inference.model import Model
from digitnet.serving.work import WorkLanes


async def get_model(request: Request) -> Model:
    """The model ``create_app`` was given (async: FastAPI would run a plain function in a
    thread)."""
    model: Model = request.app.state.model
    return model


async def get_pool(request: Request) -> WorkLanes:
    """The app's work processes, where image and large-body work runs."""
    pool: WorkLanes = request.app.state.pool
    return pool


ModelDep = Annotated[Model, Depends(get_model)]
PoolDep = Annotated[WorkLanes, Depends(get_pool)]
