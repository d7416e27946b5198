"""Recurrent training: output shapes, learning, early stopping, stop flag, divergence, safe saving."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from shared.accuracy import evaluation_rows, rmse
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, STEP, time_features
from shared.mlflow_utils import mlflow_unreachable
from shared.model_runtime.networks import build_model, load_model, save_model
from shared.trainer_service import validate_frame
from train_container.training import (
    TrainConfig,
    TrainingDiverged,
    TrainingStopped,
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


SMALL = {"hidden_size": 16, "batch_size": 64, "learning_rate": 5e-3, "max_train_seconds": 30.0}


@pytest.mark.parametrize("model_type", ["GRU", "LSTM"])
@pytest.mark.parametrize("output_len", [1, 3])
def test_model_output_has_horizon_by_kpi_shape(model_type: str, output_len: int) -> None:
    config = TrainConfig(model_type=model_type, input_seq_len=10, output_seq_len=output_len, hidden_size=8)
    model = build_model(config.spec())
    out = model(torch.zeros(5, 10, len(FEATURE_COLUMNS)))
    assert out.shape == (5, output_len, len(KPI_COLUMNS))


def test_training_learns_beyond_its_first_epoch_and_restores_the_best_epoch() -> None:
    config = TrainConfig(model_type="GRU", epochs=6, patience=6, **SMALL)
    result = train_recurrent(synthetic_frame(600), config, device=torch.device("cpu"))
    assert len(result.history) == 6
    val = [h.val_loss for h in result.history]
    assert min(val) < val[0]
    assert result.best_epoch == int(np.argmin(val)) + 1
    assert result.best_val_loss == pytest.approx(min(val))


def test_trained_model_scores_the_contract_rows_and_stays_near_persistence() -> None:
    config = TrainConfig(model_type="LSTM", epochs=4, **SMALL)
    result = train_recurrent(synthetic_frame(600), config, device=torch.device("cpu"))
    test = synthetic_frame(120, seed=1, start="2018-02-06 00:00")
    predictions = one_step_predictions(result.model, test)
    actual, baseline = evaluation_rows(test[list(KPI_COLUMNS)].to_numpy(), 10)
    assert predictions.shape == actual.shape == (110, len(KPI_COLUMNS))
    assert np.all(np.isfinite(predictions))
    # the residual head starts at persistence; a few epochs must not wander far from it
    assert rmse(predictions, actual) < 2 * rmse(baseline, actual)


def test_early_stopping_ends_training_after_patience_epochs_without_improvement() -> None:
    # A learning rate of ~0 cannot improve after the first epoch, so patience 2 stops at epoch 3.
    config = TrainConfig(model_type="GRU", epochs=20, patience=2, **{**SMALL, "learning_rate": 1e-12})
    result = train_recurrent(synthetic_frame(400), config, device=torch.device("cpu"))
    assert len(result.history) <= 4
    assert result.stop_reason.startswith("early stop")


def test_stop_flag_interrupts_training() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(TrainingStopped):
        train_recurrent(synthetic_frame(400), TrainConfig(model_type="GRU", **SMALL), stop=stop)


def test_exploding_validation_loss_is_reported_as_divergence() -> None:
    config = TrainConfig(model_type="GRU", epochs=5, divergence_factor=1e-9, **SMALL)
    with pytest.raises(TrainingDiverged, match="exploded"):
        train_recurrent(synthetic_frame(400), config, device=torch.device("cpu"))


def test_one_cycle_schedule_warms_up_then_anneals_the_learning_rate_to_almost_zero() -> None:
    config = TrainConfig(
        model_type="LSTM", epochs=6, patience=6, lr_schedule="onecycle", **{**SMALL, "learning_rate": 1e-2}
    )
    result = train_recurrent(synthetic_frame(600), config, device=torch.device("cpu"))
    rates = [h.learning_rate for h in result.history]
    assert len(rates) == 6
    assert max(rates) <= 1e-2 * (1 + 1e-9)
    assert rates[0] < max(rates)  # still warming up after the first epoch
    assert rates[-1] < 1e-2 * 1e-2  # annealed to under 1 % of the peak by the last planned epoch
    assert min(h.val_loss for h in result.history) < result.history[0].val_loss


def test_default_depth_is_one_gru_layer_or_two_lstm_layers_unless_asked() -> None:
    assert TrainConfig(model_type="GRU").num_layers == 1
    assert TrainConfig(model_type="LSTM").num_layers == 2
    assert TrainConfig(model_type="LSTM", num_layers=3).spec().num_layers == 3


def test_an_unknown_learning_rate_schedule_is_refused() -> None:
    config = TrainConfig(model_type="GRU", epochs=1, lr_schedule="cosine", **SMALL)
    with pytest.raises(ValueError, match="lr_schedule"):
        train_recurrent(synthetic_frame(300), config, device=torch.device("cpu"))


def test_saved_model_reloads_with_weights_only_and_predicts_the_same(tmp_path: Path) -> None:
    config = TrainConfig(model_type="GRU", epochs=1, **SMALL)
    result = train_recurrent(synthetic_frame(300), config, device=torch.device("cpu"))
    test = synthetic_frame(40, seed=2)
    save_model(result.model, tmp_path / "GRU")
    reloaded = load_model(tmp_path / "GRU")
    np.testing.assert_allclose(
        one_step_predictions(reloaded, test), one_step_predictions(result.model, test), rtol=1e-6
    )


def test_processed_frames_breaking_the_contract_are_poison() -> None:
    from shared.kafka import PoisonMessage

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
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

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


def test_unreachable_mlflow_is_retried_then_reported_failed_and_left_to_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.tracking import MlflowClient

    from flts_cli.stack import free_port
    from shared.events import DataClaim, TrainingEvent, TrainingStatus
    from shared.kafka import MessageContext, TransientError
    from shared.trainer_service import TrainerService
    from train_container.settings import TrainSettings
    from train_container.trainer import RecurrentTrainer

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    dead = f"http://127.0.0.1:{free_port()}"
    settings = TrainSettings(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
        MLFLOW_TRACKING_URI=dead,
        MLFLOW_S3_ENDPOINT_URL=dead,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        MODEL_TYPE="LSTM",
        MLFLOW_MAX_RETRIES=2,
        MLFLOW_RETRY_BACKOFF_S=0.01,
    )
    producer = RecordingProducer()
    service = TrainerService(
        settings=settings,
        trainer=RecurrentTrainer(settings),
        client=MlflowClient(dead),
        store=None,  # type: ignore[arg-type]  # never reached: MLflow fails first
        producer=producer,  # type: ignore[arg-type]
        stop=threading.Event(),
    )
    claim = DataClaim(
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
    with pytest.raises(TransientError, match="after 3 attempts"):
        service.handle(claim, MessageContext("training-data", 0, 7, "a" * 64))
    assert len(producer.sent) == 1
    topic, key, event = producer.sent[0]
    assert topic == "model-training" and key == "a" * 64
    assert isinstance(event, TrainingEvent)
    assert event.status == TrainingStatus.FAILED and event.model_type.value == "LSTM"
    assert "MLflow unreachable" in (event.error or "")
