"""What every trainer does around its model: consume claims, track in MLflow, report on Kafka.

One copy for GRU, LSTM (train_container) and Prophet (nonml_container); each container only
supplies a `ModelTrainer` that fits its model on the train rows before the validation period and
hands back a `Forecast` (shared.model_runtime.forecasting). The service scores every model through
that Forecast's predict_many, in original units: the same code the inference service answers with.

Handler order for one `training-data` claim (commit happens in ConsumerLoop after return):
1. Idempotency: a FINISHED MLflow run for (config_hash, model_type) exists and its model
   artifacts are in the object store -> no retraining; its SUCCESS event is published again and
   the claim is acknowledged. (Artifacts gone -> logged with the run id and the missing files,
   the run tagged `artifacts_missing`, and the claim trained again as below.) Re-publishing is harmless
   (the evaluator promotes once per config hash) and lets an evaluator that lost its state, or
   a claim re-published by preprocess, still reach a decision without any retraining.
2. Orphaned RUNNING runs of the same pair (a trainer killed with -9) are marked KILLED.
3. A new MLflow run is created and RUNNING is published with its run id.
4. Parquet + meta.json are read; a missing or unreadable object, or a meta.json that breaks the
   contract (shared.processed) -> FAILED + DLQ (PoisonMessage).
5. Fit on the train rows before the validation period (shared.data.validation_start); score the
   validation period (val_*, decides), the test split (test_*) and the horizon-30 forecast on it
   (test_h30_*, both reported only); log metrics/artifacts, mark the run FINISHED, publish SUCCESS,
   return.
Failures: divergence or unusable data -> run FAILED, FAILED event, DLQ. MLflow unreachable after
MLFLOW_MAX_RETRIES -> FAILED event, TransientError: ConsumerLoop retries the claim with backoff and
finally exits non-zero without committing, so the claim is redelivered after restart (a fitted
model is cached in memory so a retry does not train again). SIGTERM while fitting -> run KILLED,
ShutdownRequested: nothing is committed and the claim is trained again after restart.
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
import pyarrow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from shared.accuracy import ALL_ERRORS, Error, forecast_metrics_from_original
from shared.data import KPI_COLUMNS, MinMaxScaler, validation_start
from shared.events import DataClaim, ModelType, TrainingEvent, TrainingStatus, dlq_topic
from shared.health import HealthState, start_health_server, startup_budget_s, stop_health_server
from shared.kafka import (
    ConsumerLoop,
    EventProducer,
    MessageContext,
    PoisonMessage,
    RetriesExhausted,
    ShutdownRequested,
    TransientError,
    ensure_topics,
    wait_for_broker,
)
from shared.mlflow_utils import (
    configure_mlflow_client,
    connect,
    describe_missing_artifacts,
    ensure_experiment,
    experiment_for,
    find_runs,
    missing_model_artifacts,
    mlflow_answers,
    mlflow_unreachable,
    wait_for_mlflow,
)
from shared.model_runtime.forecasting import Forecast
from shared.model_runtime.pyfunc import save_mlflow_model, window_frame
from shared.plots import plot_forecast, plot_loss_curve
from shared.processed import InvalidMeta, ProcessedMeta, load_meta
from shared.retry import Backoff, RetryBudgetExhausted, RetryStopped, retry_call
from shared.rolling import PREDICT_CHUNK, ScoredRows, Series, forecast_rows, validate_frame
from shared.settings.trainer import ParamValue, TrainerSettings
from shared.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")
_LOG_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call
# Bounded start-up waits, each up to STARTUP_TIMEOUT_S: the broker and MLflow.
STARTUP_WAITS = 2
# Steps of the reported long-range forecast: one hour of 2-minute rows, what a planner asks for.
REPORT_HORIZON = 30
# The scoring families a finished run republishes (the run's other metrics, such as the per-epoch
# val_loss, are not scores).
_SCORE_PREFIXES = ("val_rmse", "val_mae", "val_mse", "baseline_val_", "test_", "baseline_test_")
# What the "model scored" log line shows: what the evaluator's skill gate compares, and the test score.
_LOGGED_SCORES = (
    "val_rmse",
    "baseline_val_rmse",
    "val_rmse_down",
    "baseline_val_rmse_down",
    "val_rmse_up",
    "baseline_val_rmse_up",
    "test_rmse",
    "baseline_test_rmse",
)


class FitStopped(RuntimeError):
    """A trainer noticed the stop flag; the service marks the run KILLED and does not commit."""


class FitFailed(RuntimeError):
    """The model cannot be trained on this data (divergence, too few rows); retrying will not help."""


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float | None = None


@dataclass
class FitOutcome:
    """What a trainer hands back: the fitted model ready to forecast, and how to write its folder."""

    forecast: Forecast  # original units in and out; the service scores every family through it
    save_model: Callable[[Path], None]
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None
    extra_metrics: dict[str, float] = field(default_factory=dict)
    extra_params: dict[str, Any] = field(default_factory=dict)


class ModelTrainer(Protocol):
    """The per-model part: GRU/LSTM in train_container, Prophet in nonml_container."""

    model_type: ModelType

    def params(self) -> dict[str, ParamValue]:
        """Hyperparameters to log as MLflow params; the service adds the claim's and the window's."""
        ...

    def fit(
        self,
        train: pd.DataFrame,
        validation_start: int,
        input_len: int,
        stop: threading.Event,
        on_epoch: Callable[[int], None] | None = None,
        *,
        scaler: MinMaxScaler,
        step: np.timedelta64,
    ) -> FitOutcome:
        """Fit on the rows of `train` before `validation_start`; raise FitStopped/FitFailed.

        `train` is the scaled train split (17 feature columns, DatetimeIndex). Rows from
        `validation_start` on are the validation period: a model may watch them to stop early,
        never fit on them. `scaler` (the train-fit scaler of the 11 KPIs) and `step` (the rows'
        spacing) are what the returned Forecast needs to answer in original units, `input_len`
        rows at a time. `on_epoch(epoch)` is called after each finished epoch (models without
        epochs never call it)."""
        ...


@dataclass(frozen=True)
class ProcessedData:
    train: pd.DataFrame
    test: pd.DataFrame
    meta: ProcessedMeta
    validation_start: int  # first train row of the validation period


def score_forecast(
    forecast: Forecast,
    train: Series,
    test: Series,
    *,
    validation_start: int,
    input_len: int,
    scaler: MinMaxScaler,
    horizon: int = REPORT_HORIZON,
    chunk: int = PREDICT_CHUNK,
) -> tuple[dict[str, float], ScoredRows]:
    """Every metric family of a fitted model, and its one-step test forecast (for the plot).

    val_*: one step ahead on train rows validation_start..N-1; test_*: one step ahead on test
    rows input_len..N-1; test_h<horizon>_* (RMSE only): the horizon-th step from every test window
    ending at rows input_len-1..N-1-horizon, left out when the test split is too short for one.
    ValueError when a forecast is not finite or has the wrong shape.
    """
    validation = forecast_rows(forecast, train, validation_start, input_len, 1, chunk)
    one_step = forecast_rows(forecast, test, input_len, input_len, 1, chunk)
    metrics = {
        **_metric_family(validation, scaler, "val"),
        **_metric_family(one_step, scaler, "test"),
    }
    first_long = input_len + horizon - 1
    if first_long < len(test.kpis):
        long = forecast_rows(forecast, test, first_long, input_len, horizon, chunk)
        metrics.update(_metric_family(long, scaler, f"test_h{horizon}", errors=("rmse",)))
    else:
        log.warning(
            "test split too short for the long-range forecast; its metrics are left out",
            extra={"test_rows": len(test.kpis), "horizon": horizon, "input_len": input_len},
        )
    return metrics, one_step


def _metric_family(
    scored: ScoredRows, scaler: MinMaxScaler, prefix: str, errors: Sequence[Error] = ALL_ERRORS
) -> dict[str, float]:
    return forecast_metrics_from_original(
        scored.predicted, scored.actual, scored.baseline, scaler, prefix=prefix, errors=errors
    )


class TrainerService:
    """Handles `training-data` claims for one model type."""

    def __init__(
        self,
        *,
        settings: TrainerSettings,
        trainer: ModelTrainer,
        client: MlflowClient,
        store: ObjectStore,
        producer: EventProducer,
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.trainer = trainer
        self.model_type = trainer.model_type
        self.experiment = experiment_for(self.model_type.value)
        self.client = client
        self.store = store
        self.producer = producer
        self.stop = stop
        self._experiment_id: str | None = None
        # A model fitted for a claim whose MLflow logging then failed: a retry logs it again
        # instead of training again. Keyed by config hash; one entry is enough (one claim at a time).
        self._fitted: tuple[str, FitOutcome] | None = None

    # -- MLflow with bounded retry ------------------------------------------------------------

    def mlflow_call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return retry_call(
                lambda: fn(*args, **kwargs),
                what=f"MLflow {what}",
                retryable=mlflow_unreachable,
                attempts=self.settings.MLFLOW_MAX_RETRIES + 1,
                backoff=Backoff(self.settings.MLFLOW_RETRY_BACKOFF_S),
                stop=self.stop,
            )
        except RetryBudgetExhausted as exc:
            raise TransientError(f"MLflow unreachable during {what}: {exc}") from exc
        except RetryStopped as exc:
            raise ShutdownRequested(f"stop requested while retrying {what}") from exc

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self.mlflow_call(
                "ensure_experiment", ensure_experiment, self.client, self.experiment
            )
        return self._experiment_id

    # -- events -------------------------------------------------------------------------------

    def publish(
        self,
        claim: DataClaim,
        status: TrainingStatus,
        *,
        run_id: str | None = None,
        metrics: dict[str, float] | None = None,
        error: str | None = None,
    ) -> None:
        event = TrainingEvent(
            operation=TrainingEvent.operation_for(status, self.model_type),
            status=status,
            model_type=self.model_type,
            experiment=self.experiment,
            run_name=self.model_type.value,
            run_id=run_id,
            config_hash=claim.config_hash,
            identifier=claim.identifier,
            metrics=metrics,
            error=error[:4000] if error else None,
        )
        # Keyed by station like the claim: a station's RUNNING/SUCCESS/FAILED stay in order.
        self.producer.publish(self.settings.TOPIC_MODEL_TRAINING, claim.identifier, event)
        log.info(
            "training event published",
            extra={"status": status.value, "model_type": self.model_type.value, "run_id": run_id},
        )

    def _publish_failed(self, claim: DataClaim, run_id: str | None, error: str) -> None:
        try:
            self.publish(claim, TrainingStatus.FAILED, run_id=run_id, error=error)
        except TransientError as exc:
            log.error("could not publish FAILED event", extra={"error": str(exc), "run_id": run_id})

    def _terminate(self, run_id: str | None, status: str, note: str = "") -> None:
        """Best effort: the run's final state matters less than reporting the failure."""
        if run_id is None:
            return
        try:
            if note:
                self.client.set_tag(run_id, "failure_reason", note[:4000])
            self.client.set_terminated(run_id, status=status)
        except Exception as exc:
            log.warning(
                "could not mark MLflow run", extra={"run_id": run_id, "status": status, "error": str(exc)}
            )

    # -- the handler --------------------------------------------------------------------------

    def handle(self, claim: DataClaim, ctx: MessageContext) -> None:
        extra = {**ctx.log_extra(), "config_hash": claim.config_hash, "model_type": self.model_type.value}
        try:
            if self._already_trained(claim, extra):
                return
            self._close_orphans(claim)
            run_id = self._create_run(claim)
        except TransientError as exc:
            self._publish_failed(claim, None, str(exc))
            raise
        extra["run_id"] = run_id
        try:
            self.publish(claim, TrainingStatus.RUNNING, run_id=run_id)
            summary = self._train_and_log(claim, run_id, extra)
        except (FitStopped, ShutdownRequested) as exc:
            log.warning("training interrupted by shutdown; run KILLED, claim not committed", extra=extra)
            self._terminate(run_id, "KILLED", f"stopped: {exc}")
            raise ShutdownRequested(str(exc)) from exc
        except (PoisonMessage, FitFailed) as exc:
            log.error("claim cannot be trained", extra={**extra, "error": str(exc)})
            self._terminate(run_id, "FAILED", str(exc))
            self._publish_failed(claim, run_id, f"{type(exc).__name__}: {exc}")
            raise PoisonMessage(str(exc)) from exc
        except TransientError as exc:
            self._terminate(run_id, "FAILED", str(exc))
            self._publish_failed(claim, run_id, f"TransientError: {exc}")
            raise
        except Exception as exc:
            self._terminate(run_id, "FAILED", f"{type(exc).__name__}: {exc}")
            self._publish_failed(claim, run_id, f"{type(exc).__name__}: {exc}")
            raise
        # Outside the try on purpose: the run is FINISHED now. If this publish fails, the retry
        # finds the finished run and publishes SUCCESS again instead of training again.
        self.publish(claim, TrainingStatus.SUCCESS, run_id=run_id, metrics=summary)

    def _already_trained(self, claim: DataClaim, extra: dict[str, Any]) -> bool:
        runs = self.mlflow_call("find_runs", find_runs, self.client, claim.config_hash, self.model_type.value)
        if not runs:
            return False
        run = runs[0]
        # MLflow's metadata can outlive the objects it points at (a restarted embedded S3 server,
        # an object store restored without its PostgreSQL): trust the store, not the listing.
        missing = self.mlflow_call(
            "list_artifacts", missing_model_artifacts, self.client, run.info.run_id, self.model_type.value
        )
        if missing:
            reason = describe_missing_artifacts(run.info.run_id, missing)
            log.warning(
                "claim was trained, but the run's model artifacts are missing; retraining",
                extra={**extra, "run_id": run.info.run_id, "missing": missing, "reason": reason},
            )
            self._mark_broken(run.info.run_id, reason)
            return False
        log.info(
            "claim already trained; acknowledging without retraining",
            extra={**extra, "run_id": run.info.run_id},
        )
        metrics = {k: float(v) for k, v in run.data.metrics.items() if k.startswith(_SCORE_PREFIXES)}
        self.publish(claim, TrainingStatus.SUCCESS, run_id=run.info.run_id, metrics=metrics)
        return True

    def _mark_broken(self, run_id: str, reason: str) -> None:
        """Best effort: tag the run whose files are gone, so its page in MLflow says why it was
        trained again. Its status stays FINISHED: the run did finish, and its metrics stand."""
        try:
            self.client.set_tag(run_id, "artifacts_missing", reason[:4000])
        except Exception as exc:
            log.warning("could not tag the run", extra={"run_id": run_id, "error": str(exc)})

    def _close_orphans(self, claim: DataClaim) -> None:
        orphans = self.mlflow_call(
            "find_runs", find_runs, self.client, claim.config_hash, self.model_type.value, ("RUNNING",)
        )
        for run in orphans:
            log.warning("marking orphaned RUNNING run KILLED", extra={"run_id": run.info.run_id})
            self._terminate(run.info.run_id, "KILLED", "orphaned: its trainer stopped before finishing")

    def _create_run(self, claim: DataClaim) -> str:
        experiment_id = self.experiment_id()
        tags = {
            "config_hash": claim.config_hash,
            "model_type": self.model_type.value,
            "identifier": claim.identifier,
            "dataset": claim.dataset,
        }
        run = self.mlflow_call(
            "create_run",
            self.client.create_run,
            experiment_id,
            tags=tags,
            run_name=self.model_type.value,
        )
        run_id: str = run.info.run_id
        params: dict[str, ParamValue] = {
            **self.trainer.params(),
            "model_type": self.model_type.value,
            "config_hash": claim.config_hash,
            "identifier": claim.identifier,
            "dataset": claim.dataset,
            "input_sequence_length": self.settings.INPUT_SEQ_LEN,
            "output_sequence_length": self.settings.OUTPUT_SEQ_LEN,
            "validation_fraction": self.settings.VALIDATION_FRACTION,
        }
        self.mlflow_call(
            "log_params",
            self.client.log_batch,
            run_id,
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        return run_id

    def load_data(self, claim: DataClaim) -> ProcessedData:
        """Read the claim's objects; anything missing or malformed is a PoisonMessage."""
        try:
            train = pd.read_parquet(io.BytesIO(self.store.get_bytes(claim.bucket, claim.object)))
            test = pd.read_parquet(io.BytesIO(self.store.get_bytes(claim.bucket, claim.test_object)))
            meta = load_meta(self.store, claim.bucket, claim.meta_object)
        except (ObjectNotFound, InvalidMeta) as exc:
            raise PoisonMessage(str(exc)) from exc
        except (pyarrow.ArrowException, OSError, ValueError) as exc:
            if isinstance(exc, ConnectionError | TimeoutError):
                raise
            raise PoisonMessage(f"unreadable processed data for {claim.config_hash}: {exc}") from exc
        test = validate_frame(test, "test split")
        input_len, output_len = self.settings.INPUT_SEQ_LEN, self.settings.OUTPUT_SEQ_LEN
        if len(test) <= input_len:
            raise PoisonMessage(f"test split has {len(test)} rows; need more than {input_len}")
        train = validate_frame(train, "train split")
        cut = validation_start(len(train), self.settings.VALIDATION_FRACTION, output_len)
        # One full window must fit before the validation period, or there is nothing to fit on and
        # the first validation row has no input window.
        if cut < input_len + output_len:
            raise PoisonMessage(
                f"train split has {len(train)} rows; its validation period starts at row {cut}, "
                f"leaving fewer than {input_len + output_len} rows to fit on"
            )
        return ProcessedData(train, test, meta, cut)

    def _fit(self, claim: DataClaim, data: ProcessedData, run_id: str) -> FitOutcome:
        if self._fitted is not None and self._fitted[0] == claim.config_hash:
            log.info(
                "reusing the model fitted before MLflow failed", extra={"config_hash": claim.config_hash}
            )
            return self._fitted[1]
        outcome = self.trainer.fit(
            data.train,
            data.validation_start,
            self.settings.INPUT_SEQ_LEN,
            self.stop,
            on_epoch=lambda epoch: self._report_epoch(run_id, epoch),
            scaler=data.meta.scaler,
            step=np.timedelta64(data.meta.step_seconds, "s"),
        )
        self._fitted = (claim.config_hash, outcome)
        return outcome

    def _report_epoch(self, run_id: str, epoch: int) -> None:
        """Live progress (`epoch`, step = epoch) for whoever watches the run; losses are logged
        once, with the run. Progress is best effort: a failed call must not fail the training."""
        try:
            self.client.log_metric(run_id, "epoch", float(epoch), step=epoch)
        except Exception as exc:
            log.warning("could not report epoch progress", extra={"run_id": run_id, "error": str(exc)})

    def _train_and_log(self, claim: DataClaim, run_id: str, extra: dict[str, Any]) -> dict[str, float]:
        """Fit, score, log everything and mark the run FINISHED; return the SUCCESS metrics."""
        data = self.load_data(claim)
        started = time.monotonic()
        outcome = self._fit(claim, data, run_id)
        fit_seconds = time.monotonic() - started
        scaler = data.meta.scaler
        started = time.monotonic()
        try:
            metrics, test_rows = score_forecast(
                outcome.forecast,
                Series.from_scaled(data.train, scaler),
                Series.from_scaled(data.test, scaler),
                validation_start=data.validation_start,
                input_len=self.settings.INPUT_SEQ_LEN,
                scaler=scaler,
            )
        except ValueError as exc:
            raise FitFailed(f"the fitted model cannot be scored: {exc}") from exc
        score_seconds = time.monotonic() - started
        summary = {
            **metrics,
            **outcome.extra_metrics,
            "fit_seconds": fit_seconds,
            "score_seconds": score_seconds,
        }
        log.info(
            "model scored",
            extra={
                **extra,
                **{k: metrics[k] for k in _LOGGED_SCORES},
                "score_seconds": round(score_seconds, 2),
            },
        )
        with tempfile.TemporaryDirectory(prefix="flts-train-") as tmp:
            root = Path(tmp)
            self._write_artifacts(root, claim, data, outcome, test_rows)
            self._log_run(run_id, summary, outcome, root)
        self.mlflow_call("set_terminated", self.client.set_terminated, run_id, "FINISHED")
        self._fitted = None
        return summary

    def _write_artifacts(
        self,
        root: Path,
        claim: DataClaim,
        data: ProcessedData,
        outcome: FitOutcome,
        test_rows: ScoredRows,
    ) -> None:
        type_name = self.model_type.value
        started = time.monotonic()
        input_len = outcome.forecast.input_seq_len
        train = Series.from_scaled(data.train.iloc[-input_len:], data.meta.scaler)
        # The one copy of the model in the run: an MLflow model whose artifacts carry the scaler and
        # the preprocess config, so `runs:/<id>/<TYPE>` and the registry's versions load on their own.
        save_mlflow_model(
            root / type_name,
            model_type=type_name,
            input_seq_len=input_len,
            save_model=outcome.save_model,
            scaler=data.meta.scaler,
            meta=data.meta.model_dump(mode="json"),
            input_example=window_frame(train.timestamps, train.kpis),
        )
        log.info(
            "MLflow model written",
            extra={"model_type": type_name, "seconds": round(time.monotonic() - started, 3)},
        )
        plot_forecast(
            pd.DatetimeIndex(test_rows.timestamps),
            test_rows.actual,
            test_rows.predicted,
            root / "plots" / "forecast_down_up.png",
            all_columns=KPI_COLUMNS,
            baseline=test_rows.baseline,
            title=f"{type_name} one step ahead on the test split ({claim.identifier})",
        )
        history = outcome.history
        plot_loss_curve(
            [h.epoch for h in history],
            [h.train_loss for h in history],
            [h.val_loss for h in history if h.val_loss is not None] or None,
            root / "plots" / "loss_curve.png",
            best_epoch=outcome.best_epoch,
            title=f"{type_name} loss ({claim.identifier})",
        )

    def _log_run(self, run_id: str, summary: dict[str, float], outcome: FitOutcome, root: Path) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in summary.items() if math.isfinite(float(v))]
        for record in outcome.history:
            metrics.append(Metric("train_loss", float(record.train_loss), now, record.epoch))
            if record.val_loss is not None:
                metrics.append(Metric("val_loss", float(record.val_loss), now, record.epoch))
        if outcome.best_epoch is not None:
            metrics.append(Metric("best_epoch", float(outcome.best_epoch), now, 0))
        for start in range(0, len(metrics), _LOG_BATCH):
            self.mlflow_call(
                "log_metrics", self.client.log_batch, run_id, metrics=metrics[start : start + _LOG_BATCH]
            )
        if outcome.extra_params:
            self.mlflow_call(
                "log_params",
                self.client.log_batch,
                run_id,
                params=[Param(k, str(v)) for k, v in outcome.extra_params.items()],
                tags=[RunTag("trained_on", str(outcome.extra_params.get("device", "")))],
            )
        started = time.monotonic()
        self.mlflow_call("log_artifacts", self.client.log_artifacts, run_id, str(root))
        log.info(
            "run artifacts uploaded",
            extra={
                "run_id": run_id,
                "files": sum(1 for f in root.rglob("*") if f.is_file()),
                "seconds": round(time.monotonic() - started, 3),
            },
        )


def run_trainer(
    settings: TrainerSettings,
    trainer: ModelTrainer,
    service: str,
    stop: threading.Event,
) -> int:
    """Consume claims until `stop`; return the process exit code.

    Probes are served on HEALTH_PORT (shared.health) from before the first dependency wait: live
    while the bounded waits run, ready once consuming with MLflow answering.
    Infrastructure that stays unreachable past the bounded waits and retries ends the process
    with 1, uncommitted, so the orchestrator restarts it and the claim is delivered again."""
    health = HealthState(
        service,
        ready_checks={"mlflow": lambda: mlflow_answers(settings.MLFLOW_TRACKING_URI, timeout_s=2.0)},
        startup_budget_s=startup_budget_s(settings.STARTUP_TIMEOUT_S, STARTUP_WAITS),
    )
    server = start_health_server(settings.HEALTH_PORT, health)
    try:
        _consume_claims(settings, trainer, service, stop, health)
    except (RetriesExhausted, TransientError) as exc:
        log.error("giving up; exiting so the orchestrator restarts us", extra={"error": str(exc)})
        return 1
    finally:
        health.stop_consuming()
        stop_health_server(server)
    log.info("stopped")
    return 0


def _consume_claims(
    settings: TrainerSettings,
    trainer: ModelTrainer,
    service: str,
    stop: threading.Event,
    health: HealthState,
) -> None:
    """Connect to Kafka, S3 and MLflow (bounded waits), then consume claims until `stop`."""
    configure_mlflow_client()
    bootstrap = settings.KAFKA_BOOTSTRAP_SERVERS
    health.waiting_for("kafka")
    wait_for_broker(bootstrap, settings.STARTUP_TIMEOUT_S)
    topics: Sequence[str] = (
        settings.TOPIC_TRAINING_DATA,
        settings.TOPIC_MODEL_TRAINING,
        dlq_topic(settings.TOPIC_TRAINING_DATA),
    )
    ensure_topics(bootstrap, topics)
    health.waiting_for("mlflow")
    wait_for_mlflow(settings.MLFLOW_TRACKING_URI, settings.STARTUP_TIMEOUT_S)
    if stop.is_set():
        return
    client = connect(settings.MLFLOW_TRACKING_URI)
    producer = EventProducer(bootstrap, client_id=service)
    service_obj = TrainerService(
        settings=settings,
        trainer=trainer,
        client=client,
        store=ObjectStore.from_settings(settings),
        producer=producer,
        stop=stop,
    )
    try:
        health.waiting_for("mlflow experiment")
        service_obj.experiment_id()
        loop = ConsumerLoop.from_settings(
            settings,
            group_id=settings.group_id(),
            topics={settings.TOPIC_TRAINING_DATA: DataClaim},
            # The loop hands the handler the model registered for its topic (a DataClaim), which a
            # Callable[[BaseModel, ...]] cannot say.
            handler=service_obj.handle,  # type: ignore[arg-type]
            service=service,
            producer=producer,
            stop=stop,
        )
        health.start_consuming(loop)
        loop.run()
    finally:
        producer.close()
