"""Offline tuning of the GRU/LSTM defaults on the TRAIN splits only (rolling origin over their tail).

Reads data/<station>.csv of PobleSec, LesCorts and ElBorn and never a *_test.csv: the test splits
are scored once, for the report (bench/accuracy.py), after the defaults are fixed here.

Each station's train split is cleaned and MinMax-scaled exactly as the preprocess job does it.
Rolling origin: for each origin o (a fraction of the N train rows, default 0.70 and 0.85) the
rows before o stand in for a train split, the pipeline's own rule cuts its validation period
(shared.data.validation_start, for early stopping), and the next round(0.15 N) rows are the
held-out rows the forecast is scored on; they are never trained or early-stopped on. The
origins' scoring rows together cover the last 30 % of the train split.

Scores are one step ahead through the model runtime (RecurrentForecast.predict_many, as the
inference service computes them), as ratios to persistence on the same rows: RMSE of `down`
and of `up` in original units, and the 11-KPI mean RMSE in MinMax units (the evaluator's gate
asks each to be below 1). The objective is the mean over stations and origins of the `down`
and `up` ratios; lower is better.

The grid is one-factor-at-a-time around a fixed base (a full factorial is hours on two shared
cores). Round 1 scores the base and each change alone. A combined configuration then takes, for
each hyperparameter, the value of the round-1 row with the lowest objective (mean over the model
types) among those whose full-PobleSec training (CPU seconds, estimated from the largest fold)
fits the budget. Round 2 scores the combination and the combination with each of its changes
undone alone, and drops a change whose undoing scores better ("final"). The defaults are the
row with the lowest objective in budget; the last line says whether settings.py has them.

    .venv/bin/python bench/tune.py [--models GRU LSTM] [--stations ...] [--origins 0.70 0.85]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from preprocess_container.preprocessing import assemble, clean_split, fit_scaler, read_raw_csv  # noqa: E402
from shared.data import KPI_COLUMNS, STEP, MinMaxScaler, validation_start  # noqa: E402
from shared.model_runtime.recurrent import RecurrentForecast  # noqa: E402
from shared.settings.trainer import TrainerSettings  # noqa: E402
from train_container.settings import RecurrentHyperparameters  # noqa: E402
from train_container.training import train_recurrent  # noqa: E402

STATIONS = ("PobleSec", "LesCorts", "ElBorn")
VALIDATION_FRACTION = float(TrainerSettings.model_fields["VALIDATION_FRACTION"].default)
# Held-out rows per origin, as a fraction of the train split: the size of the validation period.
HORIZON_FRACTION = 0.15
# CPU seconds (one thread) to train full PobleSec: three trainers share two cores in the
# pipeline, so each runs at about 2/3 speed there, and 12 s of CPU stays well under 25 s shared.
BUDGET_S = 12.0

# The base the grid starts from, spelled out so that the script tunes the same grid whatever the
# defaults it led to: the per-KPI normalisation with Huber loss and the previous defaults' sizes.
# MAX_TRAIN_SECONDS is out of the way: time is judged by CPU seconds, not by a wall-clock cap that
# other work on the machine would trip.
BASE: dict[str, object] = {
    "SCALING": "robust",
    "INPUT_CLIP": 10.0,
    "LOSS": "huber",
    "HUBER_DELTA": 1.0,
    "HIDDEN_SIZE": 64,
    "LEARNING_RATE": 1e-2,
    "EPOCHS": 20,
    "PATIENCE": 10,
    "BATCH_SIZE": 256,
    "DROPOUT": 0.1,
    "LR_SCHEDULE": "onecycle",
    "MAX_TRAIN_SECONDS": 3600.0,
}
BASE_LAYERS = {"GRU": 1, "LSTM": 2}
# One change per row. SCALING=minmax is the network without its per-KPI normalisation (MinMax
# units in and out, as before), with the Huber threshold it had then.
CHANGES: tuple[dict[str, object], ...] = (
    {"SCALING": "minmax", "HUBER_DELTA": 0.2},
    {"LOSS": "mse"},
    {"LOSS": "mae"},
    {"INPUT_CLIP": 0.0},
    {"INPUT_CLIP": 30.0},
    {"HIDDEN_SIZE": 32},
    {"LEARNING_RATE": 3e-3},
    {"EPOCHS": 10},
    {"NUM_LAYERS": 1},
)


def configuration(fields: dict[str, object], model_type: str) -> RecurrentHyperparameters:
    """`fields` over BASE for `model_type` (depth from BASE_LAYERS unless `fields` sets it)."""
    merged = {**BASE, "NUM_LAYERS": BASE_LAYERS[model_type], **fields, "MODEL_TYPE": model_type}
    return RecurrentHyperparameters.model_validate(merged)


@dataclass(frozen=True)
class Station:
    name: str
    frame: pd.DataFrame  # scaled train split, 17 feature columns
    scaler: MinMaxScaler


@dataclass(frozen=True)
class Score:
    """Ratios to persistence on one station's held-out rows, averaged over the origins."""

    down: float
    up: float
    mean11: float
    gates: int  # origins where down, up and the 11-KPI mean all beat persistence
    seconds: float  # CPU seconds to train full PobleSec, estimated from the largest fold


def load_train(name: str) -> Station:
    """The train split as the preprocess job makes it; the test split is not read."""
    raw = read_raw_csv((REPO / "data" / f"{name}.csv").read_bytes(), "train")
    clean, _ = clean_split(raw, "train")
    scaler, _ = fit_scaler(clean)
    return Station(name, assemble(clean, scaler), scaler)


def held_out_ratios(
    station: Station, config: RecurrentHyperparameters, origin: float
) -> tuple[np.ndarray, float, float, int]:
    """(per-KPI RMSE ratios to persistence, 11-KPI mean ratio, training CPU seconds, training rows)."""
    frame = station.frame
    rows = len(frame)
    end = round(rows * origin)
    stop = min(rows, end + round(rows * HORIZON_FRACTION))
    cut = validation_start(end, VALIDATION_FRACTION, config.OUTPUT_SEQ_LEN)
    # CPU seconds, not wall-clock: other work on the machine must not decide the budget.
    started = time.process_time()
    result = train_recurrent(frame.iloc[:end], config, validation_start=cut, device=torch.device("cpu"))
    seconds = time.process_time() - started
    forecast = RecurrentForecast(
        model=result.model.to("cpu"),
        scaler=station.scaler,
        input_seq_len=config.INPUT_SEQ_LEN,
        output_seq_len=config.OUTPUT_SEQ_LEN,
        step=np.timedelta64(int(STEP.total_seconds()), "s"),
    )
    original = station.scaler.inverse_array(frame.loc[:, list(KPI_COLUMNS)].to_numpy(dtype=np.float64))
    stamps = frame.index.to_numpy()
    length = config.INPUT_SEQ_LEN
    windows = [(stamps[i - length : i], original[i - length : i], 1) for i in range(end, stop)]
    predicted = np.vstack([p[0] for p in forecast.predict_many(windows)])
    actual = original[end:stop]
    persistence = original[end - 1 : stop - 1]
    model_rmse = np.sqrt(np.mean((predicted - actual) ** 2, axis=0))
    base_rmse = np.maximum(np.sqrt(np.mean((persistence - actual) ** 2, axis=0)), 1e-12)
    # The evaluator's KPI mean is over RMSEs in MinMax units: original units / the scaler's range.
    span = np.asarray(station.scaler.data_range)
    mean11 = float(np.mean(model_rmse / span) / np.mean(base_rmse / span))
    return model_rmse / base_rmse, mean11, seconds, cut


def score(station: Station, config: RecurrentHyperparameters, origins: Iterable[float]) -> Score:
    ratios, means, gates, seconds, largest = [], [], 0, 0.0, 0
    for origin in origins:
        ratio, mean11, fold_seconds, train_rows = held_out_ratios(station, config, origin)
        ratios.append(ratio)
        means.append(mean11)
        gates += int(ratio[0] < 1 and ratio[1] < 1 and mean11 < 1)
        if train_rows > largest:
            largest = train_rows
            # Time grows with the training rows; the pipeline trains on the rows before its cut.
            full_rows = validation_start(len(station.frame), VALIDATION_FRACTION, config.OUTPUT_SEQ_LEN)
            seconds = fold_seconds * full_rows / train_rows
    mean = np.mean(ratios, axis=0)
    return Score(float(mean[0]), float(mean[1]), float(np.mean(means)), gates, seconds)


def label(change: dict[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in change.items()) or "base"


@dataclass(frozen=True)
class Row:
    objective: float  # mean over stations and origins of the down and up ratios
    seconds: float  # estimated CPU seconds to train full PobleSec


class Grid:
    """Every (model type, configuration) scored once; a configuration identical to one already
    scored for a model type (NUM_LAYERS=1 for GRU is its base) reuses that score."""

    def __init__(self, models: list[str], stations: list[Station], origins: list[float]) -> None:
        self.models, self.stations, self.origins = models, stations, origins
        self.rows: dict[tuple[str, str], Row] = {}
        self.fields: dict[str, dict[str, object]] = {}

    def run(self, name: str, fields: dict[str, object]) -> None:
        self.fields[name] = fields
        for model_type in self.models:
            config = configuration(fields, model_type)
            same = [n for n, f in self.fields.items() if n != name and configuration(f, model_type) == config]
            if same and (model_type, same[0]) in self.rows:
                self.rows[(model_type, name)] = self.rows[(model_type, same[0])]
                continue
            self.rows[(model_type, name)] = _row(model_type, name, config, self.stations, self.origins)

    def objective(self, name: str) -> float:
        return float(np.mean([self.rows[(m, name)].objective for m in self.models]))

    def in_budget(self, name: str) -> bool:
        return all(self.rows[(m, name)].seconds <= BUDGET_S for m in self.models)

    def best(self) -> str:
        """The row with the lowest objective in budget (ties: the earlier row)."""
        names = [n for n in self.fields if self.in_budget(n)] or list(self.fields)
        return min(names, key=self.objective)


def combine(grid: Grid) -> dict[str, object]:
    """Per hyperparameter, the value (the base's or a change's) of the row with the lowest objective
    in budget."""
    chosen: dict[str, object] = {}
    for field in sorted({k for c in CHANGES for k in c}):
        candidates: list[dict[str, object]] = [{}, *(c for c in CHANGES if field in c)]
        fitting = [c for c in candidates if grid.in_budget(label(c))] or candidates
        best: dict[str, object] = min(fitting, key=lambda c: grid.objective(label(c)))
        chosen.update(best)
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["GRU", "LSTM"])
    parser.add_argument("--stations", nargs="+", default=list(STATIONS))
    parser.add_argument("--origins", type=float, nargs="+", default=[0.70, 0.85])
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each trainer runs in the pipeline
    stations = [load_train(name) for name in args.stations]
    print(
        "train splits only: "
        + ", ".join(f"{s.name} {len(s.frame)} rows" for s in stations)
        + f"; origins {args.origins}, {HORIZON_FRACTION:.0%} held out after each; "
        f"validation fraction {VALIDATION_FRACTION}; ratios to persistence (lower is better)"
    )
    print(f"base: {label(BASE)} NUM_LAYERS=GRU {BASE_LAYERS['GRU']}/LSTM {BASE_LAYERS['LSTM']}")
    print(
        f"{'model':5} {'config':32}"
        + "".join(f" | {s.name[:8]:>8} down    up  mean" for s in stations)
        + " | objective gates  cpu s"
    )
    grid = Grid(args.models, stations, args.origins)
    print("-- round 1: the base, then one change at a time")
    for change in ({}, *CHANGES):
        grid.run(label(change), change)
    combined = combine(grid)
    print(f"-- round 2: combined = {label(combined)}, then each of its changes undone alone")
    grid.run("combined", combined)
    final = dict(combined)
    for field in list(combined):
        undone = {k: v for k, v in combined.items() if k != field}
        name = f"combined without {field}"
        grid.run(name, undone)
        if grid.in_budget(name) and grid.objective(name) < grid.objective("combined"):
            del final[field]
    if final != combined:
        grid.run("final", final)
    print(
        "objective (mean over the models): " + ", ".join(f"{n} {grid.objective(n):.4f}" for n in grid.fields)
    )
    winner = grid.best()
    chosen = {
        "GRU": configuration(grid.fields[winner], "GRU"),
        "LSTM": configuration(grid.fields[winner], "LSTM"),
    }
    print(
        f"chosen: {winner} = {label(grid.fields[winner])} (objective {grid.objective(winner):.4f}, base "
        f"{grid.objective('base'):.4f}); full-PobleSec training estimated at "
        + ", ".join(f"{m} {grid.rows[(m, winner)].seconds:.1f}" for m in args.models)
        + f" CPU s (budget {BUDGET_S:.0f})"
    )
    print("chosen defaults: " + _defaults_line(chosen))
    return 0


def _defaults_line(chosen: dict[str, RecurrentHyperparameters]) -> str:
    """The tuned fields of the chosen configuration, and whether train_container/settings.py has them."""
    tuned = sorted({k for c in CHANGES for k in c} | {"HUBER_DELTA"})
    parts, differing = [], []
    for model_type, config in chosen.items():
        current = RecurrentHyperparameters.model_validate({"MODEL_TYPE": model_type})
        for field in tuned:
            if getattr(config, field) != getattr(current, field):
                differing.append(
                    f"{model_type} {field} {getattr(current, field)} -> {getattr(config, field)}"
                )
    gru, lstm = chosen["GRU"], chosen["LSTM"]
    for field in tuned:
        value = getattr(gru, field)
        parts.append(
            f"{field}={value}"
            if value == getattr(lstm, field)
            else f"{field}=GRU {value}/LSTM {getattr(lstm, field)}"
        )
    verdict = "settings.py has them" if not differing else "settings.py differs: " + "; ".join(differing)
    return " ".join(parts) + f" ({verdict})"


def _row(
    model_type: str,
    name: str,
    config: RecurrentHyperparameters,
    stations: list[Station],
    origins: list[float],
) -> Row:
    """Score one configuration on every station and print its row."""
    scores = [score(station, config, origins) for station in stations]
    objective = float(np.mean([(s.down + s.up) / 2 for s in scores]))
    seconds = max(s.seconds for s in scores)
    gates = sum(s.gates for s in scores)
    cells = "".join(f" | {'':8} {s.down:.3f} {s.up:.3f} {s.mean11:.3f}" for s in scores)
    print(
        f"{model_type:5} {name[:32]:32}{cells} | {objective:9.4f} "
        f"{gates:2d}/{len(scores) * len(origins):<2d} {seconds:6.1f}",
        flush=True,
    )
    return Row(objective, seconds)


if __name__ == "__main__":
    sys.exit(main())
