"""`kubectl apply -k` (or a GitOps sync) can run again at any time, after any change: nothing in a
kustomization is immutable once created, runs again by itself, or undoes what a controller did."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s.manifests import (
    BASE_DIR,
    KUSTOMIZE_DIR,
    REPO_ROOT,
    Resource,
    kubectl,
    kustomization,
    render_in_python,
    render_with_kubectl,
    workloads,
)

KUSTOMIZATIONS = [
    KUSTOMIZE_DIR,
    *sorted(p.parent for p in (KUSTOMIZE_DIR / "overlays").glob("*/kustomization.yaml")),
]
IMAGES_SH = REPO_ROOT / "docker" / "images.sh"


def render(directory: Path) -> list[Resource]:
    if kubectl() is not None:
        return render_with_kubectl(directory)
    if set(kustomization(directory)) & {"components"}:
        pytest.skip(f"{directory.name} uses components, which only kubectl renders here")
    return render_in_python(directory)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_no_kustomization_holds_a_job(directory: Path) -> None:
    """A Job's pod template is immutable: a re-apply after an image change would fail while the
    finished Job exists, and after its TTL the next apply would silently run it again. One-shot
    work is a suspended CronJob's template, started by hand, or a container of a long-running pod."""
    rendered = render(directory)
    jobs = [r["metadata"]["name"] for r in rendered if r["kind"] == "Job"]
    assert not jobs, f"{directory.name} renders Jobs {jobs}"
    for cron in (r for r in rendered if r["kind"] == "CronJob"):
        assert cron["spec"].get("suspend") is True, f"CronJob {cron['metadata']['name']} would run by itself"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_no_replica_count_on_what_an_hpa_scales(directory: Path) -> None:
    """A count beside an HPA is re-applied by every `kubectl apply -k` and shrinks a scaled-out
    Deployment back to it."""
    rendered = render(directory)
    hpas = [r for r in rendered if r["kind"] == "HorizontalPodAutoscaler"]
    assert hpas or directory.name != ".kubernetes"
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        [scaled] = [
            r for r in rendered if (r["kind"], r["metadata"]["name"]) == (target["kind"], target["name"])
        ]
        assert "replicas" not in scaled["spec"], f"{target['kind']}/{target['name']} sets replicas"


# -- image versions ------------------------------------------------------------------------------


def _kustomization_text() -> str:
    return (BASE_DIR / "kustomization.yaml").read_text()


def version() -> str:
    """The image version, as written once in the base kustomization (`newTag: &version X`)."""
    [value] = re.findall(r"^\s*newTag:\s*&version\s+(\S+)\s*$", _kustomization_text(), flags=re.M)
    return str(value)


def built_images() -> list[str]:
    """`name:tag` of every image docker/images.sh builds, read from the script itself."""
    text = IMAGES_SH.read_text()
    block = text.split('services="', 1)[1].split('"', 1)[0]
    names = [line.split()[0] for line in block.splitlines() if line.strip()]
    assert 'build "flts/mlflow:$TAG"' in text
    return sorted(f"flts/{name}:{images_sh_tag()}" for name in [*names, "mlflow"])


def images_sh_tag(env: dict[str, str] | None = None) -> str:
    """The tag docker/images.sh builds with: its own lines up to `TAG=`, run by bash."""
    text = IMAGES_SH.read_text()
    start = text.index("KUSTOMIZATION=")
    end = text.index("\n", text.index('TAG="${IMAGE_TAG:-'))
    script = "set -euo pipefail\n" + text[start:end] + '\necho "$TAG"\n'
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_image_version_is_written_once_and_is_a_version() -> None:
    text = _kustomization_text()
    tags = re.findall(r"^\s*newTag:\s*(.+?)\s*$", text, flags=re.M)
    assert tags[0].startswith("&version ") and all(tag == "*version" for tag in tags[1:]), tags
    assert re.fullmatch(r"\d+\.\d+\.\d+", version()), f"{version()} is not a version (dev, latest move)"
    rules = yaml.safe_load(text)["images"]
    assert {rule["newTag"] for rule in rules} == {version()}


def test_manifests_name_flts_images_without_a_tag() -> None:
    """The tag lives in the kustomization only; a tag in a manifest would be a second place."""
    for path in sorted(BASE_DIR.glob("*.yaml")):
        for image in re.findall(r"^\s*image:\s*(flts/\S+)", path.read_text(), flags=re.M):
            assert ":" not in image, f"{path.name}: {image} carries its own tag"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_every_flts_image_runs_at_the_version_docker_images_sh_builds(directory: Path) -> None:
    built = built_images()
    used = {
        container["image"]
        for workload in workloads(render(directory))
        for container in workload.all_containers
        if container["image"].startswith("flts/")
    }
    assert used and used <= set(built), f"{sorted(used - set(built))} are not built by docker/images.sh"
    if directory == KUSTOMIZE_DIR:
        assert used == set(built), f"built but never run: {sorted(set(built) - used)}"
    assert all(image.endswith(f":{version()}") for image in used)


def test_images_sh_reads_the_version_from_the_kustomization_and_can_be_overridden() -> None:
    assert images_sh_tag() == version()
    assert images_sh_tag({"IMAGE_TAG": "9.9.9"}) == "9.9.9"
    rules = {rule["name"] for rule in kustomization()["images"]}
    assert rules == {image.partition(":")[0] for image in built_images()}
