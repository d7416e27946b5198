"""The inference API (DESIGN.md, "Inference API"): /predict, /healthz, /readyz, /model, /metrics,
and the schema's pages /docs and /redoc with their files (inference_container.docs).

`create_app` only wires the parts together: the app's state (inference_container.deps), the
routes (inference_container.routes), the error answers (inference_container.errors). Every
request is counted and timed by route, status and station (`InferenceAPI.__call__`; the station
label is bounded, inference_container.telemetry), which also answers POST /predict straight from
ASGI messages when PREDICT_FAST_PATH is on (the default).

Why the fast path stays: `bench/inference.py` serves the same model with it on and off, side by
side, under the same wrk load (20 connections, interleaved rounds, medians), and on the 2-core
development machine it pays. 2 workers, 3 x 15 s: 3,632 vs 2,489 req/s (1.46x), p50 5.3 vs
8.5 ms, p99 8.7 vs 28.6 ms, server CPU 0.29 vs 0.61 ms per request. 1 worker, 3 x 10 s (other
work running): 1,338 vs 734 req/s (1.82x), p99 37 vs 77 ms. No failures either way.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from inference_container.deps import AppState
from inference_container.docs import add_docs
from inference_container.errors import EXCEPTION_HANDLERS
from inference_container.inference_log import InferenceLogWriter
from inference_container.lifecycle import ModelManager
from inference_container.predict import STATION_SCOPE_KEY, Reply, error_body
from inference_container.routes import api_router
from inference_container.settings import InferenceSettings

log = logging.getLogger(__name__)

_KNOWN_ROUTES = frozenset({"/predict", "/healthz", "/readyz", "/model", "/metrics"})
_STATION_ROUTE = "/models/{identifier}"
_JSON_HEADER = (b"content-type", b"application/json")


class InferenceAPI(FastAPI):
    """FastAPI with per-request metrics for every route and, optionally, a direct path for
    POST /predict that skips routing, the Request object and dependency solving."""

    inference: AppState
    fast_predict: bool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path = scope["path"]
        start = time.perf_counter()
        status = 500
        station: str | None = None
        try:
            if self.fast_predict and path == "/predict" and scope["method"] == "POST":
                status, station = await self._predict(scope, receive, send)
            else:

                async def send_and_record(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                    await send(message)

                await super().__call__(scope, receive, send_and_record)
                station = scope.get(STATION_SCOPE_KEY)
        finally:
            metrics = self.inference.metrics
            route = _route_label(path)
            label = metrics.identifiers.label(station)
            metrics.requests.labels(route, str(status), label).inc()
            metrics.latency.labels(route, label).observe(time.perf_counter() - start)

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> tuple[int, str | None]:
        handler = self.inference.predict
        headers = dict(scope["headers"])
        try:
            reply = await handler(headers, scope["query_string"], handler.body_reader(receive))
        except Exception:  # a bug, never bad input: log it and answer 500 with an id to find it
            request_id = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex
            log.exception("unhandled error in /predict", extra={"request_id": request_id})
            reply = Reply(500, error_body(f"internal error (request id {request_id})"), [])
        await send_reply(send, reply)
        return reply.status, reply.identifier


def _route_label(path: str) -> str:
    if path in _KNOWN_ROUTES:
        return path
    # One label for every station's page: the path holds a client-chosen name.
    return _STATION_ROUTE if path.startswith("/models/") else "other"


async def send_reply(send: Send, reply: Reply) -> None:
    headers = [_JSON_HEADER, (b"content-length", str(len(reply.body)).encode()), *reply.headers]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


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
    state = AppState.build(settings, manager, log_writer)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if run_background:
            state.start()
        try:
            yield
        finally:
            if run_background:
                state.stop()

    app = InferenceAPI(
        title="FLTS inference API",
        version="1.0.0",
        description=(
            "Forecasts LTE base-station KPIs with each station's promoted model (its champion). "
            "`POST /predict` names the station (`identifier` in the body or `?identifier=`; optional "
            "while only one station is served), takes at least INPUT_SEQ_LEN rows at the training "
            "step (2 minutes) and returns `inference_length` steps after the last timestamp, every "
            "KPI in original units."
        ),
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        # FastAPI's pages load their files from a CDN: add_docs serves them from here instead.
        docs_url=None,
        redoc_url=None,
    )
    app.inference = state
    app.fast_predict = settings.PREDICT_FAST_PATH
    app.state.inference = state
    app.include_router(api_router(settings))
    add_docs(app)
    return app
