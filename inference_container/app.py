"""The inference API (DESIGN.md, "Inference API"): /predict, /healthz, /readyz, /model, /metrics.

`InferenceAPI.__call__` answers POST /predict straight from ASGI messages (see
inference_container.predict) and counts and times every request; everything else, and the
OpenAPI document, is ordinary FastAPI.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from inference_container.inference_log import InferenceLogWriter
from inference_container.lifecycle import ModelManager
from inference_container.openapi import predict_openapi
from inference_container.predict import PredictHandler, Reply, error_body
from inference_container.settings import InferenceSettings
from inference_container.telemetry import ServiceMetrics
from shared.storage import ObjectStore

log = logging.getLogger(__name__)

SERVICE_NAME = "inference-api"
_KNOWN_ROUTES = frozenset({"/predict", "/healthz", "/readyz", "/model", "/metrics"})
_JSON_HEADER = (b"content-type", b"application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status, headers=headers, media_type="application/json")


class InferenceAPI(FastAPI):
    """FastAPI with a direct path for POST /predict and per-request metrics for every route."""

    predict_handler: PredictHandler
    metrics: ServiceMetrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path = scope["path"]
        start = time.perf_counter()
        status = 500
        try:
            if path == "/predict" and scope["method"] == "POST":
                status = await self._predict(scope, receive, send)
            else:

                async def send_and_record(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                    await send(message)

                await super().__call__(scope, receive, send_and_record)
        finally:
            route = path if path in _KNOWN_ROUTES else "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> int:
        handler = self.predict_handler
        headers = dict(scope["headers"])
        try:
            status, body, extra = await handler(headers, scope["query_string"], handler.body_reader(receive))
        except Exception:  # a bug, never bad input: log it and answer 500 with an id to find it
            request_id = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex
            log.exception("unhandled error in /predict", extra={"request_id": request_id})
            status, body, extra = 500, error_body(f"internal error (request id {request_id})"), []
        await send_reply(send, (status, body, extra))
        return status


async def send_reply(send: Send, reply: Reply) -> None:
    status, body, extra = reply
    headers = [_JSON_HEADER, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(
    settings: InferenceSettings,
    manager: ModelManager | None = None,
    log_writer: InferenceLogWriter | None = None,
    *,
    run_background: bool = True,
) -> InferenceAPI:
    """Build the app. With `run_background`, the lifespan starts the model manager's threads (and
    the inference-log writer when INFERENCE_LOG_ENABLED) and stops them on shutdown."""
    torch.set_num_threads(settings.TORCH_THREADS)
    metrics = manager.metrics if manager is not None and manager.metrics is not None else ServiceMetrics()
    manager = manager or ModelManager(settings, metrics)
    if log_writer is None and settings.INFERENCE_LOG_ENABLED:
        log_writer = InferenceLogWriter(
            lambda: ObjectStore.from_settings(settings),
            settings.BUCKET_INFERENCE_LOGS,
            settings.INFERENCE_LOG_BATCH_SIZE,
            settings.INFERENCE_LOG_FLUSH_S,
            settings.INFERENCE_LOG_QUEUE_MAX,
            metrics,
        )
    retry_after = {"Retry-After": str(settings.RETRY_AFTER_S)}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if run_background:
            manager.start()
            if log_writer is not None:
                log_writer.start()
        try:
            yield
        finally:
            if run_background:
                manager.stop()
                if log_writer is not None:
                    log_writer.stop()

    app = InferenceAPI(
        title="FLTS inference API",
        version="1.0.0",
        description=(
            "Forecasts LTE base-station KPIs with the promoted model. `POST /predict` takes at least "
            "INPUT_SEQ_LEN rows at the training step (2 minutes) and returns `inference_length` steps "
            "after the last timestamp, every KPI in original units."
        ),
        lifespan=lifespan,
    )
    handler = PredictHandler(settings, manager, metrics, log_writer)
    app.predict_handler = handler
    app.metrics = metrics
    app.state.settings = settings
    app.state.manager = manager
    app.state.log_writer = log_writer

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return error_response(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        log.error(
            "unhandled error",
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"request_id": request_id, "path": request.url.path},
        )
        return error_response(500, f"internal error (request id {request_id})")

    @app.post(
        "/predict",
        summary="Forecast the next inference_length steps of every KPI",
        openapi_extra=predict_openapi(settings),
        response_class=Response,
    )
    async def predict(request: Request) -> Response:
        # Normally answered by InferenceAPI.__call__ before routing; this route documents the
        # operation and answers the same way if it is ever reached (e.g. when mounted).
        status, body, extra = await handler(
            dict(request.scope["headers"]),
            request.scope["query_string"],
            handler.body_reader(request.receive),
        )
        return Response(
            body, status, headers={k.decode(): v.decode() for k, v in extra}, media_type="application/json"
        )

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, Any]:
        status = manager.status()
        return {
            "status": "ok",
            "service": SERVICE_NAME,
            "model_ready": status["model_ready"],
            "queue_length": log_writer.queue_length if log_writer is not None else 0,
            "consumer_assigned": status["consumer_assigned"],
            "pointer_checked": status["pointer_checked"],
        }

    def not_ready() -> Response:
        return JSONResponse(
            {"status": "not ready", "detail": "no model loaded", **manager.status()}, 503, headers=retry_after
        )

    @app.get(
        "/readyz",
        summary="Readiness: 200 only with a model loaded",
        responses={503: {"description": "No model loaded yet"}},
    )
    async def readyz() -> Response:
        model = manager.current
        if model is None:
            return not_ready()
        return JSONResponse({"status": "ready", "run_id": model.pointer.run_id})

    @app.get(
        "/model",
        summary="The model being served and the promotion it came from",
        responses={503: {"description": "No model loaded yet"}},
    )
    async def model_info() -> Response:
        model = manager.current
        if model is None:
            return not_ready()
        return JSONResponse({"status": "ready", **model.describe(), **manager.status()})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        if log_writer is not None:
            metrics.log_queue.set(log_writer.queue_length)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
