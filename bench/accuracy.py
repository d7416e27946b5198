"""Accuracy bench: GRU and LSTM on the full PobleSec split against persistence.

Runs the pipeline's own code path without Kafka or MLflow: preprocess_container.preprocessing.prepare_splits
(the preprocess job's cleaning, scaler and time features), train_container.training.train_recurrent
with the trainer's default hyperparameters (RecurrentHyperparameters, which TrainSettings inherits),
and shared.accuracy on PobleSec_test rows INPUT_SEQ_LEN..N-1. Prints, per model and seed, RMSE on
`down` and `up` in original units, the persistence RMSE on the same rows, the relative difference
and the training seconds; then the mean of the seeds and whether the bar is met
(>= 10 % better than persistence on down, >= 14 % on up, < 120 s of training each).

    .venv/bin/python bench/accuracy.py [--seeds 1 2 3] [--models GRU LSTM] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from preprocess_container.preprocessing import PreprocessOptions, prepare_splits, read_raw_csv  # noqa: E402
from shared.accuracy import evaluation_rows, forecast_metrics, relative_improvement  # noqa: E402
from shared.data import KPI_COLUMNS  # noqa: E402
from train_container.settings import RecurrentHyperparameters  # noqa: E402
from train_container.training import one_step_predictions, pick_device, train_recurrent  # noqa: E402

BAR = {"down": 0.10, "up": 0.14}
MAX_TRAIN_SECONDS = 120.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="PobleSec")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--models", nargs="+", default=["GRU", "LSTM"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the trainer's default)")
    parser.add_argument("--cpu", action="store_true", help="ignore a GPU even if one is present")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="override default hyperparameters, e.g. --set BATCH_SIZE=512 PATIENCE=5 (to try candidates)",
    )
    args = parser.parse_args()
    overrides = _overrides(args.set)
    torch.set_num_threads(args.threads)
    device = pick_device(prefer_cuda=not args.cpu)

    data_dir = REPO / "data"
    train_raw = read_raw_csv((data_dir / f"{args.dataset}.csv").read_bytes(), "train")
    test_raw = read_raw_csv((data_dir / f"{args.dataset}_test.csv").read_bytes(), "test")
    defaults = _hyperparameters(overrides, "GRU")
    prepared = prepare_splits(
        train_raw,
        test_raw,
        PreprocessOptions(input_seq_len=defaults.INPUT_SEQ_LEN, output_seq_len=defaults.OUTPUT_SEQ_LEN),
    )
    test_kpis = prepared.test.loc[:, list(KPI_COLUMNS)].to_numpy(dtype=np.float64)
    actual, baseline = evaluation_rows(test_kpis, defaults.INPUT_SEQ_LEN)
    n_test = len(prepared.test)
    print(
        f"{args.dataset}: train {len(prepared.train)} rows, test {n_test} rows; scoring rows "
        f"{defaults.INPUT_SEQ_LEN}..{n_test - 1} ({len(actual)}), one step ahead; device {device}, "
        f"{args.threads} CPU thread(s)"
    )
    layers = ", ".join(f"{m} {_hyperparameters(overrides, m).NUM_LAYERS}" for m in args.models)
    print(
        f"defaults: {layers} layer(s) of {defaults.HIDDEN_SIZE}, loss {defaults.LOSS} "
        f"(delta {defaults.HUBER_DELTA}), lr {defaults.LEARNING_RATE} ({defaults.LR_SCHEDULE}), "
        f"batch {defaults.BATCH_SIZE}, "
        f"epochs <= {defaults.EPOCHS}, patience {defaults.PATIENCE}, cap {defaults.MAX_TRAIN_SECONDS:.0f}s"
    )
    header = f"{'model':5} {'seed':>4} {'down RMSE':>10} {'persist':>9} {'rel':>7} {'up RMSE':>9} {'persist':>9} {'rel':>7} {'epochs':>6} {'best':>4} {'train s':>7}"  # noqa: E501
    print(header)
    failures: list[str] = []
    for model_type in args.models:
        rows = []
        for seed in args.seeds:
            config = _hyperparameters({**overrides, "SEED": str(seed)}, model_type)
            started = time.monotonic()
            result = train_recurrent(prepared.train, config, device=device)
            seconds = time.monotonic() - started
            predictions = one_step_predictions(result.model, prepared.test)
            metrics = forecast_metrics(predictions, actual, baseline, prepared.scaler)
            row = {
                "seconds": seconds,
                **{f"{k}_model": metrics[f"test_rmse_{k}"] for k in BAR},
                **{f"{k}_base": metrics[f"baseline_test_rmse_{k}"] for k in BAR},
            }
            rows.append(row)
            print(_line(model_type, str(seed), row, len(result.history), result.best_epoch), flush=True)
        mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
        print(_line(model_type, "mean", mean, None, None))
        for kpi, bar in BAR.items():
            gain = relative_improvement(mean[f"{kpi}_model"], mean[f"{kpi}_base"])
            if gain < bar:
                failures.append(f"{model_type} {kpi}: {gain:.1%} better than persistence, bar {bar:.0%}")
        slowest = max(r["seconds"] for r in rows)
        if slowest >= MAX_TRAIN_SECONDS:
            failures.append(f"{model_type}: slowest training {slowest:.0f}s, bar {MAX_TRAIN_SECONDS:.0f}s")
    if failures:
        print("BAR MISSED: " + "; ".join(failures))
        return 1
    print("BAR MET: every model beats persistence by >= 10 % on down and >= 14 % on up in < 120 s")
    return 0


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


def _hyperparameters(overrides: dict[str, str], model_type: str) -> RecurrentHyperparameters:
    try:
        return RecurrentHyperparameters.model_validate({**overrides, "MODEL_TYPE": model_type})
    except ValidationError as exc:
        raise SystemExit(f"--set: {exc}") from None


def _line(model: str, seed: str, row: dict[str, float], epochs: int | None, best: int | None) -> str:
    parts = [f"{model:5} {seed:>4}"]
    for kpi in BAR:
        model_rmse, base_rmse = row[f"{kpi}_model"], row[f"{kpi}_base"]
        gain = relative_improvement(model_rmse, base_rmse)
        parts.append(f"{model_rmse / 1e6:9.2f}M {base_rmse / 1e6:8.2f}M {-gain:+7.1%}")
    epochs_text = "" if epochs is None else str(epochs)
    best_text = "" if best is None else str(best)
    parts.append(f"{epochs_text:>6} {best_text:>4} {row['seconds']:7.1f}")
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
