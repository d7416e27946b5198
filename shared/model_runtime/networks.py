"""GRU and LSTM forecasters, and their safe on-disk form (JSON spec + weights-only state dict).

The processed data are MinMax-scaled on the train split, so one traffic burst in the train rows
sets a KPI's range: at LesCorts an `up` burst of 1.06e9 squeezes the test split's whole `up`
series (peak 2.95e6) into 0.3 % of the range. A network that reads and predicts MinMax units
barely sees such a KPI, and an output error too small to move its loss is millions of bytes.
So the network carries its own per-KPI normalisation, in buffers fitted on the training rows and
saved in the state dict (inference loads them with the weights and needs nothing else):

- inputs are centred and scaled per KPI (training median and interquartile range), so a burst
  does not set the scale of the rows around it; `input_clip` can clamp them as well (off by
  default: bench/tune.py found no gain on the stations' data, docs/ACCURACY.md);
- the forecast is the change over the last observed value, in units of the KPI's typical
  one-step change (training median of |change|) times the window's own volatility (its mean
  |change| in those units, plus a floor): a KPI that has turned quiet is forecast in small moves
  even though its training range was huge, and every KPI's error weighs alike in the loss;
- beside the recurrent head, a per-KPI linear autoregression over the window's normalised
  changes and last level takes the short-term dynamics directly; the recurrent cell sees the
  normalised levels and changes.

Head and autoregression start at zero, so the untrained network is persistence, the baseline it
must beat. Input and output stay in MinMax units: the runtime (forecasting.py) is unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from shared.data import FEATURE_COLUMNS, KPI_COLUMNS

RECURRENT_TYPES = ("GRU", "LSTM")
SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "state_dict.pt"
# Least window volatility, in typical one-step changes: a window without any change still gets
# forecasts of a tenth of a typical move rather than none, and the local units stay finite.
VOLATILITY_FLOOR = 0.1


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the architecture; weights and normalisation travel separately."""

    model_type: str
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    input_seq_len: int = 10
    output_seq_len: int = 1
    n_features: int = len(FEATURE_COLUMNS)
    n_targets: int = len(KPI_COLUMNS)
    # Largest |normalised level or change| the network reads; 0 = no limit.
    input_clip: float = 0.0

    def __post_init__(self) -> None:
        if self.model_type not in RECURRENT_TYPES:
            raise ValueError(f"model_type must be one of {RECURRENT_TYPES}, got {self.model_type}")
        if self.n_targets > self.n_features:
            raise ValueError("targets must be the leading feature columns")
        if self.input_clip < 0:
            raise ValueError("input_clip must be >= 0")


class RecurrentNetwork(nn.Module):
    """A recurrent encoder plus a per-KPI autoregression, forecasting the normalised change.

    `forward` maps MinMax-scaled windows (batch, input_seq_len, n_features) to MinMax-scaled
    KPIs (batch, output_seq_len, n_targets); `change` is the same forecast as the change over
    the last observed KPIs in units of `change_scale`, which is what training fits. The
    normalisation buffers are the identity until `set_normalisation`.
    """

    input_centre: torch.Tensor
    input_scale: torch.Tensor
    change_scale: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        rnn_cls = nn.GRU if spec.model_type == "GRU" else nn.LSTM
        self.rnn = rnn_cls(
            input_size=spec.n_features + spec.n_targets,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            dropout=spec.dropout if spec.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(spec.hidden_size, spec.output_seq_len * spec.n_targets)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # Per output step and KPI: weights of the window's input_seq_len - 1 changes and its last level.
        self.ar_weight = nn.Parameter(torch.zeros(spec.output_seq_len, spec.n_targets, spec.input_seq_len))
        self.register_buffer("input_centre", torch.zeros(spec.n_features))
        self.register_buffer("input_scale", torch.ones(spec.n_features))
        self.register_buffer("change_scale", torch.ones(spec.n_targets))

    @torch.no_grad()
    def set_normalisation(
        self, input_centre: torch.Tensor, input_scale: torch.Tensor, change_scale: torch.Tensor
    ) -> None:
        """Fix the per-feature input centre/scale and the per-KPI change scale (all > 0 scales)."""
        if not (torch.all(input_scale > 0) and torch.all(change_scale > 0)):
            raise ValueError("normalisation scales must be positive")
        self.input_centre.copy_(input_centre)
        self.input_scale.copy_(input_scale)
        self.change_scale.copy_(change_scale)

    def change(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, input_seq_len, n_features) MinMax -> (batch, output_seq_len, n_targets) change
        over the last observed KPIs, in units of each KPI's typical one-step change."""
        n_targets = self.spec.n_targets
        clip = self.spec.input_clip or math.inf
        levels = ((x - self.input_centre) / self.input_scale).clamp(-clip, clip)
        changes = (x[:, 1:, :n_targets] - x[:, :-1, :n_targets]) / self.change_scale
        # max(1, ...): a one-row window has no change and the floor alone.
        volatility = VOLATILITY_FLOOR + changes.abs().sum(dim=1, keepdim=True) / max(1, changes.shape[1])
        steps = (changes / volatility).clamp(-clip, clip)
        # The cell reads each row's levels and the change into it (none before the first row).
        encoded, _ = self.rnn(torch.cat([levels, nn.functional.pad(steps, (0, 0, 1, 0))], dim=2))
        recurrent: torch.Tensor = self.head(encoded[:, -1, :]).view(-1, self.spec.output_seq_len, n_targets)
        lags = torch.cat([steps, levels[:, -1:, :n_targets]], dim=1)  # (batch, input_seq_len, n_targets)
        autoregressive = torch.einsum("blk,okl->bok", lags, self.ar_weight)
        return (recurrent + autoregressive) * volatility

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, input_seq_len, n_features) -> (batch, output_seq_len, n_targets), MinMax units."""
        last = x[:, -1:, : self.spec.n_targets]
        return last + self.change(x) * self.change_scale


def build_model(spec: ModelSpec) -> RecurrentNetwork:
    return RecurrentNetwork(spec)


def save_model(model: RecurrentNetwork, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC_FILE).write_text(json.dumps(asdict(model.spec), indent=2, sort_keys=True))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILE)


def load_model(directory: Path) -> RecurrentNetwork:
    """Rebuild from the JSON spec and load weights with `weights_only=True` (no pickled code)."""
    spec = ModelSpec(**json.loads((Path(directory) / SPEC_FILE).read_text()))
    model = build_model(spec)
    state = torch.load(Path(directory) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model
