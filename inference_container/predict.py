"""`POST /predict`, handled on raw ASGI messages.

The same handler serves two entry points: the fast path in `inference_container.app` (an ASGI
layer in front of FastAPI that answers POST /predict directly, skipping routing, the Request
object, dependency solving and exit stacks; measured figures there) and the FastAPI route in
`inference_container.routes.predict`, which documents the operation and answers identically
(with PREDICT_FAST_PATH off it answers every request).

Per request: the fleet (station -> model and stack slot) read once (a swap mid-request, of this
station or any other, cannot affect it), headers checked, body read with a size cap, orjson parse, the
station resolved from `?identifier=` or the body's `"identifier"` (omitted: the only loaded
station), numpy validation against that station's model (inference_container.validation,
including its plausible KPI ranges), micro-batched forecast in the station's stack (clipped at
the physical floor by the model runtime), orjson response. No shared mutable state.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qs

import numpy as np
import orjson
from starlette.types import Receive

from inference_container.batching import MicroBatcher
from inference_container.inference_log import InferenceLogWriter
from inference_container.lifecycle import ModelManager, ServingModel
from inference_container.settings import InferenceSettings
from inference_container.telemetry import ServiceMetrics
from inference_container.validation import (
    Limits,
    RequestError,
    parse_json,
    parse_predict_request,
    requested_station,
)
from shared.data import KPI_COLUMNS

log = logging.getLogger(__name__)

JSON_TYPE = b"application/json"
BodyReader = Callable[[], Awaitable[bytes]]
# Stations named in an error's detail; the complete list is in its "loaded" field.
NAMED_IN_DETAIL = 20
# Where the FastAPI /predict route leaves the station it answered for (the metrics label).
STATION_SCOPE_KEY = "flts.identifier"


class Reply(NamedTuple):
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]
    # The station that answered (None when the request never reached one): the metrics label.
    identifier: str | None = None


def error_body(message: str, fields: Mapping[str, Any] | None = None) -> bytes:
    return orjson.dumps({"status": "ERROR", "detail": message, **(fields or {})})


def station_list(identifiers: list[str]) -> str:
    shown = ", ".join(identifiers[:NAMED_IN_DETAIL])
    more = len(identifiers) - NAMED_IN_DETAIL
    return f"{shown} and {more} more" if more > 0 else shown


def predictions_payload(model: ServingModel, last: np.datetime64, values: np.ndarray) -> list[dict[str, Any]]:
    """[{"ts": ..., "down": ..., ...}] for each forecast step, timestamps at the training step."""
    steps = values.shape[0]
    future = last.astype("datetime64[us]") + np.arange(1, steps + 1) * np.timedelta64(model.step, "us")
    whole_seconds = not (future.astype(np.int64) % 1_000_000).any()
    stamps = np.datetime_as_string(future, unit="s" if whole_seconds else "us").tolist()
    keys = ("ts", *KPI_COLUMNS)
    return [
        dict(zip(keys, (stamp, *row), strict=True))
        for stamp, row in zip(stamps, values.tolist(), strict=True)
    ]


class PredictHandler:
    """Everything /predict needs, built once per app."""

    def __init__(
        self,
        settings: InferenceSettings,
        manager: ModelManager,
        metrics: ServiceMetrics,
        log_writer: InferenceLogWriter | None,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.metrics = metrics
        self.log_writer = log_writer
        self.batcher = MicroBatcher(settings.MAX_BATCH, metrics.batch_windows.observe)
        self.max_body = settings.MAX_BODY_BYTES
        self.retry_after = [(b"retry-after", str(settings.RETRY_AFTER_S).encode())]

    async def __call__(self, headers: dict[bytes, bytes], query_string: bytes, read: BodyReader) -> Reply:
        fleet = self.manager.fleet
        models = fleet.models
        if not models:
            return Reply(503, error_body("no model is loaded yet; retry later"), self.retry_after)
        station: str | None = None
        try:
            self._check_headers(headers)
            body = await read()
            query = parse_qs(query_string.decode("latin-1")) if query_string else {}
            payload = parse_json(body)
            # Named but unknown still labels the request's metrics (as _other, telemetry bounds it).
            station = requested_station(payload, _last(query, "identifier"))
            model = self._model_for(models, station)
            station = model.pointer.identifier
            limits = Limits(
                model.input_seq_len,
                model.step,
                self.settings.MAX_ROWS,
                self.settings.MAX_INFERENCE_LENGTH,
                model.ranges,
            )
            parsed = parse_predict_request(
                payload,
                limits,
                _last(query, "inference_length"),
                _last(query, "index_col"),
            )
        except RequestError as exc:
            headers_out = self.retry_after if exc.status == 503 else []
            return Reply(exc.status, error_body(exc.message, exc.fields), headers_out, station)
        # Every model type evaluates a window in well under a millisecond (Prophet's terms are
        # evaluated directly), so all of them go through the batcher on the event loop.
        slot = fleet.slots[station]
        values = await self.batcher.predict(slot, parsed.timestamps, parsed.kpis, parsed.inference_length)
        if not np.isfinite(values).all():
            message = "the model's forecast is not finite for these values; are the KPIs in original units?"
            return Reply(422, error_body(message), [], station)
        pointer = model.pointer
        predictions = predictions_payload(model, parsed.timestamps[-1], values)
        self.metrics.predictions.inc(len(predictions))
        if self.log_writer is not None:
            request_id = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex
            self.log_writer.offer(
                {
                    "request_id": request_id,
                    "received_at": datetime.now(UTC).isoformat(),
                    "identifier": pointer.identifier,
                    "run_id": pointer.run_id,
                    "model_type": pointer.model_type.value,
                    "config_hash": pointer.config_hash,
                    "rows": len(parsed.timestamps),
                    "last_input_ts": str(parsed.timestamps[-1]),
                    "inference_length": parsed.inference_length,
                    "predictions": predictions,
                }
            )
        answer = {
            "status": "SUCCESS",
            "identifier": pointer.identifier,
            "run_id": pointer.run_id,
            "model_type": pointer.model_type.value,
            "config_hash": pointer.config_hash,
            "predictions": predictions,
        }
        return Reply(200, orjson.dumps(answer), [], station)

    def _model_for(self, models: Mapping[str, ServingModel], identifier: str | None) -> ServingModel:
        """The named station's model from the request's snapshot; omitted, the only one loaded."""
        if identifier is None:
            if len(models) == 1:
                return next(iter(models.values()))
            # Sorted only on the way to an error: the answering path stays one dict lookup.
            loaded = sorted(models)
            raise RequestError(
                422,
                f"name the station: {len(loaded)} are served here ({station_list(loaded)}); send "
                "'identifier' in the body or ?identifier=",
                {"loaded": loaded},
            )
        model = models.get(identifier)
        if model is not None:
            return model
        # Before the first read of the bucket every station is still unknown: not a client error.
        if self.manager.knows(identifier) or not self.manager.pointer_checked.is_set():
            raise RequestError(503, f"station {identifier[:100]!r} has no model loaded yet; retry later")
        loaded = sorted(models)
        raise RequestError(
            404,
            f"unknown station {identifier[:100]!r}: this service serves {station_list(loaded)}",
            {"loaded": loaded},
        )

    def _check_headers(self, headers: dict[bytes, bytes]) -> None:
        content_type = headers.get(b"content-type")
        if content_type is None:
            raise RequestError(415, "Content-Type must be application/json (none was sent)")
        media = content_type.split(b";", 1)[0].strip().lower()
        if media != JSON_TYPE and not (media.startswith(b"application/") and media.endswith(b"+json")):
            shown = media[:60].decode("latin-1")
            raise RequestError(415, f"Content-Type must be application/json, got {shown!r}")
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise RequestError(400, f"Content-Length {declared[:20]!r} is not a number") from None
            if size > self.max_body:
                raise RequestError(413, f"body of {size} bytes exceeds the limit of {self.max_body} bytes")

    def body_reader(self, receive: Receive) -> BodyReader:
        """Read http.request messages, refusing with 413 as soon as the cap is passed (a
        chunked body has no Content-Length to check up front)."""

        async def read() -> bytes:
            chunks: list[bytes] = []
            received = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestError(400, "client disconnected before sending the whole body")
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_body:
                    raise RequestError(413, f"body exceeds the limit of {self.max_body} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)

        return read


def _last(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None
