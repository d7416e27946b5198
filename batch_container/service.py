"""The batch forecaster: forecasts each station's claimed test split with its champion.

One consumer group shared by every replica reads two topics, so each message is handled once:
- an `inference-data` claim is remembered as the station's latest claim (in the batch bucket, so
  any replica finds it), then forecast with the station's live champion, if it has one;
- a `model-selected` promotion forecasts the station's latest claim again with the new champion.

A batch (claim's config hash x champion's run) is done once: its Parquet is written, its errors
are logged to the champion's MLflow run, its event goes to `batch-forecasts`, and last the event
is stored next to the Parquet. A batch whose event is stored is skipped; one cut short after its
Parquet was written is finished from that Parquet, never written again. So a redelivered claim
or promotion writes nothing new.

Errors follow the consumer loop's policy (shared.kafka): unreachable MLflow or S3 -> TransientError
(retried, then the process exits uncommitted); a claim or champion that can never be forecast
(missing or broken objects, a model that cannot load, a split too short or at another step) ->
PoisonMessage, so the message goes to its DLQ with the reason and the loop goes on.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow.artifacts
import numpy as np
import pyarrow
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, Field, ValidationError

from batch_container.forecast import UnusableBatch, batch_frame, batch_metrics, horizon_of, rows_of
from batch_container.keys import forecast_key, latest_claim_key, record_key
from batch_container.settings import BatchSettings
from shared.events import BatchForecast, BatchTrigger, DataClaim, PromotionPointer, model_dict
from shared.kafka import EventProducer, MessageContext, PoisonMessage, TransientError
from shared.mlflow_utils import mlflow_unreachable
from shared.model_runtime.pyfunc import WindowModel, load_window_model
from shared.processed import InvalidMeta, load_meta
from shared.promotion import load_current_pointer
from shared.rolling import Series, validate_frame
from shared.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

# The tag on the champion's run naming its latest batch forecast.
OBJECT_TAG = "batch_forecast_object"


class BatchClaim(DataClaim):
    """An `inference-data` claim as the batch forecaster reads it: it may ask for a horizon."""

    horizon: int | None = Field(default=None, ge=1)


class BatchForecaster:
    """Handles claims and promotions (the consumer loop's handler)."""

    def __init__(
        self,
        settings: BatchSettings,
        store: ObjectStore,
        client: MlflowClient,
        producer: EventProducer,
        loader: Callable[[PromotionPointer], WindowModel] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.producer = producer
        self.bucket = settings.BUCKET_BATCH_FORECASTS
        self._loader = loader or self._download
        self._models: OrderedDict[str, WindowModel] = OrderedDict()

    # ------------------------------------------------------------------ events
    def handle(self, event: BaseModel, ctx: MessageContext) -> None:
        if isinstance(event, BatchClaim):
            self.on_claim(event, ctx)
        elif isinstance(event, PromotionPointer):
            self.on_promotion(event, ctx)
        else:
            raise PoisonMessage(f"expected a claim or a promotion pointer, got {type(event).__name__}")

    def on_claim(self, claim: BatchClaim, ctx: MessageContext) -> None:
        extra = {**ctx.log_extra(), "identifier": claim.identifier, "config_hash": claim.config_hash}
        self._check_horizon(claim)
        # Remembered before the champion is read: a promotion published after this read finds
        # the claim, one published before it is the champion read here.
        self.remember(claim)
        pointer = load_current_pointer(self.store, self.settings.BUCKET_PROMOTION, claim.identifier)
        if pointer is None:
            log.info("no champion for this station yet; the claim waits for a promotion", extra=extra)
            return
        self.forecast(claim, pointer, BatchTrigger.CLAIM, extra)

    def on_promotion(self, pointer: PromotionPointer, ctx: MessageContext) -> None:
        extra = {**ctx.log_extra(), "identifier": pointer.identifier, "run_id": pointer.run_id}
        live = load_current_pointer(self.store, self.settings.BUCKET_PROMOTION, pointer.identifier)
        if live is not None and live.run_id != pointer.run_id and live.timestamp > pointer.timestamp:
            # Its own message forecasts with the later champion; this one would only add a stale batch.
            log.info("promotion superseded by a later one; skipped", extra={**extra, "live": live.run_id})
            return
        claim = self.latest_claim(pointer.identifier)
        if claim is None:
            log.info("no claim for this station yet; nothing to forecast", extra=extra)
            return
        self.forecast(claim, pointer, BatchTrigger.PROMOTION, {**extra, "config_hash": claim.config_hash})

    # ------------------------------------------------------------------ the station's latest claim
    def remember(self, claim: BatchClaim) -> None:
        """Store `claim` as its station's latest, unless it is already stored or a newer one is
        (so a redelivered claim writes nothing)."""
        stored = self.latest_claim(claim.identifier)
        if stored is not None and (stored.event_id == claim.event_id or stored.created_at > claim.created_at):
            return
        self.store.put_json(self.bucket, latest_claim_key(claim.identifier), model_dict(claim))

    def latest_claim(self, identifier: str) -> BatchClaim | None:
        key = latest_claim_key(identifier)
        try:
            return BatchClaim.model_validate(self.store.get_json(self.bucket, key))
        except ObjectNotFound:
            return None
        except ValueError as exc:  # not JSON, or not a claim (ValidationError is a ValueError)
            log.warning(
                "stored latest claim is unreadable; ignoring it", extra={"key": key, "error": str(exc)}
            )
            return None

    # ------------------------------------------------------------------ one batch
    def forecast(
        self, claim: BatchClaim, pointer: PromotionPointer, trigger: BatchTrigger, extra: dict[str, Any]
    ) -> BatchForecast | None:
        """Forecast `claim`'s split with `pointer`'s model, once; None when it was done before."""
        key = forecast_key(claim.identifier, claim.config_hash, pointer.run_id)
        done = record_key(claim.identifier, claim.config_hash, pointer.run_id)
        extra = {
            **extra,
            "run_id": pointer.run_id,
            "object": f"{self.bucket}/{key}",
            "trigger": trigger.value,
        }
        if self.store.exists(self.bucket, done):
            log.info("batch forecast already stored and published; nothing written", extra=extra)
            return None
        started = time.monotonic()
        if self.store.exists(self.bucket, key):
            # Cut short after the write (crash, MLflow or Kafka down): finish it from the stored frame.
            frame = self.store.get_parquet(self.bucket, key)
            size = self.store.size(self.bucket, key)
            log.info("batch forecast stored earlier; finishing its publication", extra=extra)
        else:
            horizon = claim.horizon or self.settings.BATCH_HORIZON
            model = self.model(pointer)
            extra["model_seconds"] = round(time.monotonic() - started, 3)
            series, step_seconds = self.split(claim)
            if model.step != np.timedelta64(step_seconds, "s"):
                raise PoisonMessage(
                    f"the claimed split is at {step_seconds} s steps; champion {pointer.run_id} was "
                    f"trained at {model.step / np.timedelta64(1, 's'):g} s"
                )
            try:
                frame = batch_frame(model.forecast, series.timestamps, series.kpis, horizon)
            except UnusableBatch as exc:
                raise PoisonMessage(
                    f"cannot forecast {claim.config_hash} with {pointer.run_id}: {exc}"
                ) from exc
            size = self.store.put_parquet(self.bucket, key, frame)
        metrics = batch_metrics(frame)
        self._log_to_run(pointer, metrics, key, extra)
        event = BatchForecast(
            identifier=claim.identifier,
            config_hash=claim.config_hash,
            run_id=pointer.run_id,
            model_type=pointer.model_type,
            model_uri=pointer.model_uri,
            bucket=self.bucket,
            object=key,
            size=size,
            rows=rows_of(frame),
            horizon=horizon_of(frame),
            metrics=metrics,
            trigger=trigger,
            claim_event_id=claim.event_id,
        )
        self.producer.publish(self.settings.TOPIC_BATCH_FORECASTS, claim.identifier, event)
        self.store.put_json(self.bucket, done, model_dict(event))
        log.info(
            "batch forecast stored and published",
            extra={**extra, **metrics, "seconds": round(time.monotonic() - started, 3)},
        )
        return event

    def _check_horizon(self, claim: BatchClaim) -> None:
        if claim.horizon is not None and claim.horizon > self.settings.BATCH_MAX_HORIZON:
            raise PoisonMessage(
                f"the claim asks for a horizon of {claim.horizon}; at most "
                f"{self.settings.BATCH_MAX_HORIZON} (BATCH_MAX_HORIZON)"
            )

    def split(self, claim: BatchClaim) -> tuple[Series, int]:
        """The claimed test split in original units (undone with its own train-fit scaler), and
        its step in seconds; PoisonMessage when an object is missing or breaks the contract."""
        try:
            frame = self.store.get_parquet(claim.bucket, claim.test_object)
            meta = load_meta(self.store, claim.bucket, claim.meta_object)
        except (ObjectNotFound, InvalidMeta) as exc:
            raise PoisonMessage(str(exc)) from exc
        except (pyarrow.ArrowException, ValueError) as exc:
            raise PoisonMessage(
                f"unreadable test split s3://{claim.bucket}/{claim.test_object}: {exc}"
            ) from exc
        if meta.config_hash != claim.config_hash:
            raise PoisonMessage(
                f"s3://{claim.bucket}/{claim.meta_object} describes {meta.config_hash}, "
                f"not the claimed {claim.config_hash}"
            )
        test = validate_frame(frame, "test split")
        return Series.from_scaled(test, meta.scaler), meta.step_seconds

    # ------------------------------------------------------------------ the champion's model
    def model(self, pointer: PromotionPointer) -> WindowModel:
        """The pointer's model, downloaded once and kept for the next MODEL_CACHE_SIZE batches."""
        cached = self._models.get(pointer.run_id)
        if cached is not None:
            self._models.move_to_end(pointer.run_id)
            return cached
        loaded = self._loader(pointer)
        self._models[pointer.run_id] = loaded
        while len(self._models) > self.settings.MODEL_CACHE_SIZE:
            self._models.popitem(last=False)
        return loaded

    def _download(self, pointer: PromotionPointer) -> WindowModel:
        where = f"champion {pointer.run_id} ({pointer.model_uri})"
        try:
            with tempfile.TemporaryDirectory(prefix="flts-batch-model-") as tmp:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=pointer.model_uri,
                    dst_path=tmp,
                    tracking_uri=self.settings.MLFLOW_TRACKING_URI,
                )
                # Read into memory here: the folder is gone when the block ends.
                return load_window_model(Path(local))
        except Exception as exc:
            if mlflow_unreachable(exc):
                raise TransientError(f"MLflow unreachable while loading {where}: {exc}") from exc
            if isinstance(exc, MlflowException | OSError | ValueError | KeyError | ValidationError):
                raise PoisonMessage(f"{where} cannot be loaded: {exc}") from exc
            raise

    # ------------------------------------------------------------------ MLflow
    def _log_to_run(
        self, pointer: PromotionPointer, metrics: dict[str, float], key: str, extra: dict[str, Any]
    ) -> None:
        """The batch's errors on the champion's run, where whoever looks at the champion finds them."""
        now_ms = int(time.time() * 1000)
        try:
            self.client.log_batch(
                pointer.run_id,
                metrics=[Metric(name, value, now_ms, 0) for name, value in metrics.items()],
                tags=[RunTag(OBJECT_TAG, f"s3://{self.bucket}/{key}")],
            )
        except MlflowException as exc:
            if mlflow_unreachable(exc):
                raise TransientError(f"MLflow unreachable: {exc}") from exc
            # A deleted run takes no metrics; the forecast and its event stand without them.
            log.error(
                "could not log the batch metrics to the champion's run", extra={**extra, "error": str(exc)}
            )
