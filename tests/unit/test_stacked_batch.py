"""Cross-station batching: stacks of stations' models answer every window as that station's own
model does (GRU, LSTM, Prophet; horizons within and beyond one network call), bit for bit
whatever the window is batched with; a swap rebuilds only its own stack and never changes another
station's answers; the micro-batcher makes one call per stack."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from inference_container.batching import MicroBatcher
from inference_container.lifecycle import EMPTY_FLEET, ServingModel
from shared.data import KPI_COLUMNS, MinMaxScaler
from shared.events import ModelType, PromotionPointer
from shared.model_runtime.forecasting import Forecast, Window
from shared.model_runtime.networks import ModelSpec, RecurrentNetwork, build_model
from shared.model_runtime.prophet import ProphetCurves, ProphetForecast, ProphetStack, WindowCorrection
from shared.model_runtime.ranges import KpiRanges
from shared.model_runtime.recurrent import RecurrentForecast, RecurrentStack
from shared.model_runtime.stacking import OneModel, Slot, stack_slots

STEP = np.timedelta64(120, "s")
K = len(KPI_COLUMNS)
# (hidden, layers, output_seq_len): the default shape, and one whose hidden size needs padding
# with two layers and several output steps per call.
SHAPES = [(64, 1, 1), (20, 2, 3)]


def scaler_for(station: int) -> MinMaxScaler:
    """Each station its own scale: windows are in original units, so a wrong member shows."""
    span = np.geomspace(10.0, 2e6, K) * (1.0 + station / 3.0)
    return MinMaxScaler(KPI_COLUMNS, tuple(np.linspace(0.0, 5.0, K)), tuple(float(v) for v in span))


def network(model_type: str, seed: int, hidden: int, layers: int, output_seq_len: int) -> RecurrentNetwork:
    """A network with every parameter and normalisation buffer set away from its neutral start,
    so each part of the forward pass shows in the answer; every other one clips its inputs."""
    torch.manual_seed(seed)
    spec = ModelSpec(
        model_type,
        hidden_size=hidden,
        num_layers=layers,
        output_seq_len=output_seq_len,
        input_clip=2.0 if seed % 2 else 0.0,
    )
    model = build_model(spec)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
        model.set_normalisation(
            torch.rand(17) * 0.5, torch.rand(17) * 0.3 + 0.1, torch.rand(11) * 0.05 + 0.01
        )
    return model.eval()


def recurrent_fleet(
    model_type: str, hidden: int, layers: int, output_seq_len: int
) -> list[RecurrentForecast]:
    return [
        RecurrentForecast(
            network(model_type, seed, hidden, layers, output_seq_len),
            scaler_for(seed),
            10,
            output_seq_len,
            STEP,
        )
        for seed in range(4)
    ]


def curves(seed: int, changepoints: int, frequencies: list[float]) -> ProphetCurves:
    """Fitted-looking curves with their own changepoints and seasonalities (stacks pad both)."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0.0, 1.0, (K, changepoints)), axis=1)
    deltas = rng.normal(0.0, 0.1, (K, changepoints))
    features = 2 * len(frequencies)
    return ProphetCurves(
        columns=KPI_COLUMNS,
        start_ns=np.datetime64("2018-01-20", "ns").astype(np.int64) + rng.integers(0, 10**12, K),
        t_scale_ns=np.full(K, 30 * 86_400e9),
        k=rng.normal(0.0, 0.1, K),
        m=rng.uniform(0.2, 0.8, K),
        changepoints_t=times,
        deltas=deltas,
        offset_changes=-times * deltas,
        flat=np.arange(K) % 4 == 0,
        y_scale=rng.uniform(0.5, 2.0, K),
        floor=np.where(np.arange(K) % 3 == 0, 0.1, 0.0),
        frequencies=np.array(frequencies, dtype=np.float64),
        beta_additive=rng.normal(0.0, 0.1, (features, K)),
        beta_multiplicative=rng.normal(0.0, 0.05, (features, K)),
    )


def prophet_fleet() -> list[ProphetForecast]:
    shapes = [(3, [1.0, 2.0, 3.0, 1 / 7]), (5, [1.0, 2.0, 1 / 7]), (0, []), (25, [1.0, 2.0, 3.0, 4.0, 2 / 7])]
    forecasts = []
    for seed, (changepoints, frequencies) in enumerate(shapes):
        rng = np.random.default_rng(100 + seed)
        weights = rng.normal(0.0, 0.2, (K, 3)) + np.array([0.0, 0.0, 0.8])
        correction = WindowCorrection(weights, rng.uniform(0.5, 1.5, K))
        forecasts.append(
            ProphetForecast(curves(seed, changepoints, frequencies), correction, scaler_for(seed), 10, STEP)
        )
    return forecasts


def windows_for(members: list[int], horizons: list[int], seed: int = 0) -> list[Window]:
    """A window per member in that member's units, 10 to 13 rows, spread over two weeks."""
    rng = np.random.default_rng(seed)
    out = []
    for member, horizon in zip(members, horizons, strict=True):
        rows = int(rng.integers(10, 14))
        start = pd.Timestamp("2018-03-01") + pd.Timedelta(minutes=2 * int(rng.integers(0, 10_000)))
        timestamps = pd.date_range(start, periods=rows, freq="2min").to_numpy()
        span = np.asarray(scaler_for(member).data_range)
        out.append((timestamps, rng.uniform(0.05, 0.95, (rows, K)) * span, horizon))
    return out


def mixed(forecasts: list[Any], count: int = 24) -> tuple[list[int], list[Window]]:
    """`count` windows over every member, horizons 1, 2 and 7 mixed."""
    rng = np.random.default_rng(len(forecasts))
    members = [int(m) for m in rng.integers(0, len(forecasts), count)]
    horizons = [int(h) for h in rng.choice([1, 2, 7], count)]
    return members, windows_for(members, horizons)


@pytest.mark.parametrize("model_type", ["GRU", "LSTM"])
@pytest.mark.parametrize(("hidden", "layers", "output_seq_len"), SHAPES)
def test_a_recurrent_stack_answers_each_window_as_that_stations_own_model(
    model_type: str, hidden: int, layers: int, output_seq_len: int
) -> None:
    forecasts = recurrent_fleet(model_type, hidden, layers, output_seq_len)
    members, windows = mixed(forecasts)
    stacked = RecurrentStack(forecasts).predict_many(members, windows)
    for member, window, answer in zip(members, windows, stacked, strict=True):
        own = forecasts[member].predict_many([window])[0]
        assert answer.shape == own.shape == (window[2], K)
        span = np.asarray(forecasts[member].scaler.data_range)
        np.testing.assert_allclose(answer, own, rtol=1e-5, atol=1e-6 * float(span.max()))


def test_a_prophet_stack_answers_each_window_as_that_stations_own_model() -> None:
    forecasts = prophet_fleet()
    members, windows = mixed(forecasts)
    stacked = ProphetStack(forecasts).predict_many(members, windows)
    for member, window, answer in zip(members, windows, stacked, strict=True):
        own = forecasts[member].predict_many([window])[0]
        assert answer.shape == own.shape == (window[2], K)
        np.testing.assert_allclose(answer, own, rtol=1e-9, atol=0)


def test_stacked_prophet_curves_evaluate_each_row_as_its_own_curves() -> None:
    forecasts = prophet_fleet()
    stacked = ProphetCurves.stacked([f.curves for f in forecasts])
    grid = np.datetime64("2018-03-01", "ns") + np.arange(8 * 5).reshape(8, 5) * np.timedelta64(7, "h")
    rows = np.array([3, 0, 1, 2, 2, 1, 0, 3])
    values = stacked.take(rows).evaluate(grid)
    for i, row in enumerate(rows):
        np.testing.assert_allclose(values[i], forecasts[row].curves.evaluate(grid[i]), rtol=1e-12, atol=1e-12)


STACKS: dict[str, Callable[[], RecurrentStack | ProphetStack]] = {
    "GRU": lambda: RecurrentStack(recurrent_fleet("GRU", *SHAPES[0])),
    "GRU padded, 2 layers": lambda: RecurrentStack(recurrent_fleet("GRU", *SHAPES[1])),
    "LSTM": lambda: RecurrentStack(recurrent_fleet("LSTM", *SHAPES[0])),
    "LSTM padded, 2 layers": lambda: RecurrentStack(recurrent_fleet("LSTM", *SHAPES[1])),
    "PROPHET": lambda: ProphetStack(prophet_fleet()),
}


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The inference service's default (TORCH_THREADS=1), under which stacked answers are exact
    whatever they are batched with (shared.model_runtime.stacked_networks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("kind", sorted(STACKS))
def test_a_windows_answer_does_not_depend_on_what_it_is_batched_with(kind: str) -> None:
    stack = STACKS[kind]()
    members, windows = mixed(list(range(len(stack.members))), count=17)
    together = stack.predict_many(members, windows)
    for i, (member, window) in enumerate(zip(members, windows, strict=True)):
        assert np.array_equal(stack.predict_many([member], [window])[0], together[i]), f"window {i} alone"
    # Another order, other neighbours, a longer horizon beside it: still the same bits.
    order = [5, 16, 0, 3, 11, 8]
    others = windows_for([1, 2], [30, 1], seed=9)
    subset = stack.predict_many(
        [1, *[members[i] for i in order], 2], [others[0], *[windows[i] for i in order], others[1]]
    )
    for got, i in zip(subset[1:-1], order, strict=True):
        assert np.array_equal(got, together[i]), f"window {i} among others"


def serving(identifier: str, forecast: Forecast, model_type: ModelType) -> ServingModel:
    pointer = PromotionPointer(
        identifier=identifier,
        config_hash="0" * 64,
        run_id=f"run-{identifier}-{id(forecast)}",
        model_type=model_type,
        experiment="Default",
        model_uri=f"runs:/run/{model_type.value}",
        rmse=0.1,
        mae=0.05,
        mse=0.01,
        score=0.077,
        weights={"rmse": 0.5, "mae": 0.3, "mse": 0.2},
        scoreboard=[],
        timestamp=datetime.now(UTC),
    )
    return ServingModel(
        pointer=pointer,
        forecast=forecast,
        input_seq_len=10,
        output_seq_len=1,
        step=STEP,
        loaded_at=datetime.now(UTC),
        ranges=KpiRanges.from_scaler(forecast.scaler),  # type: ignore[attr-defined]
        meta={},
    )


def answer(slot: Slot, window: Window) -> np.ndarray:
    return slot.stack.predict_many([slot.member], [window])[0]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_swap_rebuilds_its_own_stack_only_and_no_other_stations_answers_change() -> None:
    grus = recurrent_fleet("GRU", 64, 1, 1)
    prophets = prophet_fleet()
    fleet = EMPTY_FLEET
    for identifier, forecast, kind in (
        ("A", grus[0], ModelType.GRU),
        ("B", grus[1], ModelType.GRU),
        ("C", prophets[0], ModelType.PROPHET),
        ("D", prophets[1], ModelType.PROPHET),
    ):
        fleet = fleet.with_model(serving(identifier, forecast, kind), across_stations=True)
    assert (
        fleet.slots["A"].stack is fleet.slots["B"].stack and fleet.slots["C"].stack is fleet.slots["D"].stack
    )
    window = windows_for([0], [7])[0]
    before = {identifier: answer(slot, window) for identifier, slot in fleet.slots.items()}

    swapped = fleet.with_model(serving("A", grus[2], ModelType.GRU), across_stations=True)
    # Station A answers with its new model; B, in the rebuilt stack, bit for bit as before; the
    # Prophet stack is the same object; the old fleet (what in-flight requests hold) is untouched.
    assert not np.allclose(answer(swapped.slots["A"], window), before["A"])
    np.testing.assert_allclose(
        answer(swapped.slots["A"], window), grus[2].predict_many([window])[0], rtol=1e-5
    )
    assert swapped.slots["B"].stack is not fleet.slots["B"].stack
    assert np.array_equal(answer(swapped.slots["B"], window), before["B"])
    assert swapped.slots["C"] == fleet.slots["C"] and swapped.slots["D"] == fleet.slots["D"]
    assert all(swapped.models[i] is fleet.models[i] for i in "BCD")
    assert all(np.array_equal(answer(fleet.slots[i], window), before[i]) for i in "ABCD")

    # A promotion to another kind moves the station between stacks; the others keep their bits.
    moved = swapped.with_model(serving("B", prophets[2], ModelType.PROPHET), across_stations=True)
    assert moved.slots["B"].stack is moved.slots["C"].stack and len(moved.slots["A"].stack.members) == 1
    assert np.array_equal(answer(moved.slots["A"], window), answer(swapped.slots["A"], window))
    assert all(np.array_equal(answer(moved.slots[i], window), before[i]) for i in "CD")


def test_stacks_group_by_kind_and_shape_and_the_rest_is_served_alone() -> None:
    class Unstackable(RecurrentNetwork):
        """A network this runtime does not know the forward pass of."""

    odd = Unstackable(ModelSpec("GRU", hidden_size=64)).eval()
    forecasts: dict[str, Forecast] = {
        "gru-a": recurrent_fleet("GRU", 64, 1, 1)[0],
        "gru-b": recurrent_fleet("GRU", 64, 1, 1)[1],
        "gru-small": recurrent_fleet("GRU", 20, 2, 3)[0],
        "lstm": recurrent_fleet("LSTM", 64, 1, 1)[0],
        "prophet": prophet_fleet()[0],
        "odd": RecurrentForecast(odd, scaler_for(0), 10, 1, STEP),
    }
    slots = stack_slots(forecasts, {})
    assert slots["gru-a"].stack is slots["gru-b"].stack and isinstance(slots["gru-a"].stack, RecurrentStack)
    assert len({id(slot.stack) for slot in slots.values()}) == 5
    assert isinstance(slots["odd"].stack, OneModel)
    assert stack_slots(forecasts, slots) == slots  # nothing changed: every stack kept
    alone = stack_slots(forecasts, slots, across_stations=False)
    assert all(isinstance(slot.stack, OneModel) for slot in alone.values())
    window = windows_for([0], [3])[0]
    for name, forecast in forecasts.items():
        assert np.array_equal(answer(alone[name], window), forecast.predict_many([window])[0])


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("across_stations", [True, False])
def test_the_batcher_makes_one_call_per_stack_and_answers_each_window_from_its_station(
    across_stations: bool,
) -> None:
    forecasts: dict[str, Forecast] = {f"s{i}": f for i, f in enumerate(recurrent_fleet("GRU", 64, 1, 1))}
    forecasts |= {f"p{i}": f for i, f in enumerate(prophet_fleet()[:2])}
    slots = MappingProxyType(stack_slots(forecasts, {}, across_stations=across_stations))
    names = list(forecasts)
    windows = windows_for([int(name[1:]) for name in names], [2] * len(names))
    batcher = MicroBatcher()

    async def concurrently() -> list[np.ndarray]:
        return await asyncio.gather(
            *(batcher.predict(slots[n], *w) for n, w in zip(names, windows, strict=True))
        )

    answers = asyncio.run(concurrently())
    assert batcher.windows == len(names)
    assert batcher.batches == (2 if across_stations else len(names))
    for name, window, got in zip(names, windows, answers, strict=True):
        assert np.array_equal(got, answer(slots[name], window))
