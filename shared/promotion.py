"""Promotion objects in the `model-promotion` bucket (layout in DESIGN.md).

- `<identifier>/<config_hash>/decision-<timestamp>.json`: the evaluator's decisions for the hash,
  promoted or refused, oldest first by key. Each is written before anything else happens. A hash
  normally has one; a type that reports after a decision made without it (PROMOTION_TIMEOUT_S)
  adds one more, and only a run no earlier decision scored can add one.
- `<identifier>/<config_hash>/promotion-<timestamp>.json`: the pointer of a promotion (history).
- `<identifier>/<config_hash>/published-<timestamp>.json`: written after the decision of the same
  timestamp (and, for a promotion, the pointer) was flushed to Kafka, so a crash between a
  decision and its publish is finished on redelivery, and a redelivery after it is a no-op.
  (`published.json`, from before a hash could have several decisions, marks its first one.)
- `<identifier>/current.json` and `current.json`: the live pointers (read by inference).
- `_evaluator/pending/<config_hash>.json`: the evaluator's waiting state for a config hash
  (first event seen, failed types), so a restart keeps the promotion timeout and failures.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.events import DecisionOutcome, PromotionDecision, PromotionPointer, model_dict, utcnow
from shared.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

CURRENT_NAME = "current.json"
LEGACY_PUBLISHED_NAME = "published.json"
PUBLISHED_PREFIX = "published-"
HISTORY_PREFIX = "promotion-"
DECISION_PREFIX = "decision-"
PENDING_PREFIX = "_evaluator/pending/"


class PendingHash(BaseModel):
    """What the evaluator must remember about a config hash it is still waiting on."""

    model_config = ConfigDict(extra="ignore")

    config_hash: str
    identifier: str
    first_seen: datetime = Field(default_factory=utcnow)
    failed: dict[str, str] = Field(default_factory=dict)


def current_key(identifier: str | None) -> str:
    return f"{identifier}/{CURRENT_NAME}" if identifier else CURRENT_NAME


def history_dir(identifier: str, config_hash: str) -> str:
    return f"{identifier}/{config_hash}/"


def _stamp(timestamp: datetime) -> str:
    # Compact UTC time, microseconds included: keys sort in decision order.
    return timestamp.strftime("%Y%m%dT%H%M%S%fZ")


def history_key(identifier: str, config_hash: str, timestamp: datetime) -> str:
    return f"{history_dir(identifier, config_hash)}{HISTORY_PREFIX}{_stamp(timestamp)}.json"


def decision_key(identifier: str, config_hash: str, timestamp: datetime) -> str:
    return f"{history_dir(identifier, config_hash)}{DECISION_PREFIX}{_stamp(timestamp)}.json"


def published_key(identifier: str, config_hash: str, timestamp: datetime) -> str:
    """The marker that the decision stamped `timestamp` reached Kafka."""
    return f"{history_dir(identifier, config_hash)}{PUBLISHED_PREFIX}{_stamp(timestamp)}.json"


def legacy_published_key(identifier: str, config_hash: str) -> str:
    return f"{history_dir(identifier, config_hash)}{LEGACY_PUBLISHED_NAME}"


def pending_key(config_hash: str) -> str:
    return f"{PENDING_PREFIX}{config_hash}.json"


def is_history_key(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith(HISTORY_PREFIX) and name.endswith(".json")


def is_decision_key(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith(DECISION_PREFIX) and name.endswith(".json")


def _parse_pointer(raw: Any, where: str) -> PromotionPointer | None:
    try:
        return PromotionPointer.model_validate(raw)
    except ValidationError as exc:
        log.error("promotion pointer is not valid; ignoring it", extra={"object": where, "error": str(exc)})
        return None


def load_current_pointer(store: ObjectStore, bucket: str, identifier: str | None) -> PromotionPointer | None:
    """The live pointer for `identifier` (or the global one for None); None when there is none.

    A pointer that does not parse is logged and treated as absent: serving nothing beats serving
    a model nobody can name.
    """
    key = current_key(identifier)
    try:
        raw = store.get_json(bucket, key)
    except ObjectNotFound:
        return None
    except ValueError as exc:
        log.error("promotion pointer is not JSON; ignoring it", extra={"object": key, "error": str(exc)})
        return None
    return _parse_pointer(raw, f"s3://{bucket}/{key}")


def _keys(store: ObjectStore, bucket: str, identifier: str, config_hash: str) -> list[str]:
    try:
        return store.list_keys(bucket, history_dir(identifier, config_hash))
    except ObjectNotFound:
        return []


def list_history(store: ObjectStore, bucket: str, identifier: str, config_hash: str) -> list[str]:
    """Promotion history object keys of one config hash, oldest first."""
    return sorted(k for k in _keys(store, bucket, identifier, config_hash) if is_history_key(k))


def list_decisions(store: ObjectStore, bucket: str, identifier: str, config_hash: str) -> list[str]:
    """Decision object keys of one config hash, oldest first."""
    return sorted(k for k in _keys(store, bucket, identifier, config_hash) if is_decision_key(k))


def load_history(store: ObjectStore, bucket: str, key: str) -> PromotionPointer:
    pointer = _parse_pointer(store.get_json(bucket, key), f"s3://{bucket}/{key}")
    if pointer is None:
        raise ValueError(f"history object s3://{bucket}/{key} is not a promotion pointer")
    return pointer


def write_history(store: ObjectStore, bucket: str, pointer: PromotionPointer) -> str:
    key = history_key(pointer.identifier, pointer.config_hash, pointer.timestamp)
    store.put_json(bucket, key, model_dict(pointer))
    return key


def write_decision(store: ObjectStore, bucket: str, decision: PromotionDecision) -> str:
    key = decision_key(decision.identifier, decision.config_hash, decision.timestamp)
    store.put_json(bucket, key, model_dict(decision))
    return key


def load_decision(store: ObjectStore, bucket: str, key: str) -> PromotionDecision:
    return PromotionDecision.model_validate(store.get_json(bucket, key))


def load_decisions(
    store: ObjectStore, bucket: str, identifier: str, config_hash: str
) -> list[PromotionDecision]:
    """Every decision made for `config_hash`, oldest first; empty when none was made yet.

    A promotion recorded before decision objects existed (only `promotion-*.json`) counts as the
    one decision, so such a hash is never decided from scratch again.
    """
    decisions = list_decisions(store, bucket, identifier, config_hash)
    if decisions:
        return [load_decision(store, bucket, key) for key in decisions]
    history = list_history(store, bucket, identifier, config_hash)
    if not history:
        return []
    pointer = load_history(store, bucket, history[-1])
    return [
        PromotionDecision(
            identifier=pointer.identifier,
            config_hash=pointer.config_hash,
            decision=DecisionOutcome.PROMOTED,
            model_type=pointer.model_type,
            run_id=pointer.run_id,
            reason=f"promoted earlier (s3://{bucket}/{history[-1]})",
            scoreboard=pointer.scoreboard,
            weights=pointer.weights,
            missing_model_types=pointer.missing_model_types,
            pointer=pointer,
            timestamp=pointer.timestamp,
            # Stable across loads, so the record is the same object every time it is read.
            event_id=pointer.event_id,
        )
    ]


def decision_in_force(decisions: list[PromotionDecision]) -> PromotionDecision | None:
    """The decision that stands among a hash's decisions (oldest first): the latest promotion, or
    the latest refusal when none promoted. A late result that lost to the champion is recorded as
    a refusal, and must not make a promoted hash read as refused."""
    promoted = [d for d in decisions if d.promoted]
    if promoted:
        return promoted[-1]
    return decisions[-1] if decisions else None


def latest_decision(
    store: ObjectStore, bucket: str, identifier: str, config_hash: str
) -> PromotionDecision | None:
    """The decision in force for `config_hash` (see `decision_in_force`), or None when none was
    made yet."""
    return decision_in_force(load_decisions(store, bucket, identifier, config_hash))


def write_current_pointers(store: ObjectStore, bucket: str, pointer: PromotionPointer) -> list[str]:
    """Point `<identifier>/current.json` and `current.json` at `pointer`, unless a later promotion
    already lives there (a promotion being finished after a crash must not roll the live model
    back). Returns the keys written."""
    written = []
    for identifier in (pointer.identifier, None):
        key = current_key(identifier)
        live = load_current_pointer(store, bucket, identifier)
        if (
            live is not None
            and live.config_hash != pointer.config_hash
            and live.timestamp > pointer.timestamp
        ):
            log.warning(
                "a later promotion is live; leaving it",
                extra={
                    "object": key,
                    "live_config_hash": live.config_hash,
                    "config_hash": pointer.config_hash,
                },
            )
            continue
        store.put_json(bucket, key, model_dict(pointer))
        written.append(key)
    return written


def is_published(store: ObjectStore, bucket: str, decision: PromotionDecision) -> bool:
    """True once `decision` (and its pointer) reached Kafka."""
    identifier, config_hash = decision.identifier, decision.config_hash
    if store.exists(bucket, published_key(identifier, config_hash, decision.timestamp)):
        return True
    # Before a hash could have several decisions, one `published.json` marked its only one.
    try:
        legacy = store.get_json(bucket, legacy_published_key(identifier, config_hash))
    except ObjectNotFound:
        return False
    except ValueError:
        return True
    if isinstance(legacy, dict) and legacy.get("event_id") == decision.event_id:
        return True
    return not list_decisions(store, bucket, identifier, config_hash)


def mark_published(store: ObjectStore, bucket: str, decision: PromotionDecision, topics: list[str]) -> None:
    store.put_json(
        bucket,
        published_key(decision.identifier, decision.config_hash, decision.timestamp),
        {
            "event_id": decision.event_id,
            "decision": decision.decision.value,
            "run_id": decision.run_id,
            "topics": topics,
            "published_at": utcnow(),
        },
    )


def save_pending(store: ObjectStore, bucket: str, pending: PendingHash) -> None:
    store.put_json(bucket, pending_key(pending.config_hash), model_dict(pending))


def delete_pending(store: ObjectStore, bucket: str, config_hash: str) -> None:
    store.client.delete_object(Bucket=bucket, Key=pending_key(config_hash))


def load_pending(store: ObjectStore, bucket: str) -> dict[str, PendingHash]:
    """Every config hash the evaluator was waiting on when it last stopped."""
    try:
        keys = store.list_keys(bucket, PENDING_PREFIX)
    except ObjectNotFound:
        return {}
    pending: dict[str, PendingHash] = {}
    for key in keys:
        try:
            item = PendingHash.model_validate(store.get_json(bucket, key))
        except (ObjectNotFound, ValueError) as exc:
            # ValidationError is a ValueError; a broken state object must not stop the service.
            log.warning("skipping unreadable pending state", extra={"object": key, "error": str(exc)})
            continue
        pending[item.config_hash] = item
    return pending
