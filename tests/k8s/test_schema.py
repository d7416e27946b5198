"""Every manifest parses, the kustomization lists every file, and the rendered objects validate
against the Kubernetes 1.30 OpenAPI schemas offline (strict: unknown fields fail)."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.k8s.manifests import (
    BASE_DIR,
    KUSTOMIZE_DIR,
    LOCAL_DIR,
    Resource,
    generated_secrets,
    kubectl,
    kustomization,
    render_in_python,
    render_with_kubectl,
    strategic_merge,
)

K8S_VERSION = "1.30.0"
OVERLAYS = sorted(p.parent for p in (KUSTOMIZE_DIR / "overlays").glob("*/kustomization.yaml"))


def manifest_files() -> list[str]:
    """Every YAML file of the base other than its kustomization."""
    return sorted(p.name for p in BASE_DIR.glob("*.y*ml") if p.name != "kustomization.yaml")


def referenced_files(directory: Path) -> tuple[set[Path], set[Path]]:
    """What the kustomization in `directory` names: (resource and patch files, generator inputs)."""
    config = kustomization(directory)
    objects = {directory / name for name in config.get("resources", [])}
    objects |= {directory / patch["path"] for patch in config.get("patches", []) if "path" in patch}
    inputs: set[Path] = set()
    for generator in [*config.get("configMapGenerator", []), *config.get("secretGenerator", [])]:
        inputs |= {directory / name for name in generator.get("envs", [])}
        inputs |= {directory / name.rpartition("=")[2] for name in generator.get("files", [])}
    return {p for p in objects if p.is_file()}, inputs


def test_no_manifest_lies_outside_a_kustomization() -> None:
    """A YAML file no kustomization names would be silently left out of every deploy."""
    for path in KUSTOMIZE_DIR.rglob("*.y*ml"):
        if path.name == "kustomization.yaml":
            continue
        objects, inputs = referenced_files(path.parent)
        assert path in objects | inputs, f"{path} is named by no kustomization in its folder"


def test_every_yaml_file_parses_into_kubernetes_objects() -> None:
    """Resource and patch files; generator inputs (a Prometheus config, say) may be any YAML."""
    paths = sorted(
        p
        for p in KUSTOMIZE_DIR.rglob("*.y*ml")
        if p.name == "kustomization.yaml" or p not in referenced_files(p.parent)[1]
    )
    assert len(paths) >= 18
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
        for doc in docs:
            assert {"apiVersion", "kind"} <= set(doc), f"{path}: {doc!r:.80} lacks apiVersion/kind"


def test_apply_k_of_the_folder_deploys_the_base() -> None:
    assert kustomization(KUSTOMIZE_DIR)["resources"] == ["base"]


def test_kustomization_lists_every_manifest_file_exactly_once() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed)), "a resource file is listed twice"
    assert sorted(listed) == manifest_files()


def test_credentials_come_from_a_secret_generator() -> None:
    secrets = generated_secrets()
    assert set(secrets) == {"minio-credentials", "postgres-credentials"}
    for name, data in secrets.items():
        assert data, f"secretGenerator {name} produces no keys"
        assert all(value for value in data.values()), f"secretGenerator {name} has an empty value"


def test_rendered_objects_validate_strictly_against_kubernetes_1_30(rendered: list[Resource]) -> None:
    assert len(rendered) > 30
    assert_valid(rendered)


def assert_valid(rendered: list[Resource]) -> None:
    errors = []
    for resource in rendered:
        label = f"{resource['kind']}/{resource['metadata']['name']}"
        try:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{label}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            # The CLI only warns here; a removed or misspelled apiVersion must fail.
            errors.append(f"{label}: no 1.30 schema for {resource['apiVersion']} {resource['kind']}")
    assert not errors, "\n".join(errors)


def test_validation_rejects_unknown_fields_and_removed_api_versions(rendered: list[Resource]) -> None:
    """The check above can fail: a typo'd field and a removed API version are both caught."""
    deployment = next(r for r in rendered if r["kind"] == "Deployment")
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    hpa = next(r for r in rendered if r["kind"] == "HorizontalPodAutoscaler")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({**hpa, "apiVersion": "autoscaling/v2beta2"}, K8S_VERSION, strict=True)


def test_every_object_lands_in_the_flts_namespace(rendered: list[Resource]) -> None:
    for resource in rendered:
        if resource["kind"] == "Namespace":
            assert resource["metadata"]["name"] == "flts"
        else:
            assert resource["metadata"].get("namespace") == "flts", resource["metadata"]["name"]


def _identity(resource: Resource) -> tuple[str, str]:
    name = resource["metadata"]["name"]
    if resource["kind"] == "Secret":
        # kustomize appends a content hash to generated names.
        name = re.sub(r"-[a-z0-9]{10}$", "", name)
    return resource["kind"], name


@pytest.mark.skipif(kubectl() is None, reason="kubectl not installed; the Python render is used alone")
@pytest.mark.parametrize("directory", [KUSTOMIZE_DIR, LOCAL_DIR], ids=["base", "local"])
def test_python_render_matches_kubectl(directory: Path) -> None:
    """Object for object and field for field, so tests that run on the Python render where
    kubectl is missing see what `kubectl apply -k` would send."""
    by_kubectl = {_identity(r): r for r in render_with_kubectl(directory)}
    by_python = {_identity(r): r for r in render_in_python(directory)}
    assert sorted(by_python) == sorted(by_kubectl)
    for identity, resource in by_kubectl.items():
        assert by_python[identity] == resource, f"{identity} differs"


def test_python_patches_merge_named_lists_like_kustomize() -> None:
    """The renderer's strategic merge, on the case the local overlay relies on (env by name)."""
    original = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "args": ["x", "y"]}
    patch = {"env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}], "args": ["z"]}
    assert strategic_merge(original, patch) == {
        "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}, {"name": "A", "value": "1"}],
        "args": ["z"],
    }
    with pytest.raises(AssertionError):
        strategic_merge({"spec": {}}, {"spec": {"$patch": "delete"}})


@pytest.mark.skipif(kubectl() is None, reason="overlays use components, which only kubectl renders here")
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlays_render_and_validate(overlay: Path) -> None:
    rendered = render_with_kubectl(overlay)
    assert_valid(rendered)


@pytest.mark.skipif(kubectl() is None, reason="overlays use components, which only kubectl renders here")
def test_no_locust_overlay_removes_locust_and_nothing_else() -> None:
    rendered = set(map(_identity, render_with_kubectl(KUSTOMIZE_DIR / "overlays" / "no-locust")))
    removed = set(map(_identity, render_with_kubectl(BASE_DIR))) - rendered
    assert removed == {
        ("Deployment", "locust-master"),
        ("Deployment", "locust-worker"),
        ("Service", "locust-master"),
        ("Service", "locust-web"),
        ("ServiceAccount", "locust"),
        ("NetworkPolicy", "allow-locust-master"),
    }
