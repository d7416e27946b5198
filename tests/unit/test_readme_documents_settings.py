"""The README's configuration tables name every variable every settings class reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from batch_container.settings import BatchSettings
from eval_container.settings import EvaluatorSettings
from inference_container.settings import InferenceSettings
from nonml_container.settings import ProphetSettings
from preprocess_container.settings import PreprocessSettings
from shared.settings.base import BaseServiceSettings
from train_container.settings import TrainSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize(
    "settings_class",
    [
        BaseServiceSettings,
        PreprocessSettings,
        TrainSettings,
        ProphetSettings,
        EvaluatorSettings,
        InferenceSettings,
        BatchSettings,
    ],
)
def test_every_setting_has_a_row_in_the_readme(settings_class: type[BaseSettings]) -> None:
    undocumented = [name for name in settings_class.model_fields if f"| `{name}` |" not in README]
    assert not undocumented, f"{settings_class.__name__}: add {undocumented} to README's Configuration"
