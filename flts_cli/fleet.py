"""The stations of one `flts run`: which datasets it takes, what inference says it serves, and the
fleet summary of the report.

A station is a dataset of the data folder (`<name>.csv` with its `<name>_test.csv`); its claims
carry the dataset name as identifier, the preprocess job's default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flts_cli import REPO_ROOT

ALL = "all"


class DatasetError(ValueError):
    """`--dataset` names something the data folder does not hold."""


def data_dir() -> Path:
    """The folder the preprocess job reads its CSVs from: DATA_DIR, as the job reads it."""
    explicit = os.environ.get("DATA_DIR", "").strip()
    return Path(explicit) if explicit else REPO_ROOT / "data"


def available_datasets(directory: Path) -> list[str]:
    """Every `<name>.csv` of `directory` that has its `<name>_test.csv`, sorted."""
    if not directory.is_dir():
        return []
    return sorted(
        path.stem
        for path in directory.glob("*.csv")
        if not path.stem.endswith("_test") and (directory / f"{path.stem}_test.csv").exists()
    )


def resolve_datasets(value: str, directory: Path) -> tuple[str, ...]:
    """The datasets `--dataset` names, in the order given, each once; `all` is every one."""
    available = available_datasets(directory)
    names = [part.strip() for part in value.split(",") if part.strip()]
    if [name.lower() for name in names] == [ALL]:
        if not available:
            raise DatasetError(f"--dataset all: no <name>.csv with its <name>_test.csv in {directory}")
        return tuple(available)
    unknown = [name for name in names if name not in available]
    if not names or unknown:
        what = f"unknown dataset {', '.join(unknown)}" if unknown else "no dataset named"
        known = ", ".join(available) or "none"
        raise DatasetError(
            f"--dataset {value!r}: {what}; {directory} holds {known} "
            f"(a dataset is <name>.csv with its <name>_test.csv; `{ALL}` takes every one)"
        )
    return tuple(dict.fromkeys(names))


def served_run_ids(body: Mapping[str, Any] | None) -> dict[str, str]:
    """identifier -> run_id of what `GET /model` says is loaded.

    Reads the fleet shape (`models` keyed by identifier) and the single-model shape (`identifier`
    and `run_id` at the top), so a runner and an inference service of either generation agree; an
    answer of neither shape (loading, an error) serves nothing yet.
    """
    if not body:
        return {}
    models = body.get("models")
    if isinstance(models, Mapping):
        return {
            str(identifier): entry["run_id"]
            for identifier, entry in models.items()
            if isinstance(entry, Mapping) and isinstance(entry.get("run_id"), str)
        }
    identifier, run_id = body.get("identifier"), body.get("run_id")
    if isinstance(identifier, str) and isinstance(run_id, str):
        return {identifier: run_id}
    return {}


def fleet_summary(stations: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Which stations were promoted, refused, failed otherwise or went live, from the report's
    `stations`; `trigger_to_all_live_seconds` is set only when every station went live."""
    live = _named(stations, lambda s: s.get("status") == "live")
    live_seconds = [
        float(seconds)
        for name in live
        if (seconds := stations[name].get("trigger_to_live_seconds")) is not None
    ]
    all_live = bool(stations) and len(live_seconds) == len(stations)
    return {
        "stations": len(stations),
        "promoted": _named(stations, lambda s: bool(s.get("promoted"))),
        "refused": {
            name: (s.get("decision") or {}).get("reason")
            for name, s in stations.items()
            if s.get("status") == "refused"
        },
        "failed": {
            name: {"stage": s.get("failed_stage"), "error": s.get("error")}
            for name, s in stations.items()
            if s.get("status") == "failed"
        },
        "live": live,
        "trigger_to_all_live_seconds": max(live_seconds) if all_live else None,
    }


def _named(stations: Mapping[str, Mapping[str, Any]], keep: Callable[[Mapping[str, Any]], bool]) -> list[str]:
    return [name for name, station in stations.items() if keep(station)]
