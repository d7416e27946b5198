"""POST /predict as a FastAPI route: the OpenAPI operation, answered by the app's PredictHandler
(inference_container.predict) exactly as the ASGI fast path answers it."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inference_container.deps import PredictHandlerDep
from inference_container.openapi import predict_openapi
from inference_container.predict import STATION_SCOPE_KEY
from inference_container.settings import InferenceSettings


def router_for(settings: InferenceSettings) -> APIRouter:
    """Built per app: the documented body and query limits are the app's settings."""
    predict_router = APIRouter()

    @predict_router.post(
        "/predict",
        summary="Forecast the next inference_length steps of every KPI",
        openapi_extra=predict_openapi(settings),
        response_class=Response,
    )
    async def predict(request: Request, handler: PredictHandlerDep) -> Response:
        scope = request.scope
        read = handler.body_reader(request.receive)
        reply = await handler(dict(scope["headers"]), scope["query_string"], read)
        scope[STATION_SCOPE_KEY] = reply.identifier
        headers = {name.decode(): value.decode() for name, value in reply.headers}
        return Response(reply.body, reply.status, headers=headers, media_type="application/json")

    return predict_router
