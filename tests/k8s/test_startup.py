"""Slow starts are not killed: every long-starting container has a startup probe, liveness applies
only after it, and the services' bounded start-up waits fit inside it."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from shared.settings.base import BaseServiceSettings
from tests.k8s.manifests import Resource, Workload, find

# (kind, workload, container): what takes long to start (a JVM, a database, torch imports,
# dependency waits, a schema migration) or waits for its server (the topic and bucket creators).
LONG_STARTING = [
    ("StatefulSet", "kafka", "kafka"),
    ("StatefulSet", "kafka", "topics"),
    ("StatefulSet", "minio", "minio"),
    ("StatefulSet", "minio", "buckets"),
    ("StatefulSet", "postgres", "postgres"),
    ("Deployment", "mlflow", "mlflow"),
    ("Deployment", "evaluator", "evaluator"),
    ("Deployment", "train-gru", "trainer"),
    ("Deployment", "train-lstm", "trainer"),
    ("Deployment", "train-prophet", "trainer"),
    ("Deployment", "inference", "inference"),
]
# Workload → where its number of bounded start-up waits (each up to STARTUP_TIMEOUT_S) is
# declared: the evaluator and the trainers wait for the broker, then MLflow; inference loads
# models in the background and waits for nothing before serving.
DEPENDENCY_WAITS = {
    "evaluator": "eval_container.app:STARTUP_WAITS",
    "train-gru": "shared.trainer_service:STARTUP_WAITS",
    "train-lstm": "shared.trainer_service:STARTUP_WAITS",
    "train-prophet": "shared.trainer_service:STARTUP_WAITS",
    "inference": None,
}


# What the contract adds to the waits: imports, client set-up, restoring state.
MARGIN_S = 60


def waits_of(name: str) -> int:
    where = DEPENDENCY_WAITS[name]
    if where is None:
        return 0
    module, _, attribute = where.partition(":")
    waits = getattr(importlib.import_module(module), attribute)
    assert isinstance(waits, int) and waits >= 1, where
    return waits


def _container(rendered: list[Resource], kind: str, name: str, container: str) -> dict[str, Any]:
    [found] = [c for c in Workload(find(rendered, kind, name)).containers if c["name"] == container]
    return found


def window_s(probe: dict[str, Any]) -> int:
    """The longest a container may take before the probe gives up on it."""
    return int(probe.get("initialDelaySeconds", 0)) + int(probe.get("periodSeconds", 10)) * int(
        probe.get("failureThreshold", 3)
    )


def startup_timeout_s(container: dict[str, Any]) -> float:
    for entry in container.get("env", []):
        if entry["name"] == "STARTUP_TIMEOUT_S":
            return float(entry["value"])
    return float(BaseServiceSettings.model_fields["STARTUP_TIMEOUT_S"].default)


@pytest.fixture(params=["base", "local"])
def rendering(request: pytest.FixtureRequest) -> list[Resource]:
    fixture = "rendered" if request.param == "base" else "rendered_local"
    rendered: list[Resource] = request.getfixturevalue(fixture)
    return rendered


@pytest.mark.parametrize(("kind", "name", "container"), LONG_STARTING)
def test_long_starting_containers_have_a_startup_probe_and_liveness_only_after_it(
    rendering: list[Resource], kind: str, name: str, container: str
) -> None:
    spec = _container(rendering, kind, name, container)
    assert "startupProbe" in spec, f"{kind}/{name} {container}: liveness would kill a slow start"
    # The startup probe already holds liveness back; a delay on top would only hide a hang.
    assert not spec["livenessProbe"].get("initialDelaySeconds"), f"{name} {container}"
    assert not spec["readinessProbe"].get("initialDelaySeconds"), f"{name} {container}"
    assert window_s(spec["startupProbe"]) >= 120, f"{name} {container}: under 2 minutes to start"


@pytest.mark.parametrize("name", sorted(DEPENDENCY_WAITS))
def test_startup_probe_outlasts_the_start_up_waits(rendering: list[Resource], name: str) -> None:
    """At least STARTUP_TIMEOUT_S x the waits + 60 s (the service's own start-up budget, after
    which its /healthz says "stuck"): a service still inside its bounded waits is never killed for
    it, and one whose wait ran out exits by itself (non-zero) and is restarted."""
    from shared.health import startup_budget_s

    [spec] = Workload(find(rendering, "Deployment", name)).containers
    needed = max(startup_budget_s(startup_timeout_s(spec), waits_of(name)), MARGIN_S)
    assert needed >= startup_timeout_s(spec) * waits_of(name) + MARGIN_S
    assert window_s(spec["startupProbe"]) >= needed, f"{name}: startup probe < {needed:g} s"


def test_the_window_counts_delay_period_and_failures() -> None:
    assert window_s({"periodSeconds": 10, "failureThreshold": 30}) == 300
    assert window_s({"initialDelaySeconds": 20, "periodSeconds": 5, "failureThreshold": 4}) == 40
    assert window_s({}) == 30, "Kubernetes' defaults: period 10 s, 3 failures"
