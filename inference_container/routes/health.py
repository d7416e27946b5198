"""GET /healthz (liveness: the process answers) and GET /readyz (200 once every station with a
champion has a model loaded)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from inference_container.deps import LogWriterDep, ManagerDep, SettingsDep

SERVICE_NAME = "inference-api"

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz(manager: ManagerDep, log_writer: LogWriterDep) -> dict[str, Any]:
    status = manager.status()
    return {
        "status": "ok",
        "service": SERVICE_NAME,
        "model_ready": status["model_ready"],
        "models_loaded": status["models_loaded"],
        "queue_length": log_writer.queue_length if log_writer is not None else 0,
        "consumer_assigned": status["consumer_assigned"],
        "pointer_checked": status["pointer_checked"],
    }


@router.get(
    "/readyz",
    summary="Readiness: 200 once every station with a champion has a model loaded (at least one)",
    responses={503: {"description": "A station with a champion has no model loaded yet; see `missing`"}},
)
async def readyz(manager: ManagerDep, settings: SettingsDep) -> Response:
    models = manager.models
    missing = manager.missing()
    runs = {identifier: model.pointer.run_id for identifier, model in sorted(models.items())}
    if models and not missing:
        body: dict[str, Any] = {"status": "ready", "models": runs}
        if len(runs) == 1:
            # One station: its run at the top level, as single-station clients read it.
            body["run_id"] = next(iter(runs.values()))
        return JSONResponse(body)
    detail = f"no model loaded yet for {', '.join(missing)}" if missing else "no model loaded"
    body = {"status": "not ready", "detail": detail, "missing": missing, "models": runs, **manager.status()}
    return JSONResponse(body, 503, headers={"Retry-After": str(settings.RETRY_AFTER_S)})
