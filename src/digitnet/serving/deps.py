"""Dependencies the routes declare: the model the app serves."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from digitnet.inference.model import Model


async def get_model(request: Request) -> Model:
    """The model ``create_app`` was given (async: FastAPI would run a plain function in a
    thread)."""
    model: Model = request.app.state.model
    return model


ModelDep = Annotated[Model, Depends(get_model)]
