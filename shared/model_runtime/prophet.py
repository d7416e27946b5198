"""Prophet forecaster at serving time: one Prophet model per KPI, stored as JSON.

Each KPI's model (fitted by the Prophet trainer, `nonml_container.fitting`) predicts from
timestamps alone, in scaled units. Models are serialized with `prophet.serialize.model_to_json`
(plain JSON, never a pickle) into one file per KPI plus a small manifest.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from shared.data import KPI_COLUMNS

if TYPE_CHECKING:
    # prophet is imported where it is used: importing it costs seconds (cmdstanpy, plotting).
    from prophet import Prophet

MANIFEST_FILE = "prophet_spec.json"
MANIFEST_KIND = "prophet-per-kpi"


def quiet_stan() -> None:
    # cmdstanpy logs every fit at INFO, and prophet's own pandas calls raise deprecation
    # warnings we cannot act on; both are noise at the volumes a trainer runs.
    for name in ("cmdstanpy", "prophet", "prophet.plot"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"prophet(\..*)?$")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"prophet(\..*)?$")


class ProphetForecaster:
    """Predicts all KPIs for given timestamps, in scaled units, KPI_COLUMNS order."""

    def __init__(self, models: Mapping[str, object], columns: Sequence[str] = KPI_COLUMNS) -> None:
        missing = [c for c in columns if c not in models]
        if missing:
            raise ValueError(f"no Prophet model for {missing}")
        self.models = prophet_models(models)
        self.columns = tuple(columns)

    def predict(self, timestamps: pd.DatetimeIndex) -> np.ndarray:
        future = pd.DataFrame({"ds": pd.DatetimeIndex(timestamps)})
        out = np.empty((len(future), len(self.columns)), dtype=np.float64)
        for i, column in enumerate(self.columns):
            out[:, i] = self.models[column].predict(future)["yhat"].to_numpy(dtype=np.float64)
        return out


def prophet_models(models: Mapping[str, object]) -> dict[str, Prophet]:
    """`models` checked to be fitted Prophet models (what the trainer's fitting returns)."""
    from prophet import Prophet

    checked = {kpi: model for kpi, model in models.items() if isinstance(model, Prophet)}
    others = sorted(set(models) - set(checked))
    if others:
        raise TypeError(f"not Prophet models: {others}")
    return checked


def save_prophet_models(models: Mapping[str, object], directory: Path) -> None:
    """Write <kpi>.json (prophet's own JSON) per model and a manifest naming them."""
    from prophet.serialize import model_to_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for kpi, model in prophet_models(models).items():
        name = f"{kpi}.json"
        (directory / name).write_text(model_to_json(model))
        files[kpi] = name
    manifest = {"kind": MANIFEST_KIND, "columns": list(models), "files": files}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def load_prophet_forecaster(directory: Path) -> ProphetForecaster:
    """Rebuild the forecaster from the JSON files written by save_prophet_models (no pickle)."""
    quiet_stan()
    from prophet.serialize import model_from_json

    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    if manifest.get("kind") != MANIFEST_KIND:
        raise ValueError(f"{directory} does not hold a {MANIFEST_KIND} model")
    models = {kpi: model_from_json((directory / name).read_text()) for kpi, name in manifest["files"].items()}
    return ProphetForecaster(models, manifest["columns"])
