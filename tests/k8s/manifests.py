"""Load the `.kubernetes` kustomization offline.

`kubectl kustomize` renders it when kubectl is installed; otherwise `render_in_python` applies the
subset of kustomize these kustomizations use (resources, namespace, secretGenerator, images, and
strategic-merge patches of name-keyed lists), which `test_python_render_matches_kubectl` keeps
honest wherever both are available.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib
import inspect
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
LOCAL_DIR = KUSTOMIZE_DIR / "overlays" / "local"
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


def generated_secrets(directory: Path = BASE_DIR) -> dict[str, dict[str, str]]:
    """secretGenerator name → its keys and (development) values."""
    secrets: dict[str, dict[str, str]] = {}
    for generator in kustomization(directory).get("secretGenerator", []):
        data: dict[str, str] = {}
        for env_file in generator.get("envs", []):
            data.update(read_env_file(directory / env_file))
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


def _merge_by_name(original: list[Any], patch: list[Any], where: str) -> list[Any]:
    """A strategic merge of two lists of named objects (containers, env, volumes): kustomize puts
    the patch's items first, in the patch's order, then the original items it does not name."""
    by_name = {item["name"]: item for item in original}
    merged = [
        strategic_merge(by_name[item["name"]], item, where)
        if item["name"] in by_name
        else copy.deepcopy(item)
        for item in patch
    ]
    named = {item["name"] for item in patch}
    return merged + [copy.deepcopy(item) for item in original if item["name"] not in named]


def strategic_merge(original: Any, patch: Any, where: str = "") -> Any:
    """The subset of a strategic-merge patch the overlays use: maps merge, lists of objects that
    all have a `name` merge by name, a null deletes, and any other value replaces."""
    if isinstance(patch, dict):
        assert not any(str(key).startswith("$") for key in patch), (
            f"{where}: a patch directive this renderer lacks"
        )
        merged = dict(original) if isinstance(original, dict) else {}
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, f"{where}.{key}")
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(patch, list) and patch and all(isinstance(item, dict) for item in patch):
        assert all("name" in item for item in patch), f"{where}: a list merge key this renderer lacks"
        if isinstance(original, list) and all(isinstance(item, dict) and "name" in item for item in original):
            return _merge_by_name(original, patch, where)
    return copy.deepcopy(patch)


def _apply_patches(resources: list[Resource], directory: Path, patches: list[dict[str, Any]]) -> None:
    for entry in patches:
        if "path" in entry:
            docs = [d for d in yaml.safe_load_all((directory / entry["path"]).read_text()) if d is not None]
        else:
            docs = [d for d in yaml.safe_load_all(entry["patch"]) if d is not None]
        target = entry.get("target", {})
        assert set(target) <= {"kind", "name"}, f"{directory}: a patch target this renderer lacks: {target}"
        for doc in docs:
            kind = target.get("kind", doc["kind"])
            name = target.get("name", doc["metadata"]["name"])
            matches = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
            assert len(matches) == 1, (
                f"{directory}: the patch of {kind}/{name} matches {len(matches)} objects"
            )
            patched = strategic_merge(matches[0], doc, f"{kind}/{name}")
            matches[0].clear()
            matches[0].update(patched)


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
        "patches",
    }, "a kustomize feature this renderer lacks"
    resources: list[Resource] = []
    for name in config.get("resources", []):
        if (directory / name).is_dir():
            resources += render_in_python((directory / name).resolve())
            continue
        resources += [doc for doc in yaml.safe_load_all((directory / name).read_text()) if doc is not None]
    namespace = config.get("namespace")
    for doc in resources:
        if namespace and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = namespace
    for name, data in generated_secrets(directory).items():
        secret: Resource = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        resources.append(secret)
    _apply_patches(resources, directory, config.get("patches", []))
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


def service_settings_classes() -> list[type[BaseSettings]]:
    """Every service's settings class (`*_container/settings.py`), found, not listed, so that a new
    service's topics and buckets are seen by the checks of what the cluster creates."""
    from shared.settings.base import BaseServiceSettings

    found: dict[str, type[BaseSettings]] = {}
    for path in sorted(REPO_ROOT.glob("*_container/settings.py")):
        module = importlib.import_module(f"{path.parent.name}.settings")
        for cls in vars(module).values():
            if inspect.isclass(cls) and issubclass(cls, BaseServiceSettings):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    found.pop(f"{BaseServiceSettings.__module__}.{BaseServiceSettings.__qualname__}", None)
    return list(found.values())


def setting_defaults(prefix: str) -> set[str]:
    """The default of every `<prefix>*` setting of any service (topic or bucket names)."""
    return {
        str(info.default)
        for cls in service_settings_classes()
        for name, info in cls.model_fields.items()
        if name.startswith(prefix) and isinstance(info.default, str)
    }
