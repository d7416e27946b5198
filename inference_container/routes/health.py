"""GET /healthz (liveness: the process answers) and GET /readyz (200 only with a model)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from inference_container.deps import LogWriterDep, ManagerDep, ServingModelDep

SERVICE_NAME = "inference-api"

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz(manager: ManagerDep, log_writer: LogWriterDep) -> dict[str, Any]:
    status = manager.status()
    return {
        "status": "ok",
        "service": SERVICE_NAME,
        "model_ready": status["model_ready"],
        "queue_length": log_writer.queue_length if log_writer is not None else 0,
        "consumer_assigned": status["consumer_assigned"],
        "pointer_checked": status["pointer_checked"],
    }


@router.get(
    "/readyz",
    summary="Readiness: 200 only with a model loaded",
    responses={503: {"description": "No model loaded yet"}},
)
async def readyz(model: ServingModelDep) -> Response:
    return JSONResponse({"status": "ready", "run_id": model.pointer.run_id})
