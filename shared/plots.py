"""PNG plots logged with every training run: forecast vs actual (down, up) and the loss curve.

matplotlib runs on the Agg backend: services have no display, and the figures are only files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def plot_forecast(
    timestamps: pd.DatetimeIndex | Sequence[pd.Timestamp],
    actual: np.ndarray,
    predicted: np.ndarray,
    path: Path,
    *,
    columns: Sequence[str] = ("down", "up"),
    all_columns: Sequence[str] | None = None,
    title: str = "",
    baseline: np.ndarray | None = None,
) -> Path:
    """One panel per column in `columns`: actual vs predicted (and optionally persistence).

    `actual`/`predicted` are (rows, len(all_columns)) arrays in the units to show (original
    units in the trainers); `all_columns` names their columns (defaults to `columns`).
    """
    names = list(all_columns) if all_columns is not None else list(columns)
    index = pd.DatetimeIndex(timestamps)
    fig, axes = plt.subplots(len(columns), 1, figsize=(14, 3.2 * len(columns)), sharex=True, squeeze=False)
    for ax, column in zip(axes[:, 0], columns, strict=True):
        i = names.index(column)
        ax.plot(index, actual[:, i], label="actual", color="black", linewidth=0.8)
        if baseline is not None:
            ax.plot(index, baseline[:, i], label="persistence", color="grey", linewidth=0.6, alpha=0.6)
        ax.plot(index, predicted[:, i], label="forecast", color="tab:orange", linewidth=0.8)
        ax.set_ylabel(column)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[0, 0].set_title(title or "forecast vs actual, one step ahead")
    fig.autofmt_xdate()
    return _save(fig, path)


def plot_loss_curve(
    epochs: Sequence[int],
    train_loss: Sequence[float],
    val_loss: Sequence[float] | None,
    path: Path,
    *,
    best_epoch: int | None = None,
    title: str = "",
) -> Path:
    """Train (and validation) loss per epoch on a log scale, marking the restored best epoch."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(list(epochs), list(train_loss), marker="o", markersize=3, label="train")
    if val_loss is not None:
        ax.plot(list(epochs), list(val_loss), marker="o", markersize=3, label="validation")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=0.8, label=f"best epoch {best_epoch}")
    if all(v > 0 for v in list(train_loss) + list(val_loss or [])):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (scaled units)")
    ax.set_title(title or "loss curve")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    # pyplot keeps every open figure alive; a long-running trainer would leak one per run.
    plt.close(fig)
    return path
