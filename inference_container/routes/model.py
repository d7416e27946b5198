"""GET /model: the model being served, the promotion it came from, and the loader's state."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from inference_container.deps import ManagerDep, ServingModelDep

router = APIRouter()


@router.get(
    "/model",
    summary="The model being served and the promotion it came from",
    responses={503: {"description": "No model loaded yet"}},
)
async def model_info(model: ServingModelDep, manager: ManagerDep) -> Response:
    return JSONResponse({"status": "ready", **model.describe(), **manager.status()})
