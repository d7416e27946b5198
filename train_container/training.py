"""Training of the recurrent forecasters (GRU, LSTM) in plain PyTorch.

The service (train_container.trainer) and the benches (bench/tune.py, bench/accuracy.py) call the
same `train_recurrent`, so the benches measure what the pipeline ships. The train split is cut at
`validation_start` (shared.data.validation_start, the same rows for every trainer): the network
is fitted on the rows before it, its per-KPI normalisation too, and early stopping watches the
rows from it on (their input windows may reach back before it), keeping the epoch whose
forecasts beat persistence there by the most; the test split is never seen.

The loss is taken on the change over the last observed value in the network's per-KPI units
(shared.model_runtime.networks says why), so one burst in a KPI's training rows cannot make
that KPI invisible to the loss. The defaults of `RecurrentHyperparameters` were chosen by
bench/tune.py on the train splits only (docs/ACCURACY.md).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, make_windows
from shared.model_runtime.networks import ModelSpec, RecurrentNetwork, build_model
from train_container.settings import RecurrentHyperparameters

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; this configuration cannot produce a model."""


class TrainingStopped(RuntimeError):
    """The stop flag was set (SIGTERM) while training; nothing was produced."""


class NotEnoughData(ValueError):
    """The split is too short for the requested windows and validation tail."""


# Gradient-norm clip of every step. Not a setting: on scaled KPIs one norm suits every run; it is
# still logged with the run's params so runs stay comparable if it ever changes.
GRAD_CLIP = 1.0
# A validation loss this many times the first epoch's is beyond anything a working run reaches:
# the run has exploded and its weights are useless.
DIVERGENCE_FACTOR = 1e3


def model_spec(config: RecurrentHyperparameters) -> ModelSpec:
    return ModelSpec(
        model_type=config.MODEL_TYPE,
        hidden_size=config.HIDDEN_SIZE,
        num_layers=config.NUM_LAYERS,
        dropout=config.DROPOUT,
        input_seq_len=config.INPUT_SEQ_LEN,
        output_seq_len=config.OUTPUT_SEQ_LEN,
        input_clip=config.INPUT_CLIP,
    )


@dataclass(frozen=True)
class EpochLoss:
    epoch: int
    train_loss: float
    val_loss: float
    seconds: float
    learning_rate: float = 0.0  # at the end of the epoch
    val_skill: float = math.inf  # mean over KPIs of validation RMSE / persistence RMSE


@dataclass
class TrainResult:
    model: RecurrentNetwork
    history: list[EpochLoss] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf  # the validation loss of the best epoch
    best_val_skill: float = math.inf  # what picks the best epoch (EpochLoss.val_skill)
    seconds: float = 0.0
    stop_reason: str = ""
    device: str = "cpu"


def pick_device(prefer_cuda: bool = True) -> torch.device:
    """CUDA when present (and wanted), CPU otherwise."""
    if prefer_cuda and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def frame_arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 17), KPI targets (N, 11)) as float32, columns in contract order."""
    missing = [c for c in FEATURE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"processed frame lacks columns {missing}")
    features = frame.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype=np.float32)
    if not np.all(np.isfinite(features)):
        raise ValueError("processed frame contains NaN or infinite values")
    return features, features[:, : len(KPI_COLUMNS)].copy()


def split_windows(
    features: np.ndarray, targets: np.ndarray, validation_start: int, input_len: int, output_len: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Windows for training and for the validation rows [validation_start, N) of the train split.

    The cut is on rows: validation windows predict only rows at or after the cut, training
    windows only rows before it, so no validation target is ever a training target. The
    validation inputs may reach back before the cut, as they would at inference time.
    """
    rows = len(features)
    if not input_len <= validation_start < rows:
        raise NotEnoughData(
            f"validation start {validation_start} must leave {input_len} input rows before it "
            f"and at least one of the {rows} rows after it"
        )
    train_x, train_y = make_windows(
        features[:validation_start], targets[:validation_start], input_len, output_len
    )
    start = validation_start - input_len
    val_x, val_y = make_windows(features[start:], targets[start:], input_len, output_len)
    if len(train_x) < 1 or len(val_x) < 1:
        raise NotEnoughData(
            f"{rows} rows give {len(train_x)} training and {len(val_x)} validation windows "
            f"(input {input_len}, output {output_len}, validation from row {validation_start})"
        )
    return (train_x, train_y), (val_x, val_y)


def fit_normalisation(
    features: np.ndarray, n_targets: int, scaling: Literal["robust", "minmax"]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input centre, input scale, change scale) of RecurrentNetwork from the training rows.

    robust: each KPI centred on its median and scaled by its interquartile range, its changes
    scaled by the median absolute one-step change, so every KPI's typical move is one unit
    whatever share of its MinMax range a burst took. minmax: identity, the MinMax units as they
    are. Time features are already within [-1, 1] and keep their values either way.
    """
    n_features = features.shape[1]
    centre = np.zeros(n_features)
    scale = np.ones(n_features)
    change = np.ones(n_targets)
    if scaling == "robust":
        kpis = features[:, :n_targets].astype(np.float64)
        q25, q50, q75 = np.percentile(kpis, [25, 50, 75], axis=0)
        centre[:n_targets] = q50
        scale[:n_targets] = _positive(q75 - q25, kpis.max(axis=0) - kpis.min(axis=0))
        steps = np.abs(np.diff(kpis, axis=0))
        # The median, not the mean: LesCorts' `up` bursts alone make its mean |change| 13 times
        # its median, which would again shrink the quiet majority of its rows into nothing.
        change = _positive(np.median(steps, axis=0), _positive(steps.mean(axis=0), scale[:n_targets]))
    return (
        torch.tensor(centre, dtype=torch.float32),
        torch.tensor(scale, dtype=torch.float32),
        torch.tensor(change, dtype=torch.float32),
    )


def _positive(values: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """`values`, with `fallback` where a KPI is (nearly) constant, and 1 where that is too."""
    tiny = 1e-6
    out = np.where(values > tiny, values, fallback)
    return np.where(out > tiny, out, 1.0)


def _loss_fn(name: Literal["mse", "huber", "mae"], huber_delta: float) -> nn.Module:
    if name == "mse":
        return nn.MSELoss()
    if name == "huber":
        # delta is in scaled units: errors beyond delta of the train range count linearly, so
        # the rare traffic bursts persistence cannot foresee do not dominate the gradient.
        return nn.HuberLoss(delta=huber_delta)
    return nn.L1Loss()


def _scheduler(
    optimizer: torch.optim.Optimizer, config: RecurrentHyperparameters, batches_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.ReduceLROnPlateau | None, torch.optim.lr_scheduler.OneCycleLR | None]:
    """(per-epoch plateau scheduler, per-batch one-cycle scheduler); exactly one is set."""
    if config.LR_SCHEDULE == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(1, config.PATIENCE // 3)
        )
        return plateau, None
    cycle = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.LEARNING_RATE,
        # OneCycleLR divides by (pct_start * total_steps - 1): at least 8 steps keep that
        # positive for tiny runs (tests, sampled data), which then simply end before the anneal does.
        total_steps=max(8, config.EPOCHS * batches_per_epoch),
        pct_start=0.25,
    )
    return None, cycle


@torch.no_grad()
def _validate(
    model: RecurrentNetwork, x: torch.Tensor, y: torch.Tensor, loss: nn.Module, batch: int
) -> tuple[float, float]:
    """(mean loss, skill) over validation windows; y is the normalised change.

    skill is the mean over KPIs of the model's RMSE over persistence's on the same rows (below 1
    beats persistence): the evaluator's gate asks exactly that of `down`, `up` and the KPI mean,
    and as a ratio per KPI it weighs every KPI alike whatever its scale.
    """
    model.eval()
    total = 0.0
    squared = torch.zeros(model.spec.n_targets, dtype=torch.float64, device=x.device)
    for start in range(0, len(x), batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        change = model.change(xb)
        total += float(loss(change, yb)) * len(xb)
        squared += ((change - yb) ** 2).sum(dim=(0, 1), dtype=torch.float64)
    baseline = (y.double() ** 2).sum(dim=(0, 1)).clamp_min(1e-12)
    return total / len(x), float(torch.sqrt(squared / baseline).mean())


def _normalised_change(model: RecurrentNetwork, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Targets as the network's `change` expresses them: y minus the last input KPIs, per KPI scale."""
    return (y - x[:, -1:, : model.spec.n_targets]) / model.change_scale


def train_recurrent(
    train_frame: pd.DataFrame,
    config: RecurrentHyperparameters,
    *,
    validation_start: int,
    stop: threading.Event | None = None,
    device: torch.device | None = None,
    on_epoch: Callable[[EpochLoss], None] | None = None,
    divergence_factor: float = DIVERGENCE_FACTOR,
) -> TrainResult:
    """Train a GRU/LSTM on rows before `validation_start`, early-stopping on the rows from it on.

    The normalisation is fitted on the rows before `validation_start`, and the loss is taken on
    the normalised change (RecurrentNetwork), so every KPI counts. Stops at EPOCHS, after
    PATIENCE epochs without validation improvement, or when MAX_TRAIN_SECONDS of training have
    passed; the weights of the best epoch are restored. Raises TrainingStopped when `stop` is set
    (checked between batches), TrainingDiverged on a non-finite loss or a validation loss above
    `divergence_factor` times the first epoch's, NotEnoughData when either side of the cut is
    too short for one window.
    """
    device = device or pick_device()
    torch.manual_seed(config.SEED)
    np.random.seed(config.SEED)
    features, targets = frame_arrays(train_frame)
    (train_x, train_y), (val_x, val_y) = split_windows(
        features, targets, validation_start, config.INPUT_SEQ_LEN, config.OUTPUT_SEQ_LEN
    )
    model = build_model(model_spec(config))
    model.set_normalisation(
        *fit_normalisation(features[:validation_start], model.spec.n_targets, config.SCALING)
    )
    model = model.to(device)
    x = torch.from_numpy(train_x).to(device)
    vx = torch.from_numpy(val_x).to(device)
    with torch.no_grad():
        y = _normalised_change(model, x, torch.from_numpy(train_y).to(device))
        vy = _normalised_change(model, vx, torch.from_numpy(val_y).to(device))

    optimizer = torch.optim.Adam(model.parameters(), lr=config.LEARNING_RATE)
    batches_per_epoch = math.ceil(len(x) / config.BATCH_SIZE)
    plateau, cycle = _scheduler(optimizer, config, batches_per_epoch)
    loss_fn = _loss_fn(config.LOSS, config.HUBER_DELTA)
    generator = torch.Generator(device="cpu").manual_seed(config.SEED)
    result = TrainResult(model=model, device=str(device))
    best_state: dict[str, torch.Tensor] | None = None
    first_val: float | None = None
    stale = 0
    started = time.monotonic()
    eval_batch = max(config.BATCH_SIZE, 2048)

    for epoch in range(1, config.EPOCHS + 1):
        epoch_start = time.monotonic()
        model.train()
        order = torch.randperm(len(x), generator=generator).to(device)
        running, seen = 0.0, 0
        for start in range(0, len(x), config.BATCH_SIZE):
            if stop is not None and stop.is_set():
                raise TrainingStopped(f"stop requested during epoch {epoch}")
            index = order[start : start + config.BATCH_SIZE]
            optimizer.zero_grad(set_to_none=True)
            batch_loss = loss_fn(model.change(x[index]), y[index])
            if not torch.isfinite(batch_loss):
                raise TrainingDiverged(f"non-finite training loss in epoch {epoch}")
            batch_loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            if cycle is not None:
                cycle.step()
            running += float(batch_loss.detach()) * len(index)
            seen += len(index)
        val_loss, val_skill = _validate(model, vx, vy, loss_fn, eval_batch)
        if not math.isfinite(val_loss):
            raise TrainingDiverged(f"non-finite validation loss in epoch {epoch}")
        first_val = val_loss if first_val is None else first_val
        if val_loss > divergence_factor * max(first_val, 1e-12):
            raise TrainingDiverged(
                f"validation loss {val_loss:.3g} in epoch {epoch} exploded from {first_val:.3g}"
            )
        record = EpochLoss(
            epoch,
            running / seen,
            val_loss,
            time.monotonic() - epoch_start,
            float(optimizer.param_groups[0]["lr"]),
            val_skill,
        )
        result.history.append(record)
        if plateau is not None:
            plateau.step(val_loss)
        if on_epoch is not None:
            on_epoch(record)
        if val_skill < result.best_val_skill:
            result.best_val_skill, result.best_val_loss = val_skill, val_loss
            result.best_epoch, stale = epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        elapsed = time.monotonic() - started
        if stale >= config.PATIENCE:
            result.stop_reason = f"early stop: no improvement for {stale} epochs"
            break
        # Stop before an epoch that would likely end past the cap, not after it.
        if elapsed + record.seconds > config.MAX_TRAIN_SECONDS:
            result.stop_reason = f"time cap of {config.MAX_TRAIN_SECONDS:.0f}s reached"
            break
    else:
        result.stop_reason = f"reached {config.EPOCHS} epochs"

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.monotonic() - started
    log.info(
        "training finished",
        extra={
            "model_type": config.MODEL_TYPE,
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "best_val_skill": result.best_val_skill,
            "seconds": round(result.seconds, 2),
            "stop_reason": result.stop_reason,
            "device": str(device),
        },
    )
    return result


@torch.no_grad()
def predict_windows(model: RecurrentNetwork, windows: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Model output for (n, input_len, 17) windows -> (n, output_len, 11), on the model's device."""
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    for start in range(0, len(windows), batch):
        xb = torch.from_numpy(np.ascontiguousarray(windows[start : start + batch], dtype=np.float32))
        outputs.append(model(xb.to(device)).cpu().numpy())
    if not outputs:
        return np.empty((0, model.spec.output_seq_len, model.spec.n_targets), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float64)


def one_step_predictions(model: RecurrentNetwork, test_frame: pd.DataFrame) -> np.ndarray:
    """First-step forecasts for test rows input_len..N-1 (the scoring rows), shape (N-input_len, 11)."""
    features, targets = frame_arrays(test_frame)
    windows, _ = make_windows(features, targets, model.spec.input_seq_len, 1)
    return predict_windows(model, windows)[:, 0, :]
