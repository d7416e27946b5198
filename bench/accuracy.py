"""Accuracy bench: every trainer on the full data of all three stations, selected as the evaluator selects.

Runs the pipeline's own code path without Kafka, S3 or MLflow: the preprocess job's cleaning,
scaler and time features (preprocess_container.preprocessing.prepare_splits), each trainer's own
`fit` with its default settings (train_container.trainer.RecurrentTrainer for GRU and LSTM,
nonml_container.trainer.ProphetTrainer for Prophet; the endpoints they are built with are never
contacted), the trainer service's scoring (shared.trainer_service.score_forecast: predictions
through the model runtime's `Forecast.predict_many`, as inference serves them) and the
evaluator's selection (shared.scoring.select: best validation score among the candidates that
beat persistence on validation RMSE of `down`, of `up` and of the 11-KPI mean; none = refused).

Per station and model, the mean over seeds (Prophet's fit does not depend on a seed: one run):
validation RMSE of `down` and `up` (original units) and of the KPI mean, each as a ratio to
persistence; test RMSE of `down` and `up` against persistence and against the federated LSTM
of Perifanis et al. on the same test rows (10..N-1); training seconds. The test split is scored
here, once, for the report: nothing chooses on it (bench/tune.py chose the defaults on the train
splits only).

The bar: at every station the selected model beats persistence on test RMSE of `down` and `up`
(a refusal misses it). The goal: it also beats the federated LSTM on all six figures. Both are
judged on the seed means; a line before the verdict also counts, per station, the seeds for
which one pipeline run (that seed's GRU and LSTM, and Prophet) would hold the bar.

    .venv/bin/python bench/accuracy.py [--stations ...] [--seeds 1 2 3] [--models GRU LSTM PROPHET]
        [--threads 1] [--cpu] [--set FIELD=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nonml_container.settings import ProphetSettings  # noqa: E402
from nonml_container.trainer import ProphetTrainer  # noqa: E402
from preprocess_container.preprocessing import (  # noqa: E402
    PreparedData,
    PreprocessOptions,
    prepare_splits,
    read_raw_csv,
)
from shared.data import STEP, validation_start  # noqa: E402
from shared.events import ModelType  # noqa: E402
from shared.rolling import Series  # noqa: E402
from shared.scoring import Candidate, score, select  # noqa: E402
from shared.trainer_service import ModelTrainer, score_forecast  # noqa: E402
from train_container.settings import RecurrentHyperparameters, TrainSettings  # noqa: E402
from train_container.trainer import RecurrentTrainer  # noqa: E402

STATIONS = ("PobleSec", "LesCorts", "ElBorn")
# Federated LSTM of Perifanis et al. (Computer Networks, 2023): test RMSE of down and up, rows 10..N-1.
FEDERATED: dict[str, tuple[float, float]] = {
    "PobleSec": (82.58e6, 15.85e6),
    "LesCorts": (20.32e6, 0.456e6),
    "ElBorn": (87.92e6, 8.29e6),
}
# The trainers' settings classes require endpoints; the bench calls `fit` alone, which uses none.
UNUSED_ENDPOINTS: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
    "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "unused",
    "AWS_SECRET_ACCESS_KEY": "unused",
}
# Figures averaged over seeds; the selection and the table read these.
FIGURES = (
    "val_rmse",
    "val_mae",
    "val_mse",
    "baseline_val_rmse",
    "val_rmse_down",
    "val_rmse_up",
    "baseline_val_rmse_down",
    "baseline_val_rmse_up",
    "test_rmse_down",
    "test_rmse_up",
    "baseline_test_rmse_down",
    "baseline_test_rmse_up",
)


@dataclass(frozen=True)
class Result:
    """One model at one station: its figures (mean over its runs), each run's, training seconds."""

    model: str
    runs: int
    figures: dict[str, float]
    seconds: float
    per_run: tuple[dict[str, float], ...]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", nargs="+", default=list(STATIONS), choices=STATIONS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--models", nargs="+", default=["GRU", "LSTM", "PROPHET"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the trainer's default)")
    parser.add_argument("--cpu", action="store_true", help="ignore a GPU even if one is present")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="override GRU/LSTM defaults, e.g. --set HIDDEN_SIZE=32 (to try candidates)",
    )
    args = parser.parse_args()
    overrides = _overrides(args.set)
    torch.set_num_threads(args.threads)
    defaults = _recurrent_settings("GRU", 0, overrides, args.cpu)
    print(
        f"defaults: hidden {defaults.HIDDEN_SIZE}, layers GRU {defaults.NUM_LAYERS} / LSTM "
        f"{_recurrent_settings('LSTM', 0, overrides, args.cpu).NUM_LAYERS}, scaling {defaults.SCALING}, "
        f"clip {defaults.INPUT_CLIP}, loss {defaults.LOSS} (delta {defaults.HUBER_DELTA}), "
        f"lr {defaults.LEARNING_RATE} ({defaults.LR_SCHEDULE}), batch {defaults.BATCH_SIZE}, epochs <= "
        f"{defaults.EPOCHS}, patience {defaults.PATIENCE}, cap {defaults.MAX_TRAIN_SECONDS:.0f}s; "
        f"validation fraction {defaults.VALIDATION_FRACTION}; {args.threads} CPU thread(s); "
        f"seeds {args.seeds}"
    )
    print(_header())
    selected: dict[str, Result | None] = {}
    per_seed: dict[str, list[bool]] = {}
    for station in args.stations:
        prepared = _prepare(station, defaults)
        results = [
            _evaluate(station, prepared, model, args.seeds, overrides, args.cpu) for model in args.models
        ]
        for result in results:
            if result is not None:
                print(_line(station, result), flush=True)
        fitted = [r for r in results if r is not None]
        selected[station] = _select(fitted, station)
        per_seed[station] = [_seed_bar(fitted, i) for i in range(len(args.seeds))]
    return _verdict(selected, per_seed)


def _prepare(station: str, defaults: TrainSettings) -> PreparedData:
    data = REPO / "data"
    train_raw = read_raw_csv((data / f"{station}.csv").read_bytes(), "train")
    test_raw = read_raw_csv((data / f"{station}_test.csv").read_bytes(), "test")
    options = PreprocessOptions(input_seq_len=defaults.INPUT_SEQ_LEN, output_seq_len=defaults.OUTPUT_SEQ_LEN)
    return prepare_splits(train_raw, test_raw, options)


def _evaluate(
    station: str,
    prepared: PreparedData,
    model: str,
    seeds: list[int],
    overrides: Mapping[str, str],
    cpu: bool,
) -> Result | None:
    """Fit and score `model` once per seed (once for Prophet); None when it cannot be fitted."""
    runs: list[tuple[dict[str, float], float]] = []
    for seed in seeds if model in ("GRU", "LSTM") else seeds[:1]:
        trainer: ModelTrainer
        if model in ("GRU", "LSTM"):
            settings = _recurrent_settings(model, seed, overrides, cpu)
            trainer = RecurrentTrainer(settings)
            fraction, input_len, output_len = (
                settings.VALIDATION_FRACTION,
                settings.INPUT_SEQ_LEN,
                settings.OUTPUT_SEQ_LEN,
            )
        else:
            prophet = ProphetSettings.model_validate(UNUSED_ENDPOINTS)
            trainer = ProphetTrainer(prophet)
            fraction, input_len, output_len = (
                prophet.VALIDATION_FRACTION,
                prophet.INPUT_SEQ_LEN,
                prophet.OUTPUT_SEQ_LEN,
            )
        cut = validation_start(len(prepared.train), fraction, output_len)
        step = np.timedelta64(int(STEP.total_seconds()), "s")
        started = time.monotonic()
        try:
            outcome = trainer.fit(
                prepared.train, cut, input_len, threading.Event(), scaler=prepared.scaler, step=step
            )
        except Exception as exc:  # the bench reports any trainer's failure and goes on
            print(f"{station:9} {model:7} not fitted: {type(exc).__name__}: {exc}", flush=True)
            return None
        seconds = time.monotonic() - started
        metrics, _ = score_forecast(
            outcome.forecast,
            Series.from_scaled(prepared.train, prepared.scaler),
            Series.from_scaled(prepared.test, prepared.scaler),
            validation_start=cut,
            input_len=input_len,
            scaler=prepared.scaler,
        )
        runs.append(({name: metrics[name] for name in FIGURES}, seconds))
    figures = {name: float(np.mean([run[0][name] for run in runs])) for name in FIGURES}
    seconds = float(np.mean([run[1] for run in runs]))
    return Result(model, len(runs), figures, seconds, tuple(run[0] for run in runs))


def _candidates(results: list[Result], figures: list[dict[str, float]], station: str) -> list[Candidate]:
    return [
        Candidate(
            ModelType(r.model), run_id=f"{r.model}-{station}", experiment="bench", start_time=i, metrics=f
        )
        for i, (r, f) in enumerate(zip(results, figures, strict=True))
    ]


def _select(results: list[Result], station: str) -> Result | None:
    """The evaluator's rule on the seed-mean figures: best validation score among those passing the gate."""
    selection = select(_candidates(results, [r.figures for r in results], station))
    if selection.winner is None:
        print(f"{station:9} REFUSED: {selection.reason}")
        return None
    winner = next(r for r in results if r.model == selection.winner.model_type.value)
    print(f"{station:9} selected {winner.model} (validation score {score(winner.figures):.5f})")
    return winner


def _seed_bar(results: list[Result], index: int) -> bool:
    """Whether the bar holds for the pipeline run of one seed: each model's run of that seed
    (Prophet's one run) competes, as in a single `flts run`."""
    figures = [r.per_run[min(index, len(r.per_run) - 1)] for r in results]
    selection = select(_candidates(results, figures, "seed"))
    if selection.winner is None:
        return False
    won = figures[[r.model for r in results].index(selection.winner.model_type.value)]
    return bool(
        won["test_rmse_down"] < won["baseline_test_rmse_down"]
        and won["test_rmse_up"] < won["baseline_test_rmse_up"]
    )


def _verdict(selected: dict[str, Result | None], per_seed: dict[str, list[bool]]) -> int:
    print()
    print(
        f"{'station':9} {'selected':8} | {'test down':>9} {'persist':>8} {'federated':>9} | "
        f"{'test up':>9} {'persist':>8} {'federated':>9} | bar  goal"
    )
    bar_missed, goal_missed = [], []
    for station, result in selected.items():
        fed_down, fed_up = FEDERATED[station]
        if result is None:
            print(
                f"{station:9} {'refused':8} | {'':>9} {'':>8} {fed_down / 1e6:8.2f}M | {'':>9} {'':>8} "
                f"{fed_up / 1e6:8.3f}M | no   no"
            )
            bar_missed.append(f"{station}: refused")
            goal_missed.append(f"{station}: refused")
            continue
        f = result.figures
        down, up = f["test_rmse_down"], f["test_rmse_up"]
        base_down, base_up = f["baseline_test_rmse_down"], f["baseline_test_rmse_up"]
        bar = down < base_down and up < base_up
        goal = bar and down < fed_down and up < fed_up
        if not bar:
            bar_missed.append(
                f"{station}: {result.model} down {down / base_down:.3f}, up {up / base_up:.3f} of persistence"
            )
        if not goal:
            goal_missed.append(
                f"{station}: {result.model} down {down / fed_down:.3f}, up {up / fed_up:.3f} of federated"
            )
        print(
            f"{station:9} {result.model:8} | {_millions(down, base_down, fed_down, 2)} | "
            f"{_millions(up, base_up, fed_up, 3)} | {'yes' if bar else 'no':4} {'yes' if goal else 'no'}"
        )
    print(
        "per seed (one seed's GRU and LSTM against Prophet, as one pipeline run; bar held): "
        + ", ".join(f"{station} {sum(held)}/{len(held)}" for station, held in per_seed.items())
    )
    bar_text = "BAR HOLDS" if not bar_missed else "BAR MISSED (" + "; ".join(bar_missed) + ")"
    goal_text = "GOAL MET" if not goal_missed else "GOAL MISSED (" + "; ".join(goal_missed) + ")"
    print(
        f"{bar_text}: selected model beats persistence on test down and up at every station; "
        f"{goal_text}: it beats the federated LSTM on all six figures"
    )
    return 0 if not bar_missed else 1


def _header() -> str:
    columns = f"{'persist':>8} {'federated':>9}"
    return (
        f"{'station':9} {'model':7} {'runs':>4} | {'val down':>8} {'val up':>7} {'val mean':>8} | "
        f"{'test down':>9} {columns} | {'test up':>9} {columns} | {'train s':>7}"
    )


def _line(station: str, result: Result) -> str:
    """Validation figures as ratios to persistence (below 1 passes the gate); test in original units."""
    f = result.figures
    fed_down, fed_up = FEDERATED[station]
    val_down = f["val_rmse_down"] / f["baseline_val_rmse_down"]
    val_up = f["val_rmse_up"] / f["baseline_val_rmse_up"]
    val_mean = f["val_rmse"] / f["baseline_val_rmse"]
    return (
        f"{station:9} {result.model:7} {result.runs:4d} | {val_down:8.3f} {val_up:7.3f} {val_mean:8.3f} | "
        f"{_millions(f['test_rmse_down'], f['baseline_test_rmse_down'], fed_down, 2)} | "
        f"{_millions(f['test_rmse_up'], f['baseline_test_rmse_up'], fed_up, 3)} | {result.seconds:7.1f}"
    )


def _millions(model: float, persistence: float, federated: float, digits: int) -> str:
    return f"{model / 1e6:8.{digits}f}M {persistence / 1e6:7.{digits}f}M {federated / 1e6:8.{digits}f}M"


def _overrides(pairs: list[str]) -> dict[str, str]:
    """FIELD=VALUE pairs -> hyperparameter values by field name (any case), validated later."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.upper()
        if not sep or name not in RecurrentHyperparameters.model_fields or name in ("MODEL_TYPE", "SEED"):
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with a RecurrentHyperparameters field")
        out[name] = value
    return out


def _recurrent_settings(model: str, seed: int, overrides: Mapping[str, str], cpu: bool) -> TrainSettings:
    try:
        return TrainSettings.model_validate(
            {**UNUSED_ENDPOINTS, **overrides, "MODEL_TYPE": model, "SEED": seed, "USE_CUDA": not cpu}
        )
    except ValidationError as exc:
        raise SystemExit(f"--set: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
