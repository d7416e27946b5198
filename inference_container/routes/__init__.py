"""The API's routes, one module per resource: predict, health (liveness and readiness), model,
metrics. `api_router` gathers them; `create_app` includes it."""

from __future__ import annotations

from fastapi import APIRouter

from inference_container.routes import health, metrics, model, predict
from inference_container.settings import InferenceSettings


def api_router(settings: InferenceSettings) -> APIRouter:
    """Every route; /predict's OpenAPI document states the limits in `settings`."""
    router = APIRouter()
    router.include_router(predict.router_for(settings))
    router.include_router(health.router)
    router.include_router(model.router)
    router.include_router(metrics.router)
    return router
