"""GRU and LSTM forecasters, and their safe on-disk form (JSON spec + weights-only state dict)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from shared.data import FEATURE_COLUMNS, KPI_COLUMNS

RECURRENT_TYPES = ("GRU", "LSTM")
SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "state_dict.pt"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the architecture; weights travel separately."""

    model_type: str
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    input_seq_len: int = 10
    output_seq_len: int = 1
    n_features: int = len(FEATURE_COLUMNS)
    n_targets: int = len(KPI_COLUMNS)

    def __post_init__(self) -> None:
        if self.model_type not in RECURRENT_TYPES:
            raise ValueError(f"model_type must be one of {RECURRENT_TYPES}, got {self.model_type}")
        if self.n_targets > self.n_features:
            raise ValueError("targets must be the leading feature columns")


class RecurrentNetwork(nn.Module):
    """A recurrent encoder whose head predicts the change from the last observed KPIs.

    Predicting the residual over the last value starts the model at persistence, the baseline
    it must beat, instead of at zero.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        rnn_cls = nn.GRU if spec.model_type == "GRU" else nn.LSTM
        self.rnn = rnn_cls(
            input_size=spec.n_features,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            dropout=spec.dropout if spec.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(spec.hidden_size, spec.output_seq_len * spec.n_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, input_seq_len, n_features) -> (batch, output_seq_len, n_targets)."""
        encoded, _ = self.rnn(x)
        delta: torch.Tensor = self.head(encoded[:, -1, :]).view(
            -1, self.spec.output_seq_len, self.spec.n_targets
        )
        last = x[:, -1:, : self.spec.n_targets]
        return last + delta


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
