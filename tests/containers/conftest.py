"""The container tier: the images `make images` built, run the way their manifests run them.

Every test module here is marked `containers` (pytestmark) and left out of the default run;
`make test-containers` (part of `make test`) builds the images first, then runs this tier alone.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.k8s.conftest import rendered  # noqa: F401  (the rendered manifests, shared with tests/k8s)
from tests.k8s.manifests import Resource, workloads

SERVICE_IMAGES = ("preprocess", "train", "nonml", "eval", "inference", "batch", "locust")


@pytest.fixture(scope="session")
def images(rendered: list[Resource]) -> dict[str, str]:  # noqa: F811
    """Image name → the exact reference the manifests use, each one present in the local engine."""
    if shutil.which("docker") is None:
        pytest.fail("no docker client: run `make test-containers`, which installs and starts the engine")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30, check=False)
    if info.returncode != 0:
        pytest.fail(f"no Docker daemon answers ({info.stderr.strip()[:200]}): run `make test-containers`")
    references: dict[str, str] = {}
    for workload in workloads(rendered):
        for container in workload.all_containers:
            reference = container["image"]
            name = reference.partition(":")[0].removeprefix("flts/")
            if name in SERVICE_IMAGES:
                references[name] = reference
    missing = [
        reference
        for reference in references.values()
        if subprocess.run(
            ["docker", "image", "inspect", reference], capture_output=True, check=False
        ).returncode
    ]
    if missing:
        pytest.fail(f"images not built: {missing}; run `make images`")
    return references
