"""GET /metrics: this process's Prometheus registry (inference_container.telemetry)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_container.deps import LogWriterDep, MetricsDep

router = APIRouter()


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics(metrics: MetricsDep, log_writer: LogWriterDep) -> Response:
    if log_writer is not None:
        metrics.log_queue.set(log_writer.queue_length)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
