"""The evaluator: waits for every expected model type of a config hash, promotes the best once.

State lives outside the process so a restart (or a redelivery) changes nothing:
- successes are whatever FINISHED runs MLflow holds for the config hash (tags `config_hash`,
  `model_type`), so no in-memory set has to survive;
- failures and the time of the first event of a hash are kept in a small pending object in the
  promotion bucket (`shared.promotion.PendingHash`);
- a history object for the hash means "already promoted": never again.

Promotion order: history object (the decision) → live pointers → MLflow alias → `model-selected`
→ `published.json`. A crash anywhere leaves the message uncommitted; on redelivery the stored
decision is finished, not re-made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

from mlflow.entities import Run
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from eval_container.settings import EvaluatorSettings
from shared import promotion
from shared.events import ModelType, PromotionPointer, TrainingEvent, TrainingStatus
from shared.kafka import EventProducer, MessageContext, PoisonMessage, TransientError
from shared.mlflow_utils import experiment_for, find_runs, mlflow_unreachable
from shared.promotion import PendingHash
from shared.scoring import Candidate, build_pointer, latest_per_type, missing_metrics, rank, skill_gate
from shared.storage import ObjectStore

log = logging.getLogger(__name__)

# Server answers meaning "this request can never succeed"; anything else from MLflow is treated
# as infrastructure trouble and retried.
T = TypeVar("T")
IDLE_CHECK_INTERVAL_S = 1.0
IDLE_ERROR_BACKOFF_S = 30.0


class Evaluator:
    """Handles `model-training` events and the promotion timer."""

    def __init__(
        self,
        settings: EvaluatorSettings,
        store: ObjectStore,
        client: MlflowClient,
        producer: EventProducer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.producer = producer
        self.clock = clock
        self.bucket = settings.BUCKET_PROMOTION
        self.expected: list[ModelType] = list(settings.EXPECTED_MODEL_TYPES)
        self.pending: dict[str, PendingHash] = {}
        self._next_idle_check = 0.0
        self._idle_retry_at: dict[str, float] = {}

    # ------------------------------------------------------------------ start-up
    def restore(self) -> None:
        """Reload the hashes the evaluator was waiting on before it stopped."""
        self.pending = promotion.load_pending(self.store, self.bucket)
        log.info("pending config hashes restored", extra={"pending": sorted(self.pending)})

    # ------------------------------------------------------------------ events
    def handle(self, event: BaseModel, ctx: MessageContext) -> None:
        if not isinstance(event, TrainingEvent):
            raise PoisonMessage(f"expected a TrainingEvent, got {type(event).__name__}")
        extra = {**ctx.log_extra(), "config_hash": event.config_hash, "model_type": event.model_type.value}
        # A busy topic never leaves the poll empty; run the promotion timer here as well.
        self.on_idle()
        if event.status is TrainingStatus.RUNNING:
            return
        if event.model_type not in self.expected:
            log.info("model type not in EXPECTED_MODEL_TYPES; ignored", extra=extra)
            return
        if self._finish_if_decided(event.identifier, event.config_hash, extra):
            return
        if event.status is TrainingStatus.SUCCESS:
            # Checked before any state is kept, so a poison event leaves nothing behind.
            self._check_success_run(event)
            self._pending_for(event.config_hash, event.identifier)
            log.info("training succeeded", extra={**extra, "run_id": event.run_id})
        else:
            pending = self._pending_for(event.config_hash, event.identifier)
            pending.failed[event.model_type.value] = event.error or "training failed (no error given)"
            pending.closed_reason = None
            promotion.save_pending(self.store, self.bucket, pending)
            log.warning("training failed", extra={**extra, "error": event.error, "run_id": event.run_id})
        self.evaluate(event.config_hash, event.identifier, extra)

    def on_idle(self) -> None:
        """Timer for PROMOTION_TIMEOUT_S: called by the consumer loop whenever a poll is empty."""
        now = self.clock()
        if now < self._next_idle_check:
            return
        self._next_idle_check = now + IDLE_CHECK_INTERVAL_S
        for config_hash, pending in list(self.pending.items()):
            if pending.closed_reason or not pending.failed:
                continue
            if not self._timed_out(pending) or now < self._idle_retry_at.get(config_hash, 0.0):
                continue
            extra = {"config_hash": config_hash, "identifier": pending.identifier, "trigger": "timeout"}
            try:
                if not self._finish_if_decided(pending.identifier, config_hash, extra):
                    self.evaluate(config_hash, pending.identifier, extra)
            except Exception:
                # The loop must keep consuming; this hash is tried again later.
                log.exception("timeout evaluation failed; will retry", extra=extra)
                self._idle_retry_at[config_hash] = now + IDLE_ERROR_BACKOFF_S

    # ------------------------------------------------------------------ decision
    def evaluate(
        self, config_hash: str, identifier: str, extra: Mapping[str, object]
    ) -> PromotionPointer | None:
        """Promote when every expected type succeeded, or after the timeout when some failed."""
        pending = self._pending_for(config_hash, identifier)
        candidates, failed_in_mlflow = self._candidates(config_hash)
        missing = [t for t in self.expected if t not in candidates]
        note = None
        if missing:
            failed = [t for t in missing if t.value in pending.failed or t in failed_in_mlflow]
            if not failed:
                log.info("waiting for model types", extra={**extra, "missing": [t.value for t in missing]})
                return None
            if not self._timed_out(pending):
                log.info(
                    "a model type failed; waiting for the promotion timeout",
                    extra={
                        **extra,
                        "failed": [t.value for t in failed],
                        "missing": [t.value for t in missing],
                        "timeout_s": self.settings.PROMOTION_TIMEOUT_S,
                    },
                )
                return None
            if not candidates:
                self._close(pending, "no expected model type succeeded; nothing to promote")
                log.error(
                    "no expected model type succeeded; nothing promoted",
                    extra={**extra, "failed": {t.value: pending.failed.get(t.value) for t in failed}},
                )
                return None
            note = (
                f"promoted among {', '.join(sorted(c.value for c in candidates))} after "
                f"{self.settings.PROMOTION_TIMEOUT_S:g}s; missing {', '.join(t.value for t in missing)} "
                f"(failed: {', '.join(t.value for t in failed)})"
            )
        weights = self.settings.weights
        scoreboard = rank(candidates.values(), weights)
        winner = candidates[scoreboard[0].model_type]
        if self.settings.SKILL_GATE:
            verdict = skill_gate(winner)
            if not verdict.passed:
                self._close(pending, f"skill gate: {verdict.reason}")
                log.warning(
                    "skill gate refused promotion: the best model does not beat persistence",
                    extra={**extra, "reason": verdict.reason, "run_id": winner.run_id},
                )
                return None
        pointer = build_pointer(
            identifier=identifier,
            config_hash=config_hash,
            winner=winner,
            scoreboard=scoreboard,
            weights=weights,
            missing_model_types=missing,
            note=note,
        )
        key = promotion.write_history(self.store, self.bucket, pointer)
        log.info(
            "promotion decided",
            extra={**extra, "history": key, "run_id": pointer.run_id, "winner": pointer.model_type.value},
        )
        self._complete(pointer, extra)
        return pointer

    def _candidates(self, config_hash: str) -> tuple[dict[ModelType, Candidate], set[ModelType]]:
        """Latest successful run per expected type, and types whose only runs failed."""
        runs = _mlflow(lambda: find_runs(self.client, config_hash, statuses=("FINISHED", "FAILED", "KILLED")))
        finished: list[Candidate] = []
        failed: set[ModelType] = set()
        for run in runs:
            model_type = _model_type_of(run)
            if model_type is None or model_type not in self.expected:
                continue
            if run.info.status != "FINISHED":
                failed.add(model_type)
                continue
            absent = missing_metrics(run.data.metrics)
            if absent:
                log.warning(
                    "finished run lacks metrics; it does not compete",
                    extra={"run_id": run.info.run_id, "config_hash": config_hash, "missing": absent},
                )
                continue
            finished.append(
                Candidate(
                    model_type=model_type,
                    run_id=run.info.run_id,
                    experiment=experiment_for(model_type.value),
                    start_time=int(run.info.start_time or 0),
                    metrics=dict(run.data.metrics),
                )
            )
        latest = latest_per_type(finished)
        return latest, failed - set(latest)

    def _check_success_run(self, event: TrainingEvent) -> None:
        """A SUCCESS must name a FINISHED run of this hash and type with the scoring metrics."""
        if not event.run_id:
            raise PoisonMessage("SUCCESS event without run_id")
        run_id = event.run_id
        run = _mlflow(lambda: self.client.get_run(run_id))
        tags = run.data.tags
        if tags.get("config_hash") != event.config_hash or tags.get("model_type") != event.model_type.value:
            raise PoisonMessage(
                f"run {event.run_id} is tagged config_hash={tags.get('config_hash')!r} "
                f"model_type={tags.get('model_type')!r}, not the event's"
            )
        status = run.info.status
        if status in {"RUNNING", "SCHEDULED"}:
            raise TransientError(f"run {event.run_id} is still {status}")
        if status != "FINISHED":
            raise PoisonMessage(f"run {event.run_id} is {status}, not FINISHED")
        absent = missing_metrics(run.data.metrics)
        if absent:
            raise PoisonMessage(f"run {event.run_id} lacks finite {', '.join(absent)}")

    # ------------------------------------------------------------------ promotion steps
    def _finish_if_decided(self, identifier: str, config_hash: str, extra: Mapping[str, object]) -> bool:
        """True when this hash was promoted already; a promotion cut short by a crash is finished."""
        history = promotion.list_history(self.store, self.bucket, identifier, config_hash)
        if not history:
            return False
        if promotion.is_published(self.store, self.bucket, identifier, config_hash):
            log.info("config hash already promoted; nothing to do", extra={**extra, "history": history[-1]})
            self._forget(config_hash)
            return True
        pointer = promotion.load_history(self.store, self.bucket, history[-1])
        log.warning(
            "finishing a promotion interrupted before publishing", extra={**extra, "history": history[-1]}
        )
        self._complete(pointer, extra)
        return True

    def _complete(self, pointer: PromotionPointer, extra: Mapping[str, object]) -> None:
        """Everything after the decision; each step is idempotent."""
        written = promotion.write_current_pointers(self.store, self.bucket, pointer)
        self._move_alias(pointer, extra)
        self.producer.publish(self.settings.TOPIC_MODEL_SELECTED, pointer.identifier, pointer)
        promotion.mark_published(self.store, self.bucket, pointer, self.settings.TOPIC_MODEL_SELECTED)
        self._forget(pointer.config_hash)
        log.info(
            "model promoted",
            extra={
                **extra,
                "identifier": pointer.identifier,
                "run_id": pointer.run_id,
                "winner": pointer.model_type.value,
                "score": pointer.score,
                "pointers": written,
                "missing_model_types": [t.value for t in pointer.missing_model_types],
            },
        )

    def _move_alias(self, pointer: PromotionPointer, extra: Mapping[str, object]) -> None:
        """Point the registered model's `champion` alias at the winner, so the MLflow UI shows it.

        The pointer in the bucket is the contract; a registry that refuses (a RestException) is
        logged, not fatal. An unreachable MLflow is retried like any transient error.
        """
        name = f"{self.settings.REGISTERED_MODEL_PREFIX}{pointer.identifier}"
        alias = self.settings.CHAMPION_ALIAS
        try:
            try:
                self.client.create_registered_model(
                    name, description=f"FLTS champion for {pointer.identifier}"
                )
            except RestException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            versions = self.client.search_model_versions(f"name = '{name}' and run_id = '{pointer.run_id}'")
            version = next((v for v in versions if v.source == pointer.model_uri), None)
            if version is None:
                version = self.client.create_model_version(
                    name,
                    source=pointer.model_uri,
                    run_id=pointer.run_id,
                    tags={"config_hash": pointer.config_hash, "model_type": pointer.model_type.value},
                )
            self.client.set_registered_model_alias(name, alias, version.version)
            log.info(
                "registry alias moved",
                extra={**extra, "registered_model": name, "alias": alias, "version": version.version},
            )
        except MlflowException as exc:
            if mlflow_unreachable(exc):
                raise TransientError(f"MLflow registry unreachable: {exc}") from exc
            log.error(
                "could not move the registry alias; the promotion pointer stands",
                extra={**extra, "registered_model": name, "error": str(exc)},
            )

    # ------------------------------------------------------------------ pending state
    def _pending_for(self, config_hash: str, identifier: str) -> PendingHash:
        pending = self.pending.get(config_hash)
        if pending is None:
            pending = PendingHash(config_hash=config_hash, identifier=identifier, first_seen=self._now())
            promotion.save_pending(self.store, self.bucket, pending)
            self.pending[config_hash] = pending
        return pending

    def _timed_out(self, pending: PendingHash) -> bool:
        elapsed = self.clock() - pending.first_seen.timestamp()
        return elapsed >= self.settings.PROMOTION_TIMEOUT_S

    def _close(self, pending: PendingHash, reason: str) -> None:
        """Stop the timer for a hash that cannot be promoted now; a later event re-opens it."""
        if pending.closed_reason != reason:
            pending.closed_reason = reason
            promotion.save_pending(self.store, self.bucket, pending)

    def _forget(self, config_hash: str) -> None:
        if self.pending.pop(config_hash, None) is not None or self.store.exists(
            self.bucket, promotion.pending_key(config_hash)
        ):
            promotion.delete_pending(self.store, self.bucket, config_hash)
        self._idle_retry_at.pop(config_hash, None)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)


def _model_type_of(run: Run) -> ModelType | None:
    try:
        return ModelType(run.data.tags.get("model_type", ""))
    except ValueError:
        return None


def _mlflow(call: Callable[[], T]) -> T:
    """Run an MLflow call, mapping its errors onto the consumer loop's error policy."""
    try:
        return call()
    except MlflowException as exc:
        if mlflow_unreachable(exc):
            raise TransientError(f"MLflow unreachable: {exc}") from exc
        raise PoisonMessage(f"MLflow refused: {exc.message}") from exc
