"""The manifests and the settings classes agree, both ways: every variable a service requires
is set in its manifest, and every variable a manifest sets is one its settings class reads."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from shared.settings.base import BaseServiceSettings
from tests.k8s.manifests import Resource, Workload, config_maps, env_names, find, settings_from

# (kind, name, container) → the settings class its entrypoint loads.
SERVICES = {
    ("CronJob", "preprocess", "preprocess"): "preprocess_container.settings:PreprocessSettings",
    ("Deployment", "train-gru", "trainer"): "train_container.settings:TrainSettings",
    ("Deployment", "train-lstm", "trainer"): "train_container.settings:TrainSettings",
    ("Deployment", "train-prophet", "trainer"): "nonml_container.settings:ProphetSettings",
    ("Deployment", "evaluator", "evaluator"): "eval_container.settings:EvaluatorSettings",
    ("Deployment", "inference", "inference"): "inference_container.settings:InferenceSettings",
}


def settings_class(path: str) -> type[BaseSettings]:
    module, _, name = path.partition(":")
    cls: object = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type) and issubclass(cls, BaseServiceSettings), f"{path}: not service settings"
    return cls


def readable_names(cls: type[BaseSettings]) -> set[str]:
    names = set()
    for field_name, info in cls.model_fields.items():
        alias = info.validation_alias
        names.add(alias if isinstance(alias, str) else field_name)
    return names


def required_names(cls: type[BaseSettings]) -> set[str]:
    return {name for name, info in cls.model_fields.items() if info.is_required()}


def _container(rendered: list[Resource], kind: str, name: str, container: str) -> dict[str, Any]:
    [found] = [c for c in Workload(find(rendered, kind, name)).containers if c["name"] == container]
    return found


@pytest.mark.parametrize(("kind", "name", "container"), sorted(SERVICES))
def test_manifest_sets_every_required_setting(
    rendered: list[Resource], kind: str, name: str, container: str
) -> None:
    cls = settings_class(SERVICES[(kind, name, container)])
    assert required_names(cls) >= {"KAFKA_BOOTSTRAP_SERVERS", "AWS_ACCESS_KEY_ID"}, (
        "settings lost its required"
    )
    env = env_names(_container(rendered, kind, name, container), config_maps(rendered))
    missing = required_names(cls) - env
    assert not missing, f"{kind}/{name} does not set {sorted(missing)} required by {cls.__name__}"


@pytest.mark.parametrize(("kind", "name", "container"), sorted(SERVICES))
def test_manifest_sets_only_variables_the_service_reads(
    rendered: list[Resource], kind: str, name: str, container: str
) -> None:
    cls = settings_class(SERVICES[(kind, name, container)])
    env = env_names(_container(rendered, kind, name, container), config_maps(rendered))
    unread = env - readable_names(cls)
    assert not unread, f"{kind}/{name} sets {sorted(unread)}, which {cls.__name__} never reads"


@pytest.mark.parametrize(("kind", "name", "container"), sorted(SERVICES))
def test_manifest_values_are_accepted_by_the_settings_class(
    rendered: list[Resource], kind: str, name: str, container: str
) -> None:
    """Literal values and ConfigMap values, as the pod would see them, pass validation."""
    cls = settings_class(SERVICES[(kind, name, container)])
    maps = config_maps(rendered)
    spec = _container(rendered, kind, name, container)
    values: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        values.update(maps[source["configMapRef"]["name"]])
    for entry in spec.get("env", []):
        if "value" in entry:
            values[entry["name"]] = entry["value"]
        elif "configMapKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["configMapKeyRef"]
            values[entry["name"]] = maps[ref["name"]][ref["key"]]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            # The value lives in the Secret; any non-empty string satisfies the type.
            values[entry["name"]] = "from-secret"
    settings = settings_from(cls, values)
    if "MODEL_TYPE" in values:
        assert str(settings.model_dump()["MODEL_TYPE"]).upper().endswith(values["MODEL_TYPE"])


def test_trainers_differ_only_in_model_type(rendered: list[Resource]) -> None:
    gru = _container(rendered, "Deployment", "train-gru", "trainer")
    lstm = _container(rendered, "Deployment", "train-lstm", "trainer")
    model_type = (
        {e["name"]: e.get("value") for e in gru["env"]}["MODEL_TYPE"],
        {e["name"]: e.get("value") for e in lstm["env"]}["MODEL_TYPE"],
    )
    assert model_type == ("GRU", "LSTM")
    strip = (
        [e for e in gru["env"] if e["name"] != "MODEL_TYPE"],
        [e for e in lstm["env"] if e["name"] != "MODEL_TYPE"],
    )
    assert strip[0] == strip[1]
