"""Recurrent training: shapes, learning every KPI, the validation cut, early stopping, stop flag,
divergence, safe saving; and the trainer service around it."""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from flts_cli.stack import free_port
from nonml_container.settings import ProphetSettings
from nonml_container.trainer import ProphetTrainer
from shared.accuracy import evaluation_rows, per_column_rmse, rmse
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, STEP, MinMaxScaler, time_features, validation_start
from shared.events import DataClaim, TrainingEvent, TrainingStatus
from shared.kafka import MessageContext, PoisonMessage, TransientError
from shared.mlflow_utils import mlflow_unreachable
from shared.model_runtime.networks import build_model, load_model, save_model
from shared.processed import ProcessedMeta, SourceObjects, SplitRows
from shared.rolling import validate_frame
from shared.trainer_service import TrainerService
from tests.helpers.memory_store import MemoryStore
from train_container.settings import RecurrentHyperparameters, TrainSettings
from train_container.trainer import RecurrentTrainer
from train_container.training import (
    NotEnoughData,
    TrainingDiverged,
    TrainingStopped,
    TrainResult,
    fit_normalisation,
    frame_arrays,
    model_spec,
    one_step_predictions,
    train_recurrent,
)

torch.set_num_threads(1)


def synthetic_frame(rows: int, seed: int = 0, start: str = "2018-02-05") -> pd.DataFrame:
    """Scaled KPIs with a daily cycle plus noise, time features as the contract computes them."""
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=rows, freq=STEP, name="time")
    phase = np.arange(rows)[:, None] * (2 * np.pi / 720) + np.linspace(0, 1, len(KPI_COLUMNS))[None, :]
    kpis = 0.5 + 0.4 * np.sin(phase) + 0.02 * rng.standard_normal((rows, len(KPI_COLUMNS)))
    frame = pd.DataFrame(kpis, index=index, columns=list(KPI_COLUMNS))
    return pd.concat([frame, time_features(index).set_axis(index)], axis=1)[list(FEATURE_COLUMNS)]


SMALL: dict[str, object] = {
    "HIDDEN_SIZE": 16,
    "BATCH_SIZE": 64,
    "LEARNING_RATE": 5e-3,
    "MAX_TRAIN_SECONDS": 30.0,
}


def hyperparameters(model_type: str, **fields: object) -> RecurrentHyperparameters:
    """SMALL's fields, then `fields`: a quick run of `model_type`."""
    return RecurrentHyperparameters.model_validate({**SMALL, "MODEL_TYPE": model_type, **fields})


def train(frame: pd.DataFrame, config: RecurrentHyperparameters, **options: Any) -> TrainResult:
    """train_recurrent with the service's validation period (the last 15 % of the rows)."""
    cut = validation_start(len(frame), 0.15, config.OUTPUT_SEQ_LEN)
    return train_recurrent(frame, config, validation_start=cut, device=torch.device("cpu"), **options)


@pytest.mark.parametrize("model_type", ["GRU", "LSTM"])
@pytest.mark.parametrize("output_len", [1, 3])
def test_model_output_has_horizon_by_kpi_shape(model_type: str, output_len: int) -> None:
    config = hyperparameters(model_type, INPUT_SEQ_LEN=10, OUTPUT_SEQ_LEN=output_len, HIDDEN_SIZE=8)
    model = build_model(model_spec(config))
    out = model(torch.zeros(5, 10, len(FEATURE_COLUMNS)))
    assert out.shape == (5, output_len, len(KPI_COLUMNS))


def test_training_learns_beyond_its_first_epoch_and_restores_the_best_epoch() -> None:
    config = hyperparameters("GRU", EPOCHS=6, PATIENCE=6)
    result = train(synthetic_frame(600), config)
    assert len(result.history) == 6
    skill = [h.val_skill for h in result.history]
    assert min(skill) < skill[0]
    assert result.best_epoch == int(np.argmin(skill)) + 1
    assert result.best_val_skill == pytest.approx(min(skill))
    assert result.best_val_loss == pytest.approx(result.history[result.best_epoch - 1].val_loss)


def test_trained_model_scores_the_contract_rows_and_stays_near_persistence() -> None:
    config = hyperparameters("LSTM", EPOCHS=4)
    result = train(synthetic_frame(600), config)
    test = synthetic_frame(120, seed=1, start="2018-02-06 00:00")
    predictions = one_step_predictions(result.model, test)
    actual, baseline = evaluation_rows(test[list(KPI_COLUMNS)].to_numpy(), 10)
    assert predictions.shape == actual.shape == (110, len(KPI_COLUMNS))
    assert np.all(np.isfinite(predictions))
    # the network starts at persistence; a few epochs must not wander far from it
    assert rmse(predictions, actual) < 2 * rmse(baseline, actual)


def burst_frame(rows: int) -> pd.DataFrame:
    """Every KPI white noise around a level, so the level forecasts the next row better than the
    last row does (persistence is beatable); `up` has one burst of 1000x in its first rows, and
    the MinMax scaler fitted over them squeezes the rest of `up` into 0.1 % of its range."""
    rng = np.random.default_rng(5)
    index = pd.date_range("2018-02-05", periods=rows, freq=STEP, name="time")
    kpis = 5.0 + rng.standard_normal((rows, len(KPI_COLUMNS)))
    kpis[200, KPI_COLUMNS.index("up")] = 5e3
    raw = pd.DataFrame(kpis, index=index, columns=list(KPI_COLUMNS))
    scaled = MinMaxScaler.fit(raw.iloc[:1500]).transform(raw)
    return pd.concat([scaled, time_features(index).set_axis(index)], axis=1)[list(FEATURE_COLUMNS)]


def persistence_ratios(result: TrainResult, frame: pd.DataFrame) -> np.ndarray:
    """Per-KPI RMSE of the model over persistence's, one step ahead on `frame`'s rows 10..N-1."""
    predictions = one_step_predictions(result.model, frame)
    actual, baseline = evaluation_rows(frame[list(KPI_COLUMNS)].to_numpy(), 10)
    return np.asarray(per_column_rmse(predictions, actual) / per_column_rmse(baseline, actual))


def test_a_burst_in_one_kpis_training_rows_does_not_stop_the_model_learning_that_kpi() -> None:
    frame = burst_frame(1800)
    train_split, later = frame.iloc[:1500], frame.iloc[1490:]  # `later`: rows never trained on
    up = KPI_COLUMNS.index("up")
    config = hyperparameters("GRU", EPOCHS=8, PATIENCE=8)

    def ratios(**fields: object) -> np.ndarray:
        return persistence_ratios(train(train_split, config.model_copy(update=fields)), later)

    defaults, clamped, minmax = ratios(), ratios(INPUT_CLIP=10.0), ratios(SCALING="minmax")

    # The best forecast (the level) has sqrt(1/2) of persistence's RMSE on white noise; every
    # other KPI gets near it whatever the settings.
    for other in (defaults, clamped, minmax):
        assert np.all(np.delete(other, up) < 0.9), other
    # Without the per-KPI normalisation the burst leaves `up` no better than persistence.
    assert minmax[up] > 1.0, minmax
    # With it `up` beats persistence; clamping the normalised inputs (off by default, as
    # bench/tune.py found on the stations' data) also keeps the burst from saturating the cell.
    assert defaults[up] < 0.98, defaults
    assert clamped[up] < 0.92, clamped


def test_training_is_blind_to_the_validation_rows_and_early_stopping_sees_only_them() -> None:
    frame = synthetic_frame(500)
    cut = 400
    changed = frame.copy()
    changed.iloc[cut:, : len(KPI_COLUMNS)] += 0.05  # only rows from the validation start on
    config = hyperparameters("GRU", EPOCHS=3, PATIENCE=3)

    runs = [
        train_recurrent(data, config, validation_start=cut, device=torch.device("cpu"))
        for data in (frame, changed)
    ]

    for before, after in zip(runs[0].history, runs[1].history, strict=True):
        assert before.train_loss == after.train_loss  # the same fit, weights and normalisation
        assert before.val_loss != after.val_loss  # judged on the changed rows
    touched_before_cut = frame.copy()
    touched_before_cut.iloc[cut - 1, : len(KPI_COLUMNS)] += 0.05
    moved = train_recurrent(touched_before_cut, config, validation_start=cut, device=torch.device("cpu"))
    assert moved.history[0].train_loss != runs[0].history[0].train_loss


def test_early_stopping_ends_training_after_patience_epochs_without_improvement() -> None:
    # A learning rate of ~0 cannot improve after the first epoch, so patience 2 stops at epoch 3.
    config = hyperparameters("GRU", EPOCHS=20, PATIENCE=2, LEARNING_RATE=1e-12)
    result = train(synthetic_frame(400), config)
    assert len(result.history) <= 4
    assert result.stop_reason.startswith("early stop")


def test_stop_flag_interrupts_training() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(TrainingStopped):
        train(synthetic_frame(400), hyperparameters("GRU"), stop=stop)


def test_exploding_validation_loss_is_reported_as_divergence() -> None:
    config = hyperparameters("GRU", EPOCHS=5)
    with pytest.raises(TrainingDiverged, match="exploded"):
        train(synthetic_frame(400), config, divergence_factor=1e-9)


def test_a_validation_start_without_room_for_windows_on_both_sides_is_refused() -> None:
    for cut in (5, 400):
        with pytest.raises(NotEnoughData):
            train_recurrent(synthetic_frame(400), hyperparameters("GRU"), validation_start=cut)


def test_normalisation_is_fitted_on_the_training_rows_only() -> None:
    frame = synthetic_frame(400)
    features, _ = frame_arrays(frame)
    centre, scale, change = fit_normalisation(features[:300], len(KPI_COLUMNS), "robust")
    kpis = features[:300, : len(KPI_COLUMNS)]
    np.testing.assert_allclose(centre[: len(KPI_COLUMNS)], np.median(kpis, axis=0), rtol=1e-5)
    q75, q25 = np.percentile(kpis, [75, 25], axis=0)
    np.testing.assert_allclose(scale[: len(KPI_COLUMNS)], q75 - q25, rtol=1e-5)
    np.testing.assert_allclose(change, np.median(np.abs(np.diff(kpis, axis=0)), axis=0), rtol=1e-5)
    # time features pass as they are; minmax scaling is the identity
    assert torch.all(centre[len(KPI_COLUMNS) :] == 0) and torch.all(scale[len(KPI_COLUMNS) :] == 1)
    identity = fit_normalisation(features[:300], len(KPI_COLUMNS), "minmax")
    assert all(torch.all(t == v) for t, v in zip(identity, (0, 1, 1), strict=True))


def test_a_constant_kpi_gets_finite_positive_scales() -> None:
    features, _ = frame_arrays(synthetic_frame(200))
    features[:, 3] = 0.25
    _, scale, change = fit_normalisation(features, len(KPI_COLUMNS), "robust")
    assert scale[3] == 1.0 and change[3] == 1.0


def test_one_cycle_schedule_warms_up_then_anneals_the_learning_rate_to_almost_zero() -> None:
    config = hyperparameters("LSTM", EPOCHS=6, PATIENCE=6, LR_SCHEDULE="onecycle", LEARNING_RATE=1e-2)
    result = train(synthetic_frame(600), config)
    rates = [h.learning_rate for h in result.history]
    assert len(rates) == 6
    assert max(rates) <= 1e-2 * (1 + 1e-9)
    assert rates[0] < max(rates)  # still warming up after the first epoch
    assert rates[-1] < 1e-2 * 1e-2  # annealed to under 1 % of the peak by the last planned epoch
    assert min(h.val_skill for h in result.history) < result.history[0].val_skill


def test_default_depth_is_one_layer_for_either_cell_unless_asked() -> None:
    assert RecurrentHyperparameters(MODEL_TYPE="GRU").NUM_LAYERS == 1
    assert RecurrentHyperparameters(MODEL_TYPE="LSTM").NUM_LAYERS == 1
    assert model_spec(RecurrentHyperparameters(MODEL_TYPE="LSTM", NUM_LAYERS=3)).num_layers == 3


def test_an_unknown_learning_rate_schedule_is_refused() -> None:
    with pytest.raises(ValidationError, match="LR_SCHEDULE"):
        hyperparameters("GRU", LR_SCHEDULE="cosine")


def test_saved_model_reloads_with_weights_only_and_predicts_the_same(tmp_path: Path) -> None:
    config = hyperparameters("GRU", EPOCHS=1)
    result = train(synthetic_frame(300), config)
    test = synthetic_frame(40, seed=2)
    save_model(result.model, tmp_path / "GRU")
    reloaded = load_model(tmp_path / "GRU")
    np.testing.assert_allclose(
        one_step_predictions(reloaded, test), one_step_predictions(result.model, test), rtol=1e-6
    )


def test_processed_frames_breaking_the_contract_are_poison() -> None:
    frame = synthetic_frame(30)
    assert validate_frame(frame, "train").shape == frame.shape
    with pytest.raises(PoisonMessage, match="columns"):
        validate_frame(frame[list(reversed(FEATURE_COLUMNS))], "train")
    with pytest.raises(PoisonMessage, match="increasing"):
        validate_frame(frame.iloc[::-1], "train")
    broken = frame.copy()
    broken.iloc[2, 0] = np.inf
    with pytest.raises(PoisonMessage, match="NaN or infinite"):
        validate_frame(broken, "train")


def test_connection_failures_count_as_mlflow_unreachable_but_api_errors_do_not() -> None:
    assert mlflow_unreachable(ConnectionRefusedError("refused"))
    assert mlflow_unreachable(MlflowException("API request failed: Max retries exceeded with url"))
    assert not mlflow_unreachable(MlflowException("bad param", error_code=INVALID_PARAMETER_VALUE))
    assert not mlflow_unreachable(ValueError("nope"))


class RecordingProducer:
    """Stands in for EventProducer: keeps what would have been published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None, object]] = []

    def publish(self, topic: str, key: str | None, value: object, timeout_s: float = 30.0) -> None:
        self.sent.append((topic, key, value))


def connection() -> dict[str, object]:
    """Settings of services nobody answers at: whatever tries to reach them fails at once."""
    unreachable = f"http://127.0.0.1:{free_port()}"
    return {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "MLFLOW_TRACKING_URI": unreachable,
        "MLFLOW_S3_ENDPOINT_URL": unreachable,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }


def train_settings(**overrides: object) -> TrainSettings:
    return TrainSettings.model_validate({**connection(), **overrides})


def claim_for() -> DataClaim:
    return DataClaim(
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


def test_unreachable_mlflow_is_retried_then_reported_failed_and_left_to_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = train_settings(MODEL_TYPE="LSTM", MLFLOW_MAX_RETRIES=2, MLFLOW_RETRY_BACKOFF_S=0.01)
    producer = RecordingProducer()
    service = TrainerService(
        settings=settings,
        trainer=RecurrentTrainer(settings),
        client=MlflowClient(settings.MLFLOW_TRACKING_URI),
        store=None,  # type: ignore[arg-type]  # never reached: MLflow fails first
        producer=producer,  # type: ignore[arg-type]
        stop=threading.Event(),
    )
    with pytest.raises(TransientError, match="after 3 attempts"):
        service.handle(claim_for(), MessageContext("training-data", 0, 7, "PobleSec"))
    assert len(producer.sent) == 1
    topic, key, event = producer.sent[0]
    assert topic == "model-training" and key == "PobleSec"  # keyed by station
    assert isinstance(event, TrainingEvent)
    assert event.status == TrainingStatus.FAILED and event.model_type.value == "LSTM"
    assert "MLflow unreachable" in (event.error or "")


def test_mlflow_params_keep_their_names() -> None:
    """Inference and anyone comparing runs read these names; the hyperparameter models derive them."""
    settings = train_settings(MODEL_TYPE="GRU")
    assert set(RecurrentTrainer(settings).params()) == {
        "model_type",
        "input_sequence_length",
        "output_sequence_length",
        "epochs",
        "batch_size",
        "learning_rate",
        "hidden_size",
        "num_layers",
        "dropout",
        "patience",
        "seed",
        "max_train_seconds",
        "scaling",
        "input_clip",
        "loss",
        "huber_delta",
        "grad_clip",
        "lr_schedule",
    }
    assert RecurrentTrainer(settings).params()["num_layers"] == 1
    prophet = ProphetTrainer(ProphetSettings.model_validate(connection()))
    assert prophet.params() == {
        "prophet_n_changepoints": 10,
        "prophet_changepoint_prior_scale": 0.05,
        "prophet_seasonality_mode": "additive",
        "prophet_daily_fourier": 10,
        "prophet_weekly_fourier": 3,
        "prophet_fit_resample_minutes": 10,
        "prophet_workers": 1,
    }


def parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def valid_meta(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, object]:
    return ProcessedMeta(
        config_hash="a" * 64,
        dataset="PobleSec",
        identifier="PobleSec",
        config={},
        source_digests={},
        source_objects=SourceObjects(bucket="dataset", train="PobleSec.csv", test="PobleSec_test.csv"),
        columns=FEATURE_COLUMNS,
        rows=SplitRows(train=len(train), test=len(test)),
        scaler=MinMaxScaler.from_dict(UNIT_SCALER),
        step_seconds=120,
        repairs={},
        sampling={},
        created_at=datetime.now(UTC),
    ).model_dump(mode="json")


UNIT_SCALER = MinMaxScaler(KPI_COLUMNS, (0.0,) * len(KPI_COLUMNS), (1.0,) * len(KPI_COLUMNS)).to_dict()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"scaler": None}, "scaler: Value error, expected the scaler's parameters as an object"),
        ({"scaler": {**UNIT_SCALER, "columns": list(reversed(KPI_COLUMNS))}}, "scaler columns"),
        ({"scaler": {**UNIT_SCALER, "data_range": [0.0] * len(KPI_COLUMNS)}}, "positive ranges"),
        ({"scaler": {**UNIT_SCALER, "data_min": "0"}}, "data_min must be a list"),
        ({"columns": list(KPI_COLUMNS)}, "columns"),
        ({"rows": {"train": 0, "test": 30}}, "rows.train"),
        ({"created_at": "2026-01-01T00:00:00"}, "created_at"),
        ({"config_hash": "not-a-hash"}, "config_hash"),
    ],
)
def test_a_meta_json_breaking_the_contract_is_poison_naming_the_field(
    changes: dict[str, object], reason: str
) -> None:
    train, test = synthetic_frame(60), synthetic_frame(30, seed=1)
    objects = {"h/train.parquet": parquet(train), "h/test.parquet": parquet(test)}
    meta = valid_meta(train, test)
    loaded = _service(MemoryStore({**objects, "h/meta.json": json.dumps(meta).encode()})).load_data(
        claim_for()
    )
    assert loaded.meta.scaler.columns == KPI_COLUMNS

    broken = json.dumps({**meta, **changes}).encode()
    with pytest.raises(PoisonMessage, match="breaks the processed-data contract") as raised:
        _service(MemoryStore({**objects, "h/meta.json": broken})).load_data(claim_for())
    assert str(raised.value).startswith("s3://processed-data/h/meta.json ")
    assert reason in str(raised.value)


def test_a_meta_json_that_is_missing_a_field_is_not_json_or_absent_is_poison() -> None:
    train, test = synthetic_frame(60), synthetic_frame(30, seed=1)
    objects = {"h/train.parquet": parquet(train), "h/test.parquet": parquet(test)}
    without_scaler = {k: v for k, v in valid_meta(train, test).items() if k != "scaler"}
    cases = {
        json.dumps(without_scaler).encode(): "scaler: Field required",
        b"{not json": "is not JSON",
        b"[]": "Input should be a valid dictionary",
    }
    for body, reason in cases.items():
        with pytest.raises(PoisonMessage, match=reason):
            _service(MemoryStore({**objects, "h/meta.json": body})).load_data(claim_for())
    with pytest.raises(PoisonMessage, match="does not exist"):
        _service(MemoryStore(objects)).load_data(claim_for())


def _service(store: MemoryStore) -> TrainerService:
    settings = train_settings(MODEL_TYPE="GRU")
    return TrainerService(
        settings=settings,
        trainer=RecurrentTrainer(settings),
        client=MlflowClient(settings.MLFLOW_TRACKING_URI),
        store=store,  # type: ignore[arg-type]  # load_data only reads objects
        producer=RecordingProducer(),  # type: ignore[arg-type]
        stop=threading.Event(),
    )
