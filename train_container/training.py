"""Training and evaluation of the recurrent forecasters (GRU, LSTM) in plain PyTorch.

The service and `bench/accuracy.py` call the same `train_recurrent`, so the bench measures what
the pipeline ships. Early stopping watches a validation tail of the train split (never the test
split); the weights of the best epoch are restored before evaluation.

The hyperparameters are `RecurrentHyperparameters` (train_container.settings). Their defaults are
sized for CPU, where three trainers share 2 cores in the pipeline: a one-cycle learning-rate
schedule over 20 epochs matches the accuracy of 30-50 plateau-scheduled epochs, and a single GRU
layer is as accurate as two at half the cost (bench/accuracy.py).
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
    )


@dataclass(frozen=True)
class EpochLoss:
    epoch: int
    train_loss: float
    val_loss: float
    seconds: float
    learning_rate: float = 0.0  # at the end of the epoch


@dataclass
class TrainResult:
    model: RecurrentNetwork
    history: list[EpochLoss] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
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
    features: np.ndarray, targets: np.ndarray, config: RecurrentHyperparameters
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Windows for training and for the validation tail of the train split.

    The cut is on rows: validation windows predict only rows at or after the cut, training
    windows only rows before it, so no validation target is ever a training target. The
    validation inputs may reach back before the cut, as they would at inference time.
    """
    rows = len(features)
    val_rows = max(config.OUTPUT_SEQ_LEN, round(rows * config.VALIDATION_FRACTION))
    cut = rows - val_rows
    train_x, train_y = make_windows(
        features[:cut], targets[:cut], config.INPUT_SEQ_LEN, config.OUTPUT_SEQ_LEN
    )
    start = cut - config.INPUT_SEQ_LEN
    val_x, val_y = make_windows(
        features[start:], targets[start:], config.INPUT_SEQ_LEN, config.OUTPUT_SEQ_LEN
    )
    if len(train_x) < 1 or len(val_x) < 1:
        raise NotEnoughData(
            f"{rows} rows give {len(train_x)} training and {len(val_x)} validation windows "
            f"(input {config.INPUT_SEQ_LEN}, output {config.OUTPUT_SEQ_LEN}, "
            f"validation fraction {config.VALIDATION_FRACTION})"
        )
    return (train_x, train_y), (val_x, val_y)


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
def _mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: nn.Module, batch: int) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(x), batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        total += float(loss(model(xb), yb)) * len(xb)
    return total / len(x)


def train_recurrent(
    train_frame: pd.DataFrame,
    config: RecurrentHyperparameters,
    *,
    stop: threading.Event | None = None,
    device: torch.device | None = None,
    on_epoch: Callable[[EpochLoss], None] | None = None,
    divergence_factor: float = DIVERGENCE_FACTOR,
) -> TrainResult:
    """Train a GRU/LSTM with early stopping on the train split's tail; restore the best epoch.

    Stops at EPOCHS, after PATIENCE epochs without validation improvement, or when
    MAX_TRAIN_SECONDS of training have passed (the best weights so far are kept). Raises
    TrainingStopped when `stop` is set (checked between batches) and TrainingDiverged on a
    non-finite loss or a validation loss above `divergence_factor` times the first epoch's.
    """
    device = device or pick_device()
    torch.manual_seed(config.SEED)
    np.random.seed(config.SEED)
    features, targets = frame_arrays(train_frame)
    (train_x, train_y), (val_x, val_y) = split_windows(features, targets, config)
    x = torch.from_numpy(train_x).to(device)
    y = torch.from_numpy(train_y).to(device)
    vx = torch.from_numpy(val_x).to(device)
    vy = torch.from_numpy(val_y).to(device)

    model = build_model(model_spec(config)).to(device)
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
            batch_loss = loss_fn(model(x[index]), y[index])
            if not torch.isfinite(batch_loss):
                raise TrainingDiverged(f"non-finite training loss in epoch {epoch}")
            batch_loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            if cycle is not None:
                cycle.step()
            running += float(batch_loss.detach()) * len(index)
            seen += len(index)
        val_loss = _mean_loss(model, vx, vy, loss_fn, eval_batch)
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
        )
        result.history.append(record)
        if plateau is not None:
            plateau.step(val_loss)
        if on_epoch is not None:
            on_epoch(record)
        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch, stale = val_loss, epoch, 0
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
