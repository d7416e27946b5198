"""GET /model (every station's model, the promotion it came from, the loader's state) and
GET /model?identifier=X or /models/X (one station)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from inference_container.deps import ManagerDep
from inference_container.lifecycle import ModelManager
from inference_container.predict import error_body, station_list

router = APIRouter()

_STATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "Not a station served here; `loaded` lists those that are"}
}


@router.get(
    "/model",
    summary="Every station's model and the promotion it came from, or one station's with ?identifier=",
    responses=_STATION_RESPONSES,
)
async def model_info(
    manager: ManagerDep,
    identifier: str | None = Query(default=None, description="One station only (404 if not served)"),
) -> Response:
    if identifier is not None:
        return _one_station(manager, identifier)
    models = manager.models
    failures = manager.failures
    body: dict[str, Any] = {
        "status": "ready" if manager.ready() else "loading",
        "models": {name: model.describe() for name, model in sorted(models.items())},
        "failed": {name: failure.describe() for name, failure in sorted(failures.items())},
        **manager.status(),
    }
    if len(models) == 1:
        # One station: its description at the top level too, as single-station clients read it.
        body = {**next(iter(models.values())).describe(), **body}
    return JSONResponse(body)


@router.get("/models/{identifier}", summary="One station's model", responses=_STATION_RESPONSES)
async def station_model(manager: ManagerDep, identifier: str) -> Response:
    return _one_station(manager, identifier)


def _one_station(manager: ModelManager, identifier: str) -> Response:
    model = manager.models.get(identifier)
    failure = manager.failures.get(identifier)
    if model is None and not manager.knows(identifier):
        loaded = sorted(manager.models)
        served = station_list(loaded) or "none yet"
        message = f"unknown station {identifier[:100]!r}: this service serves {served}"
        return Response(error_body(message, {"loaded": loaded}), 404, media_type="application/json")
    body: dict[str, Any] = {
        "identifier": identifier,
        "status": "ready" if model is not None else "loading",
        **(model.describe() if model is not None else {}),
        "pending_run_id": manager.pending().get(identifier),
        "failed": failure.describe() if failure is not None else None,
    }
    return JSONResponse(body)
