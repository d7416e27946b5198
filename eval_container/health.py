"""The evaluator's probes: `/healthz` (liveness) and `/readyz` (readiness), see shared.health.

Readiness = the consumer loop is running and MLflow answered recently.
"""

from __future__ import annotations

from collections.abc import Callable

from shared.health import HealthState as _HealthState
from shared.health import start_health_server, stop_health_server

SERVICE_NAME = "evaluator"

__all__ = ["SERVICE_NAME", "HealthState", "start_health_server", "stop_health_server"]


class HealthState(_HealthState):
    """The evaluator's probe state: ready once consuming with MLflow answering."""

    def __init__(
        self,
        mlflow_probe: Callable[[], bool],
        cache_s: float = 5.0,
        startup_budget_s: float | None = None,
    ) -> None:
        super().__init__(
            SERVICE_NAME,
            ready_checks={"mlflow": mlflow_probe},
            startup_budget_s=startup_budget_s,
            cache_s=cache_s,
        )
