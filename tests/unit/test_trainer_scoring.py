"""How the trainer service scores a fitted model: which windows it asks the Forecast about, which
rows each metric family covers, and what SUCCESS events and MLflow carry.

The Forecasts here are small fakes over a series whose KPIs encode their own row number, so a
window that is off by one row shows up as a non-zero error.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shared.accuracy import SUMMARY_METRICS
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, STEP, MinMaxScaler, time_features
from shared.events import DataClaim, ModelType, TrainingEvent, TrainingStatus
from shared.kafka import MessageContext, PoisonMessage
from shared.processed import ProcessedMeta, SourceObjects, SplitRows
from shared.rolling import ScoredRows, Series, forecast_rows
from shared.settings.trainer import ParamValue, TrainerSettings
from shared.trainer_service import EpochRecord, FitOutcome, TrainerService, score_forecast
from tests.helpers.memory_store import MemoryStore

N_KPI = len(KPI_COLUMNS)
STEP64 = np.timedelta64(120, "s")
START = np.datetime64("2018-02-05T00:00:00", "ns")
# KPI j of row i is i + 1000 j: a window's last row number is its first KPI.
SCALER = MinMaxScaler(KPI_COLUMNS, tuple(1000.0 * j for j in range(N_KPI)), (500.0,) * N_KPI)


def numbered(rows: int) -> Series:
    kpis = np.arange(rows, dtype=np.float64)[:, None] + 1000.0 * np.arange(N_KPI)[None, :]
    return Series(START + np.arange(rows) * STEP64, kpis)


class Extrapolating:
    """Step h of a window's forecast is its last value + h: exact on `numbered` series, for any
    horizon, only when the window ends exactly h rows before the predicted row."""

    input_seq_len = 4
    step = STEP64

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.windows: list[tuple[int, int, int]] = []  # (first row, last row, horizon)

    def predict(self, timestamps: np.ndarray, kpis: np.ndarray, horizon: int) -> np.ndarray:
        return self.predict_many([(timestamps, kpis, horizon)])[0]

    def predict_many(self, windows: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> list[np.ndarray]:
        self.batches.append(len(windows))
        out = []
        for timestamps, kpis, horizon in windows:
            rows = (np.asarray(timestamps) - START) // STEP64
            np.testing.assert_array_equal(rows, kpis[:, 0])  # timestamps and KPIs stay paired
            self.windows.append((int(rows[0]), int(rows[-1]), horizon))
            out.append(kpis[-1] + np.arange(1, horizon + 1, dtype=np.float64)[:, None])
        return out


def test_validation_rows_are_the_train_tail_with_windows_reaching_back_into_the_fitted_rows() -> None:
    forecast = Extrapolating()

    scored = forecast_rows(forecast, numbered(100), first=85, input_len=4)

    assert [w[:2] for w in forecast.windows] == [(row - 4, row - 1) for row in range(85, 100)]
    assert forecast.windows[0] == (81, 84, 1)  # the first window lies wholly before the cut
    np.testing.assert_array_equal(scored.actual[:, 0], np.arange(85, 100))
    np.testing.assert_array_equal(scored.predicted, scored.actual)
    np.testing.assert_array_equal(scored.baseline[:, 0], np.arange(84, 99))
    assert scored.timestamps[0] == START + 85 * STEP64


def test_long_range_rows_are_predicted_from_windows_ending_horizon_rows_before_them() -> None:
    forecast = Extrapolating()

    scored = forecast_rows(forecast, numbered(50), first=4 + 30 - 1, input_len=4, horizon=30)

    # windows end at rows input_len-1 .. N-31, each forecasts 30 steps, the 30th is scored
    assert [w[1] for w in forecast.windows] == list(range(3, 20))
    assert {w[2] for w in forecast.windows} == {30}
    np.testing.assert_array_equal(scored.actual[:, 0], np.arange(33, 50))
    np.testing.assert_array_equal(scored.predicted, scored.actual)
    np.testing.assert_array_equal(scored.baseline[:, 0], np.arange(3, 20))


def test_windows_are_asked_for_in_chunks_with_the_same_answers() -> None:
    whole, chunked = Extrapolating(), Extrapolating()

    one = forecast_rows(whole, numbered(40), first=4, input_len=4, chunk=1000)
    many = forecast_rows(chunked, numbered(40), first=4, input_len=4, chunk=7)

    assert whole.batches == [36] and chunked.batches == [7, 7, 7, 7, 7, 1]
    np.testing.assert_array_equal(one.predicted, many.predicted)


def test_a_row_without_a_full_window_or_no_row_at_all_is_refused() -> None:
    with pytest.raises(ValueError, match="no full window"):
        forecast_rows(Extrapolating(), numbered(50), first=3, input_len=4)
    with pytest.raises(ValueError, match="no full window"):
        forecast_rows(Extrapolating(), numbered(50), first=20, input_len=4, horizon=30)
    with pytest.raises(ValueError, match="no rows to predict"):
        forecast_rows(Extrapolating(), numbered(50), first=50, input_len=4)


class Broken(Extrapolating):
    def __init__(self, answer: np.ndarray) -> None:
        super().__init__()
        self.answer = answer

    def predict_many(self, windows: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> list[np.ndarray]:
        return [self.answer for _ in windows]


def test_a_forecast_of_the_wrong_shape_or_not_finite_cannot_be_scored() -> None:
    with pytest.raises(ValueError, match="shapes"):
        forecast_rows(Broken(np.zeros((1, N_KPI - 1))), numbered(20), first=4, input_len=4)
    with pytest.raises(ValueError, match="NaN"):
        score_forecast(
            Broken(np.full((1, N_KPI), np.nan)),
            numbered(40),
            numbered(20),
            validation_start=30,
            input_len=4,
            scaler=SCALER,
        )


def test_every_family_is_scored_on_its_rows_next_to_persistence() -> None:
    metrics, one_step = score_forecast(
        Extrapolating(), numbered(100), numbered(60), validation_start=85, input_len=4, scaler=SCALER
    )

    assert set(SUMMARY_METRICS) <= set(metrics)
    for family in ("val", "test", "test_h30"):
        assert metrics[f"{family}_rmse"] == 0.0  # exact on this series: every window is aligned
        assert metrics[f"{family}_rmse_down"] == 0.0
    # persistence misses by one row one step ahead, by 30 rows thirty steps ahead
    assert metrics["baseline_val_rmse_down"] == pytest.approx(1.0)
    assert metrics["baseline_val_mae_up"] == pytest.approx(1.0)
    assert metrics["baseline_val_rmse"] == pytest.approx(1.0 / 500.0)  # MinMax units, range 500
    assert metrics["baseline_test_rmse_rb_up_var"] == pytest.approx(1.0)
    assert metrics["baseline_test_h30_rmse_down"] == pytest.approx(30.0)
    assert metrics["baseline_test_h30_rmse"] == pytest.approx(30.0 / 500.0)
    assert "test_h30_mae" not in metrics and "test_h30_mse" not in metrics
    assert isinstance(one_step, ScoredRows)
    np.testing.assert_array_equal(one_step.actual[:, 0], np.arange(4, 60))


def test_a_test_split_too_short_for_the_long_forecast_leaves_only_its_metrics_out() -> None:
    metrics, _ = score_forecast(
        Extrapolating(), numbered(100), numbered(33), validation_start=85, input_len=4, scaler=SCALER
    )
    assert set(SUMMARY_METRICS) <= set(metrics)
    assert not any(key.startswith(("test_h30", "baseline_test_h30")) for key in metrics)


def test_a_series_is_the_processed_split_in_original_units() -> None:
    frame = processed(5)
    series = Series.from_scaled(frame, SCALER)
    np.testing.assert_allclose(series.kpis, SCALER.inverse_array(frame[list(KPI_COLUMNS)].to_numpy()))
    assert series.timestamps.dtype == np.dtype("datetime64[ns]")
    assert series.timestamps[1] - series.timestamps[0] == STEP64


# -- the service around it: one claim through TrainerService.handle with fakes -------------------


def processed(rows: int, seed: int = 0, start: str = "2018-02-05") -> pd.DataFrame:
    """A scaled processed split: noisy KPIs in [0, 1], the contract's time features."""
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=rows, freq=STEP, name="time")
    kpis = pd.DataFrame(rng.uniform(0.2, 0.8, (rows, N_KPI)), index=index, columns=list(KPI_COLUMNS))
    return pd.concat([kpis, time_features(index)], axis=1)[list(FEATURE_COLUMNS)]


class Persistence:
    """A Forecast that repeats the window's last value: its errors equal the baseline's."""

    input_seq_len = 10
    step = STEP64

    def predict(self, timestamps: np.ndarray, kpis: np.ndarray, horizon: int) -> np.ndarray:
        return np.repeat(np.asarray(kpis[-1:], dtype=np.float64), horizon, axis=0)

    def predict_many(self, windows: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> list[np.ndarray]:
        return [self.predict(*window) for window in windows]


class FakeTrainer:
    model_type = ModelType.GRU

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def params(self) -> dict[str, ParamValue]:
        return {"hidden_size": 8}

    def fit(
        self,
        train: pd.DataFrame,
        validation_start: int,
        input_len: int,
        stop: threading.Event,
        on_epoch: Any = None,
        *,
        scaler: MinMaxScaler,
        step: np.timedelta64,
    ) -> FitOutcome:
        self.calls.append(
            {"rows": len(train), "validation_start": validation_start, "input_len": input_len}
            | {"scaler": scaler, "step": step}
        )

        def save(directory: Path) -> None:
            # The files a GRU writes: what a finished run is checked for before it is trusted.
            directory.mkdir(parents=True)
            (directory / "model_spec.json").write_text("{}")
            (directory / "state_dict.pt").write_text("fitted")

        return FitOutcome(
            forecast=Persistence(),
            save_model=save,
            history=[EpochRecord(1, 0.5, 0.4), EpochRecord(2, 0.3, 0.2)],
            best_epoch=2,
        )


class FakeMlflow:
    """The MlflowClient calls the service makes, kept in memory; the latest value of each metric."""

    def __init__(self) -> None:
        self.runs: dict[str, SimpleNamespace] = {}
        self.artifacts: dict[str, list[str]] = {}

    def get_experiment_by_name(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(experiment_id="1")

    def search_runs(
        self, experiment_ids: list[str], filter_string: str, **_: object
    ) -> list[SimpleNamespace]:
        return [r for r in self.runs.values() if f"'{r.data.tags['config_hash']}'" in filter_string]

    def create_run(self, experiment_id: str, tags: dict[str, str], run_name: str) -> SimpleNamespace:
        run_id = f"run-{len(self.runs)}"
        run = SimpleNamespace(
            info=SimpleNamespace(run_id=run_id, status="RUNNING"),
            data=SimpleNamespace(tags=dict(tags), params={}, metrics={}),
        )
        self.runs[run_id] = run
        return run

    def log_batch(
        self, run_id: str, metrics: Sequence[Any] = (), params: Sequence[Any] = (), **_: object
    ) -> None:
        data = self.runs[run_id].data
        data.metrics.update({m.key: m.value for m in metrics})
        data.params.update({p.key: p.value for p in params})

    def log_metric(self, run_id: str, key: str, value: float, step: int = 0) -> None:
        self.runs[run_id].data.metrics[key] = value

    def log_artifacts(self, run_id: str, local_dir: str) -> None:
        root = Path(local_dir)
        self.artifacts[run_id] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[SimpleNamespace]:
        """The files and folders directly under `path`, as the MLflow client lists them."""
        prefix = f"{path}/" if path else ""
        children: dict[str, bool] = {}
        for name in self.artifacts.get(run_id, []):
            if name.startswith(prefix):
                head, _, rest = name[len(prefix) :].partition("/")
                children[prefix + head] = bool(rest)
        return [
            SimpleNamespace(path=child, is_dir=is_dir, file_size=None if is_dir else 1)
            for child, is_dir in sorted(children.items())
        ]

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self.runs[run_id].info.status = status

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.runs[run_id].data.tags[key] = value


class RecordingProducer:
    def __init__(self) -> None:
        self.events: list[TrainingEvent] = []

    def publish(self, topic: str, key: str | None, value: object, timeout_s: float = 30.0) -> None:
        assert isinstance(value, TrainingEvent)
        self.events.append(value)


class GruSettings(TrainerSettings):
    def model_type_name(self) -> str:
        return "GRU"


CLAIM = DataClaim(
    bucket="processed-data",
    object="h/train.parquet",
    test_object="h/test.parquet",
    meta_object="h/meta.json",
    size=1,
    rows=1,
    config_hash="a" * 64,
    identifier="PobleSec",
    dataset="PobleSec",
)


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def _store(train: pd.DataFrame, test: pd.DataFrame) -> MemoryStore:
    meta = ProcessedMeta(
        config_hash="a" * 64,
        dataset="PobleSec",
        identifier="PobleSec",
        config={},
        source_digests={},
        source_objects=SourceObjects(bucket="dataset", train="PobleSec.csv", test="PobleSec_test.csv"),
        columns=FEATURE_COLUMNS,
        rows=SplitRows(train=len(train), test=len(test)),
        scaler=SCALER,
        step_seconds=120,
        repairs={},
        sampling={},
        created_at=datetime.now(UTC),
    )
    return MemoryStore(
        {
            "h/train.parquet": _parquet(train),
            "h/test.parquet": _parquet(test),
            "h/meta.json": json.dumps(meta.model_dump(mode="json")).encode(),
        }
    )


def _service(
    store: MemoryStore, trainer: FakeTrainer, client: FakeMlflow, producer: RecordingProducer
) -> TrainerService:
    settings = GruSettings.model_validate(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
            "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "VALIDATION_FRACTION": 0.2,
        }
    )
    return TrainerService(
        settings=settings,
        trainer=trainer,
        client=client,  # type: ignore[arg-type]
        store=store,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
        stop=threading.Event(),
    )


def test_a_claim_is_fitted_before_the_validation_period_and_every_family_reaches_the_event_and_mlflow() -> (
    None
):
    trainer, client, producer = FakeTrainer(), FakeMlflow(), RecordingProducer()
    service = _service(
        _store(processed(100), processed(60, seed=1, start="2018-03-01")), trainer, client, producer
    )

    service.handle(CLAIM, MessageContext("training-data", 0, 1, "a" * 64))

    assert trainer.calls == [
        {"rows": 100, "validation_start": 80, "input_len": 10, "scaler": SCALER, "step": STEP64}
    ]
    assert [e.status for e in producer.events] == [TrainingStatus.RUNNING, TrainingStatus.SUCCESS]
    metrics = producer.events[-1].metrics or {}
    for key in (*SUMMARY_METRICS, "test_h30_rmse", "baseline_test_h30_rmse", "test_h30_rmse_down"):
        assert np.isfinite(metrics[key]), key
    # the fake forecasts persistence: model and baseline agree family by family, row by row
    for family in ("val", "test", "test_h30"):
        assert metrics[f"{family}_rmse"] == pytest.approx(metrics[f"baseline_{family}_rmse"])
    run = client.runs[producer.events[-1].run_id or ""]
    assert run.info.status == "FINISHED"
    assert run.data.params["validation_fraction"] == "0.2"
    for key, value in metrics.items():
        assert run.data.metrics[key] == pytest.approx(value), key
    assert "plots/forecast_down_up.png" in client.artifacts[run.info.run_id]
    # the trainer's folder travels inside the MLflow model, with the scaler and the preprocess config
    for name in (
        "MLmodel",
        "artifacts/model/state_dict.pt",
        "artifacts/scaler.json",
        "artifacts/preprocess_config.json",
    ):
        assert f"GRU/{name}" in client.artifacts[run.info.run_id], name


def test_a_redelivered_claim_republishes_every_score_family_but_no_training_curve() -> None:
    trainer, client, producer = FakeTrainer(), FakeMlflow(), RecordingProducer()
    service = _service(
        _store(processed(100), processed(60, seed=1, start="2018-03-01")), trainer, client, producer
    )
    service.handle(CLAIM, MessageContext("training-data", 0, 1, "a" * 64))
    first = producer.events[-1].metrics or {}

    service.handle(CLAIM, MessageContext("training-data", 0, 2, "a" * 64))

    assert len(trainer.calls) == 1
    again = producer.events[-1]
    assert again.status == TrainingStatus.SUCCESS and again.run_id == producer.events[1].run_id
    scores = {k: v for k, v in first.items() if k not in ("fit_seconds", "score_seconds")}
    assert again.metrics == pytest.approx(scores)
    assert "val_loss" not in (again.metrics or {}) and "train_loss" not in (again.metrics or {})


def test_a_redelivered_claim_whose_model_weights_are_gone_is_trained_again() -> None:
    trainer, client, producer = FakeTrainer(), FakeMlflow(), RecordingProducer()
    service = _service(
        _store(processed(100), processed(60, seed=1, start="2018-03-01")), trainer, client, producer
    )
    service.handle(CLAIM, MessageContext("training-data", 0, 1, "a" * 64))
    first = producer.events[-1].run_id
    assert first is not None
    # MLflow still lists the FINISHED run; the object store lost its weights.
    client.artifacts[first].remove("GRU/artifacts/model/state_dict.pt")

    service.handle(CLAIM, MessageContext("training-data", 0, 2, "a" * 64))

    assert len(trainer.calls) == 2
    again = producer.events[-1]
    assert again.status == TrainingStatus.SUCCESS and again.run_id not in (None, first)
    assert "GRU/artifacts/model/state_dict.pt" in client.runs[first].data.tags["artifacts_missing"]


def test_a_train_split_with_no_room_before_its_validation_period_is_poison() -> None:
    def load(train_rows: int) -> int:
        store = _store(processed(train_rows), processed(60))
        service = _service(store, FakeTrainer(), FakeMlflow(), RecordingProducer())
        return service.load_data(CLAIM).validation_start

    # 14 rows: the last 3 validate, leaving 11: one window of 10 inputs and its target
    assert load(14) == 11
    # 13 rows: the last 3 validate, leaving 10: not a single window to fit on
    with pytest.raises(PoisonMessage, match="validation period starts at row 10"):
        load(13)
