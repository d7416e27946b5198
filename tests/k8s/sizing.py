"""What a rendered kustomization asks the scheduler for: Kubernetes quantities and the requests of
the long-running workloads at their minimum (or maximum) replicas."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tests.k8s.manifests import LONG_RUNNING_KINDS, Resource, Workload, workloads

_SUFFIXES = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
GIB = Decimal(2) ** 30


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity ("250m", "1", "0.5", "768Mi", "1G") as a number of cores or bytes."""
    match = _QUANTITY.match(str(value))
    assert match, f"not a quantity this parser knows: {value!r}"
    return Decimal(match.group(1)) * _SUFFIXES[match.group(2) or ""]


@dataclass(frozen=True)
class Requests:
    cpu: Decimal
    memory: Decimal

    def __add__(self, other: Requests) -> Requests:
        return Requests(self.cpu + other.cpu, self.memory + other.memory)

    def times(self, count: int) -> Requests:
        return Requests(self.cpu * count, self.memory * count)

    def __str__(self) -> str:
        return f"{self.cpu:.2f} CPU, {self.memory / GIB:.2f} GiB"


NOTHING = Requests(Decimal(0), Decimal(0))


def _container_requests(container: dict[str, Any]) -> Requests:
    requests = container.get("resources", {}).get("requests", {})
    return Requests(quantity(requests.get("cpu", 0)), quantity(requests.get("memory", 0)))


def pod_requests(workload: Workload) -> Requests:
    """What the scheduler reserves for one pod: its containers together, or its largest init
    container when that is larger (init containers run one at a time, before the others)."""
    running = sum((_container_requests(c) for c in workload.containers), NOTHING)
    init = [_container_requests(c) for c in workload.pod_spec.get("initContainers", [])]
    return Requests(
        max([running.cpu, *(i.cpu for i in init)]),
        max([running.memory, *(i.memory for i in init)]),
    )


def replica_bounds(resource: Resource, rendered: list[Resource]) -> tuple[int, int]:
    """(minimum, maximum) replicas: the HPA's when one scales the workload, else its own count."""
    for hpa in (r for r in rendered if r["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) == (resource["kind"], resource["metadata"]["name"]):
            return int(hpa["spec"].get("minReplicas", 1)), int(hpa["spec"]["maxReplicas"])
    count = int(resource["spec"].get("replicas", 1))
    return count, count


def long_running_requests(rendered: list[Resource], at_most: bool = False) -> dict[str, Requests]:
    """Deployment/StatefulSet name → the requests of all its replicas, at the minimum replica
    count (or the maximum, `at_most`). Jobs and CronJobs are left out: they come and go."""
    totals: dict[str, Requests] = {}
    for workload in workloads(rendered):
        if workload.kind not in LONG_RUNNING_KINDS:
            continue
        low, high = replica_bounds(workload.resource, rendered)
        totals[str(workload)] = pod_requests(workload).times(high if at_most else low)
    return totals


def total(requests: dict[str, Requests]) -> Requests:
    return sum(requests.values(), NOTHING)
