"""Load the `.kubernetes` kustomization offline.

`kubectl kustomize` renders it when kubectl is installed; otherwise `render_in_python` applies the
subset of kustomize this kustomization uses (resources, namespace, secretGenerator, images), which
`test_python_render_matches_kubectl` keeps honest wherever both are available.
"""

from __future__ import annotations

import base64
import functools
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

REPO_ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = REPO_ROOT / ".kubernetes"
BASE_DIR = KUSTOMIZE_DIR / "base"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "CronJob")
LONG_RUNNING_KINDS = ("Deployment", "StatefulSet")

Resource = dict[str, Any]
S = TypeVar("S", bound=BaseSettings)


def mapping(value: object, what: str) -> dict[str, Any]:
    """`value` (parsed YAML) checked to be a mapping."""
    assert isinstance(value, dict), f"{what} is not a mapping: {value!r}"
    return value


def kustomization(directory: Path = BASE_DIR) -> dict[str, Any]:
    return mapping(yaml.safe_load((directory / "kustomization.yaml").read_text()), "kustomization.yaml")


def read_env_file(path: Path) -> dict[str, str]:
    """A kustomize `envs:` file: KEY=VALUE lines, `#` comments and blank lines ignored."""
    pairs: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: {line!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


def generated_secrets() -> dict[str, dict[str, str]]:
    """secretGenerator name → its keys and (development) values."""
    secrets: dict[str, dict[str, str]] = {}
    for generator in kustomization().get("secretGenerator", []):
        data: dict[str, str] = {}
        for env_file in generator.get("envs", []):
            data.update(read_env_file(BASE_DIR / env_file))
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        secrets[generator["name"]] = data
    return secrets


def _retag(image: str, images: list[dict[str, str]]) -> str:
    name, _, _tag = image.partition(":")
    for rule in images:
        if rule["name"] == name:
            return f"{rule.get('newName', name)}:{rule.get('newTag', _tag)}"
    return image


def _containers_of(resource: Resource) -> Iterator[dict[str, Any]]:
    spec = pod_spec(resource)
    if spec is not None:
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


def render_in_python(directory: Path = KUSTOMIZE_DIR) -> list[Resource]:
    config = kustomization(directory)
    assert set(config) <= {
        "apiVersion",
        "kind",
        "namespace",
        "resources",
        "generatorOptions",
        "secretGenerator",
        "images",
    }, "a kustomize feature this renderer lacks"
    resources: list[Resource] = []
    for name in config.get("resources", []):
        if (directory / name).is_dir():
            resources += render_in_python(directory / name)
            continue
        resources += [doc for doc in yaml.safe_load_all((directory / name).read_text()) if doc is not None]
    namespace = config.get("namespace")
    for doc in resources:
        if namespace and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = namespace
    if not config.get("secretGenerator"):
        return resources
    for name, data in generated_secrets().items():
        secret: Resource = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        resources.append(secret)
    for resource in resources:
        for container in _containers_of(resource):
            container["image"] = _retag(container["image"], config.get("images", []))
    return resources


def kubectl() -> str | None:
    return shutil.which("kubectl")


@functools.cache
def _kustomize(directory: Path) -> str:
    binary = kubectl()
    assert binary is not None
    result = subprocess.run(
        [binary, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render_with_kubectl(directory: Path = KUSTOMIZE_DIR) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(_kustomize(directory)) if doc is not None]


@dataclass(frozen=True)
class Workload:
    """A pod-creating resource and where its pod spec lives."""

    resource: Resource

    @property
    def kind(self) -> str:
        return str(self.resource["kind"])

    @property
    def name(self) -> str:
        return str(self.resource["metadata"]["name"])

    @property
    def template(self) -> dict[str, Any]:
        spec = self.resource["spec"]
        if self.kind == "CronJob":
            return mapping(spec["jobTemplate"]["spec"]["template"], f"{self.name}'s pod template")
        return mapping(spec["template"], f"{self.name}'s pod template")

    @property
    def pod_spec(self) -> dict[str, Any]:
        return mapping(self.template["spec"], f"{self.name}'s pod spec")

    @property
    def containers(self) -> list[dict[str, Any]]:
        return list(self.pod_spec["containers"])

    @property
    def all_containers(self) -> list[dict[str, Any]]:
        return [*self.pod_spec.get("initContainers", []), *self.containers]

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    if resource["kind"] not in WORKLOAD_KINDS:
        return None
    return Workload(resource).pod_spec


def workloads(resources: list[Resource]) -> list[Workload]:
    return [Workload(r) for r in resources if r["kind"] in WORKLOAD_KINDS]


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    for resource in resources:
        if resource["kind"] == kind and resource["metadata"]["name"] == name:
            return resource
    raise LookupError(f"no {kind}/{name} in the rendered kustomization")


def config_maps(resources: list[Resource]) -> dict[str, dict[str, str]]:
    return {r["metadata"]["name"]: r.get("data", {}) for r in resources if r["kind"] == "ConfigMap"}


def env_names(container: dict[str, Any], maps: dict[str, dict[str, str]]) -> set[str]:
    """Every variable the container gets from `env` and from `envFrom` ConfigMaps."""
    names = {entry["name"] for entry in container.get("env", [])}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref is not None, f"envFrom other than a ConfigMap in {container['name']}: {source}"
        names |= set(maps[ref["name"]])
    return names


def settings_from(cls: type[S], values: dict[str, str]) -> S:
    """Build `cls` from `values` alone: the test process's own environment must not leak in."""

    class Isolated(cls):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls_,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    return Isolated(**values)
