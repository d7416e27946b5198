"""GRU/LSTM forecasters: shapes, the persistence start, the per-KPI units, and the pickle-free save/load."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shared.model_runtime.networks import (
    SPEC_FILE,
    VOLATILITY_FLOOR,
    WEIGHTS_FILE,
    ModelSpec,
    RecurrentNetwork,
    build_model,
    load_model,
    save_model,
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny models gain nothing from more threads on a shared machine; the process-wide setting
    # is restored so later tests in the session are unaffected.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("model_type", ["GRU", "LSTM"])
@pytest.mark.parametrize("output_seq_len", [1, 3])
def test_forward_maps_windows_to_horizon_by_kpis(model_type: str, output_seq_len: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(model_type=model_type, hidden_size=8, output_seq_len=output_seq_len))
    x = torch.rand(5, 10, 17)

    y = model(x)

    assert y.shape == (5, output_seq_len, 11)
    assert torch.isfinite(y).all()


def test_model_uses_the_requested_recurrent_cell() -> None:
    assert isinstance(build_model(ModelSpec(model_type="GRU", hidden_size=4)).rnn, torch.nn.GRU)
    assert isinstance(build_model(ModelSpec(model_type="LSTM", hidden_size=4)).rnn, torch.nn.LSTM)


def normalised(model: RecurrentNetwork, seed: int = 0) -> RecurrentNetwork:
    """`model` with arbitrary (non-identity) normalisation buffers, as training would set them."""
    generator = torch.Generator().manual_seed(seed)
    n_features, n_targets = model.spec.n_features, model.spec.n_targets
    model.set_normalisation(
        torch.rand(n_features, generator=generator),
        0.1 + torch.rand(n_features, generator=generator),
        0.001 + 0.01 * torch.rand(n_targets, generator=generator),
    )
    return model


@pytest.mark.parametrize("model_type", ["GRU", "LSTM"])
def test_an_untrained_network_forecasts_persistence_of_the_last_observed_kpis(model_type: str) -> None:
    torch.manual_seed(0)
    model = normalised(build_model(ModelSpec(model_type=model_type, hidden_size=8, output_seq_len=2)))
    x = torch.rand(4, 10, 17)

    y = model(x)

    torch.testing.assert_close(y, x[:, -1:, :11].expand(-1, 2, -1))


def test_the_forecast_change_is_in_units_of_each_kpis_change_scale() -> None:
    model = build_model(ModelSpec(model_type="GRU", hidden_size=4))
    change_scale = torch.linspace(1e-4, 1e-1, 11)
    model.set_normalisation(torch.zeros(17), torch.ones(17), change_scale)
    with torch.no_grad():
        model.head.bias.fill_(1.0)  # one unit of change, times the window's volatility
    flat = torch.full((1, 10, 17), 0.5)  # no change in the window: volatility is its floor

    change = model(flat)[0, 0] - 0.5

    torch.testing.assert_close(change, VOLATILITY_FLOOR * change_scale)


def test_a_level_far_outside_the_training_range_reads_as_the_clamp() -> None:
    torch.manual_seed(3)
    model = build_model(ModelSpec(model_type="GRU", hidden_size=8, input_clip=5.0))
    with torch.no_grad():
        model.head.weight.normal_()
    high = torch.full((1, 10, 17), 0.5)
    higher = high.clone()
    high[..., 1], higher[..., 1] = 10.0, 1e6  # both beyond centre 0 + 5 scales: the clamp

    torch.testing.assert_close(model.change(high), model.change(higher))


def test_normalisation_must_have_positive_scales() -> None:
    model = build_model(ModelSpec(model_type="GRU", hidden_size=4))
    with pytest.raises(ValueError, match="positive"):
        model.set_normalisation(torch.zeros(17), torch.ones(17), torch.zeros(11))


@pytest.mark.parametrize(
    "changes",
    [
        {"model_type": "PROPHET"},
        {"model_type": "GRU", "n_features": 5, "n_targets": 11},
    ],
)
def test_spec_refuses_unknown_types_and_more_targets_than_features(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ModelSpec(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("model_type", ["GRU", "LSTM"])
def test_saved_model_reloads_with_identical_predictions(model_type: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    spec = ModelSpec(model_type=model_type, hidden_size=6, num_layers=2, dropout=0.1, output_seq_len=2)
    model = normalised(build_model(spec)).eval()
    with torch.no_grad():  # trained-looking weights: the untrained network is plain persistence
        model.head.weight.normal_()
        model.ar_weight.normal_()
    x = torch.rand(3, 10, 17)

    save_model(model, tmp_path / model_type)
    loaded = load_model(tmp_path / model_type)

    assert sorted(p.name for p in (tmp_path / model_type).iterdir()) == sorted([SPEC_FILE, WEIGHTS_FILE])
    assert json.loads((tmp_path / model_type / SPEC_FILE).read_text())["model_type"] == model_type
    assert isinstance(loaded, RecurrentNetwork)
    assert loaded.spec == spec
    assert not loaded.training, "a loaded model is ready for inference (dropout off)"
    for name in ("input_centre", "input_scale", "change_scale"):
        torch.testing.assert_close(getattr(loaded, name), getattr(model, name), rtol=0, atol=0)
    with torch.no_grad():
        assert not torch.allclose(model(x), x[:, -1:, :11].expand(-1, 2, -1))
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


class Payload:
    """Stands in for code an attacker pickled into a weights file."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickled code ran",))


def test_load_refuses_a_weights_file_that_carries_pickled_code(tmp_path: Path) -> None:
    directory = tmp_path / "GRU"
    save_model(build_model(ModelSpec(model_type="GRU", hidden_size=4)), directory)
    torch.save({"rnn.weight_ih_l0": Payload()}, directory / WEIGHTS_FILE)

    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_model(directory)
