"""The laptop overlay (.kubernetes/overlays/local): everything the base deploys, sized to a
4-CPU / 8-GiB cluster, with an evaluator that still decides when a trainer never reports."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from tests.k8s.manifests import REPO_ROOT, Resource, Workload, config_maps, find, settings_from
from tests.k8s.sizing import GIB, Requests, long_running_requests, pod_requests, quantity, total
from tests.k8s.test_settings_env import SERVICES, settings_class

# What kind or minikube gets on a typical laptop (Docker Desktop's default VM is smaller still).
BUDGET = Requests(Decimal(4), 8 * GIB)
# What kind's own kube-system pods request (etcd 100m, API server 250m, controller manager 200m,
# scheduler 100m, CoreDNS 2 x 100m/70Mi, kindnet 100m/50Mi) plus metrics-server (100m/200Mi),
# rounded up.
KUBE_SYSTEM = Requests(Decimal("1.1"), GIB // 2)


def _identities(rendered: list[Resource]) -> set[tuple[str, str]]:
    return {(r["kind"], r["metadata"]["name"]) for r in rendered}


def test_quantities_parse_as_kubernetes_reads_them() -> None:
    assert quantity("250m") == Decimal("0.25")
    assert quantity("2") == 2 and quantity("0.5") == Decimal("0.5")
    assert quantity("768Mi") == 768 * 2**20 and quantity("1Gi") == 2**30 and quantity("1G") == 10**9
    with pytest.raises(AssertionError):
        quantity("1 GiB")


def test_the_base_does_not_fit_a_laptop(rendered: list[Resource]) -> None:
    """Why the overlay exists, and that the sum below counts what it should."""
    base = total(long_running_requests(rendered))
    assert base.cpu > BUDGET.cpu or base.memory > BUDGET.memory, str(base)


def test_local_overlay_requests_fit_4_cpu_and_8_gib(rendered_local: list[Resource]) -> None:
    """Deployments and StatefulSets at their minimum replicas (the HPA's minimum for inference);
    Jobs and kube-system are not counted here."""
    requests = long_running_requests(rendered_local)
    assert len(requests) >= 11
    used = total(requests)
    detail = "\n".join(f"{name}: {r}" for name, r in sorted(requests.items()))
    assert used.cpu <= BUDGET.cpu and used.memory <= BUDGET.memory, f"{used} > {BUDGET}\n{detail}"


def test_local_overlay_leaves_room_for_kube_system_a_preprocess_run_and_a_swarm(
    rendered_local: list[Resource],
) -> None:
    """The pods must schedule, not only add up: with every Deployment at its maximum replicas
    (inference scaled out by a swarm), one preprocess Job and kind's own pods, still <= budget."""
    preprocess = pod_requests(Workload(find(rendered_local, "CronJob", "preprocess")))
    used = total(long_running_requests(rendered_local, at_most=True)) + preprocess + KUBE_SYSTEM
    assert used.cpu <= BUDGET.cpu and used.memory <= BUDGET.memory, f"{used} > {BUDGET}"


def test_local_overlay_deploys_everything_the_base_deploys(
    rendered: list[Resource], rendered_local: list[Resource]
) -> None:
    assert _identities(rendered_local) == _identities(rendered)


def test_local_workloads_keep_limits_at_or_above_their_requests(rendered_local: list[Resource]) -> None:
    """A request above its limit is refused by the API server; the overlay lowers requests only."""
    for workload in (Workload(r) for r in rendered_local if r["kind"] in ("Deployment", "StatefulSet")):
        for container in workload.all_containers:
            resources = container["resources"]
            for key in ("cpu", "memory"):
                low, high = quantity(resources["requests"][key]), quantity(resources["limits"][key])
                assert low <= high, f"{workload} {container['name']}: {key} request {low} > limit {high}"


def test_local_evaluator_decides_a_queued_fleet_within_its_promotion_timeout(
    rendered_local: list[Resource],
) -> None:
    """With one trainer replica per type the stations queue: PROMOTION_TIMEOUT_S (counted from a
    station's first report) must cover the three shipped stations at a few minutes each, and stay
    finite so a type that never reports (a Pending trainer) does not hold the decision back."""
    from eval_container.settings import EvaluatorSettings

    [container] = Workload(find(rendered_local, "Deployment", "evaluator")).containers
    values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    timeout = float(values["PROMOTION_TIMEOUT_S"])
    assert 300 <= timeout <= 1800
    default = EvaluatorSettings.model_fields["PROMOTION_TIMEOUT_S"].default
    assert timeout > default, "the overlay exists to wait longer than the default for a queued fleet"


@pytest.mark.parametrize(("kind", "name", "container"), sorted(SERVICES))
def test_local_overlay_values_are_accepted_by_the_settings_classes(
    rendered_local: list[Resource], kind: str, name: str, container: str
) -> None:
    cls = settings_class(SERVICES[(kind, name, container)])
    maps = config_maps(rendered_local)
    [spec] = [c for c in Workload(find(rendered_local, kind, name)).containers if c["name"] == container]
    values: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        values.update(maps[source["configMapRef"]["name"]])
    for entry in spec.get("env", []):
        if "value" in entry:
            values[entry["name"]] = entry["value"]
        elif "configMapKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["configMapKeyRef"]
            values[entry["name"]] = maps[ref["name"]][ref["key"]]
        else:
            values[entry["name"]] = "from-secret"
    settings_from(cls, values)


def test_the_documented_requests_are_the_rendered_ones(
    rendered: list[Resource], rendered_local: list[Resource]
) -> None:
    """docs/KUBERNETES.md, "What the cluster needs": the table of requests at minimum replicas."""
    text = (REPO_ROOT / "docs" / "KUBERNETES.md").read_text()
    for label, rendering in (("base", rendered), ("laptop", rendered_local)):
        match = re.search(rf"^\| {label} \(`[^`]+`\)[^|]*\| ([\d.]+) \| ([\d.]+) GiB \|$", text, flags=re.M)
        assert match, f"no {label} row in the table"
        used = total(long_running_requests(rendering))
        documented = (match.group(1), match.group(2))
        computed = (f"{used.cpu:.1f}", f"{used.memory / GIB:.1f}")
        assert documented == computed, f"{label}: the docs say {documented}, the rendering {used}"
