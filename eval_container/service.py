"""The evaluator: waits for the expected model types of a config hash, then decides.

Validation decides: candidates are ranked by their validation score and the winner is the
best-scoring one that beats persistence on validation (`shared.scoring.select`); when none does,
the decision is a refusal. Either way the decision is an event on `promotion-decisions`.

When (`eval_container.rules`): as soon as every expected type succeeded, or once
PROMOTION_TIMEOUT_S has passed since the first result (SUCCESS or FAILED) of the hash, among the
types that succeeded, whether the others failed or never reported. A run that no decision of the
hash scored yet (a late type) gets a follow-up decision: promoted if it wins, a refusal saying
why if not. Anything else that arrives for a decided hash changes nothing.

What exists: before deciding, each candidate's model files are listed in the object store
(through MLflow, `shared.mlflow_utils.missing_model_artifacts`). A run lacking any is left out
with a WARNING naming what it lacks, and its type counts as missing: the evaluator waits for a
retrain until the timeout, then decides among the rest or refuses, the reason naming the run.
An unreachable MLflow is a transient error (retried), never a refusal.

State lives outside the process so a restart (or a redelivery) changes nothing:
- successes are whatever FINISHED runs MLflow holds for the config hash (tags `config_hash`,
  `model_type`), so no in-memory set has to survive;
- failures and the time of the first result of a hash are kept in a small pending object in the
  promotion bucket (`shared.promotion.PendingHash`);
- the decision objects of a hash name, on their scoreboards, every run already decided on.

Order: decision object → (promotion: history pointer → live pointers → MLflow alias →
`model-selected`) → `promotion-decisions` → `published-<timestamp>.json`. A crash anywhere
leaves the message uncommitted; on redelivery a stored decision is finished, not re-made.
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

from eval_container import rules
from eval_container.settings import EvaluatorSettings
from shared import promotion
from shared.events import ModelType, PromotionDecision, PromotionPointer, TrainingEvent, TrainingStatus
from shared.kafka import EventProducer, MessageContext, PoisonMessage, TransientError
from shared.mlflow_utils import (
    describe_missing_artifacts,
    experiment_for,
    find_runs,
    missing_model_artifacts,
    mlflow_unreachable,
)
from shared.promotion import PendingHash
from shared.scoring import Candidate, build_decision, latest_per_type, select
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
        decisions = self._finish_decided(event.identifier, event.config_hash, extra)
        if decisions:
            self._after_decision(event, decisions, extra)
            return
        if event.status is TrainingStatus.SUCCESS:
            # Checked before any state is kept, so a poison event leaves nothing behind.
            self._check_success_run(event)
            self._pending_for(event.config_hash, event.identifier)
            log.info("training succeeded", extra={**extra, "run_id": event.run_id})
        else:
            pending = self._pending_for(event.config_hash, event.identifier)
            pending.failed[event.model_type.value] = event.error or "training failed (no error given)"
            promotion.save_pending(self.store, self.bucket, pending)
            log.warning("training failed", extra={**extra, "error": event.error, "run_id": event.run_id})
        self.evaluate(event.config_hash, event.identifier, extra)

    def _after_decision(
        self, event: TrainingEvent, decisions: list[PromotionDecision], extra: Mapping[str, object]
    ) -> None:
        """An event for a decided hash: a run no decision scored gets a follow-up decision."""
        scored = {entry.run_id for decision in decisions for entry in decision.scoreboard}
        if event.status is not TrainingStatus.SUCCESS or event.run_id in scored:
            # A redelivery, or a failure after the decision: the decisions stand.
            log.info(
                "config hash already decided; nothing to do",
                extra={**extra, "status": event.status.value, "run_id": event.run_id},
            )
            return
        self._check_success_run(event)
        self.reconsider(event.config_hash, event.identifier, decisions, extra)

    def on_idle(self) -> None:
        """Timer for PROMOTION_TIMEOUT_S: called by the consumer loop whenever a poll is empty."""
        now = self.clock()
        if now < self._next_idle_check:
            return
        self._next_idle_check = now + IDLE_CHECK_INTERVAL_S
        for config_hash, pending in list(self.pending.items()):
            if not self._timed_out(pending) or now < self._idle_retry_at.get(config_hash, 0.0):
                continue
            extra = {"config_hash": config_hash, "identifier": pending.identifier, "trigger": "timeout"}
            try:
                if not self._finish_decided(pending.identifier, config_hash, extra):
                    self.evaluate(config_hash, pending.identifier, extra)
            except Exception:
                # The loop must keep consuming; this hash is tried again later.
                log.exception("timeout evaluation failed; will retry", extra=extra)
                self._idle_retry_at[config_hash] = now + IDLE_ERROR_BACKOFF_S

    # ------------------------------------------------------------------ decision
    def evaluate(
        self, config_hash: str, identifier: str, extra: Mapping[str, object]
    ) -> PromotionDecision | None:
        """Decide when every expected type succeeded, or once the timeout passed whatever is missing."""
        pending = self._pending_for(config_hash, identifier)
        found, failed_in_mlflow = self._candidates(config_hash)
        timed_out = self._timed_out(pending)
        unloadable: dict[ModelType, rules.Unloadable] = {}
        if rules.ready_to_decide(self.expected, found, timed_out):
            # Listed only once a decision is due: each candidate costs a few MLflow calls.
            unloadable = self._unloadable(found, extra)
        candidates = {t: c for t, c in found.items() if t not in unloadable}
        missing = rules.missing_types(self.expected, candidates)
        if not rules.ready_to_decide(self.expected, candidates, timed_out):
            log.info(
                "waiting for model types",
                extra={
                    **extra,
                    "missing": [t.value for t in missing],
                    "failed": sorted(pending.failed),
                    "unloadable": {t.value: u.candidate.run_id for t, u in unloadable.items()},
                    "timeout_s": self.settings.PROMOTION_TIMEOUT_S,
                },
            )
            return None
        failed = {t: "run failed" for t in failed_in_mlflow} | {
            t: pending.failed[t.value] for t in self.expected if t.value in pending.failed
        }
        note = rules.timeout_note(
            expected=self.expected,
            succeeded=candidates,
            failed=failed,
            timeout_s=self.settings.PROMOTION_TIMEOUT_S,
            unloadable=unloadable,
        )
        weights = self.settings.weights
        selection = select(candidates.values(), weights, gate=self.settings.SKILL_GATE)
        decision = build_decision(
            identifier=identifier,
            config_hash=config_hash,
            selection=rules.with_unloadable(selection, unloadable.values()),
            weights=weights,
            skill_gate=self.settings.SKILL_GATE,
            missing_model_types=missing,
            note=note,
            timestamp=self._now(),
        )
        self._record(decision, extra)
        return decision

    def reconsider(
        self,
        config_hash: str,
        identifier: str,
        decisions: list[PromotionDecision],
        extra: Mapping[str, object],
    ) -> PromotionDecision | None:
        """Score the runs no earlier decision scored; None when there is none (nothing changes)."""
        found, _failed = self._candidates(config_hash)
        unloadable = self._unloadable(found, extra)
        candidates = {t: c for t, c in found.items() if t not in unloadable}
        late = rules.unscored(candidates.values(), decisions)
        if not late:
            log.info("config hash already decided; no new result to score", extra=dict(extra))
            return None
        decision = rules.late_decision(
            identifier=identifier,
            config_hash=config_hash,
            candidates=candidates,
            late=late,
            decisions=decisions,
            live=promotion.load_current_pointer(self.store, self.bucket, identifier),
            expected=self.expected,
            weights=self.settings.weights,
            gate=self.settings.SKILL_GATE,
            timestamp=self._now(),
            unloadable=list(unloadable.values()),
        )
        self._record(decision, {**extra, "late": [c.label for c in late]})
        return decision

    def _record(self, decision: PromotionDecision, extra: Mapping[str, object]) -> None:
        """Write the decision object first, then carry it out."""
        key = promotion.write_decision(self.store, self.bucket, decision)
        log.info(
            "decision made",
            extra={
                **extra,
                "decision": decision.decision.value,
                "history": key,
                "run_id": decision.run_id,
                "reason": decision.reason,
                "missing_model_types": [t.value for t in decision.missing_model_types],
            },
        )
        self._complete(decision, extra)

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
            # A finished run lacking metrics still competes: the gate refuses it, with that reason.
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

    def _unloadable(
        self, candidates: Mapping[ModelType, Candidate], extra: Mapping[str, object]
    ) -> dict[ModelType, rules.Unloadable]:
        """The candidates whose model files are not all in the object store, each logged.

        MLflow keeps listing a FINISHED run whose files are gone (an object store that lost its
        data, a restored database), so what exists is asked of the store, never assumed."""
        unloadable: dict[ModelType, rules.Unloadable] = {}
        for model_type, candidate in candidates.items():
            found = self._artifacts_problem(candidate)
            if found is None:
                continue
            unloadable[model_type] = found
            log.warning(
                "run lacks its model artifacts; it cannot be promoted",
                extra={
                    **extra,
                    "run_id": candidate.run_id,
                    "model_type": model_type.value,
                    "missing": list(found.missing),
                    "reason": found.reason,
                },
            )
        return unloadable

    def _artifacts_problem(self, candidate: Candidate) -> rules.Unloadable | None:
        """None when the run's model files are all there; else what it lacks."""
        run_id = candidate.run_id
        try:
            missing = missing_model_artifacts(self.client, run_id, candidate.model_type.value)
        except Exception as exc:
            if mlflow_unreachable(exc):
                raise TransientError(f"MLflow unreachable listing run {run_id}'s artifacts: {exc}") from exc
            if not isinstance(exc, MlflowException):
                raise
            # MLflow answered, and its answer will not change: files it cannot list cannot be
            # loaded either.
            return rules.Unloadable(
                candidate, f"run {run_id}'s artifacts cannot be listed: {exc.message[:500]}"
            )
        if not missing:
            return None
        return rules.Unloadable(candidate, describe_missing_artifacts(run_id, missing), tuple(missing))

    def _check_success_run(self, event: TrainingEvent) -> None:
        """A SUCCESS must name a FINISHED run of this hash and type (its metrics are the gate's)."""
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

    # ------------------------------------------------------------------ decision steps
    def _finish_decided(
        self, identifier: str, config_hash: str, extra: Mapping[str, object]
    ) -> list[PromotionDecision]:
        """The hash's decisions, oldest first (empty when undecided); any cut short by a crash is
        finished first, in order."""
        decisions = promotion.load_decisions(self.store, self.bucket, identifier, config_hash)
        for decision in decisions:
            if promotion.is_published(self.store, self.bucket, decision):
                continue
            log.warning(
                "finishing a decision interrupted before publishing",
                extra={**extra, "decision": decision.decision.value, "run_id": decision.run_id},
            )
            self._complete(decision, extra)
        if decisions:
            self._forget(config_hash)
        return decisions

    def _complete(self, decision: PromotionDecision, extra: Mapping[str, object]) -> None:
        """Everything after the decision; each step is idempotent."""
        topics = self.settings.TOPIC_PROMOTION_DECISIONS
        pointer = decision.pointer
        published = [topics]
        if pointer is not None:
            self._promote(pointer, extra)
            published.insert(0, self.settings.TOPIC_MODEL_SELECTED)
        self.producer.publish(topics, decision.identifier, decision)
        promotion.mark_published(self.store, self.bucket, decision, published)
        self._forget(decision.config_hash)
        if pointer is None:
            log.warning(
                "promotion refused",
                extra={
                    **extra,
                    "identifier": decision.identifier,
                    "reason": decision.reason,
                    "failed_checks": [
                        f"{c.model_type.value}:{c.name}" for c in decision.checks if not c.passed
                    ],
                },
            )

    def _promote(self, pointer: PromotionPointer, extra: Mapping[str, object]) -> None:
        promotion.write_history(self.store, self.bucket, pointer)
        written = promotion.write_current_pointers(self.store, self.bucket, pointer)
        self._move_alias(pointer, extra)
        self.producer.publish(self.settings.TOPIC_MODEL_SELECTED, pointer.identifier, pointer)
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
