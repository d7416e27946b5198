"""When the evaluator decides, and what a result arriving after a decision changes.

Pure functions of what is known about one config hash; nothing here talks to Kafka, S3 or MLflow.

- First decision: as soon as every expected type succeeded, or once PROMOTION_TIMEOUT_S has
  passed since the first result of the hash, among the types that succeeded by then, whether the
  others failed or never reported at all (a trainer left Pending never does). The note names
  what is missing and why.
- Follow-up decision: a successful run that no earlier decision of the hash scored (a type that
  reported late, failed and then succeeded on a retry, or was trained again because its files
  were gone) is scored with everything else. It is promoted only when it wins the selection
  (passes the gate, beats the champion of the hash) and no configuration decided after this hash
  is live; otherwise the follow-up is a refusal that says why. When the champion itself is no
  longer a candidate (its files are gone, or a newer run of its type replaced it), the winner
  takes the station even if an earlier decision had scored it. Scores of different config
  hashes are not compared: they are measured on different validation rows.
- Unloadable runs: a finished run whose model files are not all in the object store (MLflow can
  list a run whose artifacts are gone) is never a candidate. Its type counts as missing, so a
  first decision waits for it (a trainer retrains such a run) until the timeout; the decision
  then names the run and what it lacks, in its reason and in a failed `model_artifacts` check.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.events import GateCheck, ModelType, PromotionDecision, PromotionPointer
from shared.scoring import SCORE_CHECK, Candidate, Selection, build_decision, gate_checks, select, why_refused

# The check a run fails when its model files are missing from the object store.
ARTIFACTS_CHECK = "model_artifacts"


@dataclass(frozen=True)
class Unloadable:
    """A finished run whose model cannot be loaded: never promotable, whatever it scores.

    `reason` names the run and what it lacks (`shared.mlflow_utils.describe_missing_artifacts`);
    `missing` lists the artifact paths (empty when they could not be listed at all)."""

    candidate: Candidate
    reason: str
    missing: tuple[str, ...] = ()

    def check(self) -> GateCheck:
        return GateCheck(
            name=ARTIFACTS_CHECK,
            model_type=self.candidate.model_type,
            run_id=self.candidate.run_id,
            value=None,
            baseline=None,
            passed=False,
        )


def with_unloadable(selection: Selection, unloadable: Iterable[Unloadable]) -> Selection:
    """`selection` with a failed `model_artifacts` check for each unloadable run, so the decision
    records which runs were left out and why (its reason says so through the note)."""
    checks = [*selection.checks, *(u.check() for u in unloadable)]
    return Selection(selection.winner, selection.scoreboard, checks, selection.reason)


def unloadable_note(unloadable: Iterable[Unloadable]) -> str:
    """The clause a decision's reason gets for the runs left out: '' when there is none."""
    reasons = [f"{u.candidate.model_type.value} ({u.reason})" for u in unloadable]
    return f"not loadable: {', '.join(reasons)}" if reasons else ""


def ready_to_decide(expected: Iterable[ModelType], succeeded: Collection[ModelType], timed_out: bool) -> bool:
    """Decide when every expected type succeeded, or when the timeout passed whatever is missing."""
    return timed_out or all(t in succeeded for t in expected)


def missing_types(expected: Iterable[ModelType], succeeded: Collection[ModelType]) -> list[ModelType]:
    return [t for t in expected if t not in succeeded]


def timeout_note(
    *,
    expected: Sequence[ModelType],
    succeeded: Collection[ModelType],
    failed: Mapping[ModelType, str],
    timeout_s: float,
    unloadable: Mapping[ModelType, Unloadable] | None = None,
) -> str | None:
    """What a decision made without every expected type says about the missing ones; None when
    none is missing. `failed` maps a failed type to its error; `unloadable` a type whose run
    finished but lacks its model files (it is missing from `succeeded`) to that run."""
    missing = missing_types(expected, succeeded)
    if not missing:
        return None
    broken = unloadable or {}
    details = []
    failures = [f"{t.value} ({failed[t]})" for t in missing if t in failed and t not in broken]
    if failures:
        details.append(f"failed: {', '.join(failures)}")
    if clause := unloadable_note(broken[t] for t in missing if t in broken):
        details.append(clause)
    silent = [t.value for t in missing if t not in failed and t not in broken]
    if silent:
        details.append(f"never reported: {', '.join(silent)}")
    detail = "; ".join(details)
    if not succeeded:
        if broken:
            return (
                f"no expected model type has a run whose model can be loaded after {timeout_s:g}s ({detail})"
            )
        return f"no expected model type succeeded within {timeout_s:g}s ({detail})"
    present = ", ".join(sorted(t.value for t in succeeded))
    return (
        f"decided among {present} after {timeout_s:g}s; missing "
        f"{', '.join(t.value for t in missing)} ({detail})"
    )


def unscored(candidates: Iterable[Candidate], decisions: Sequence[PromotionDecision]) -> list[Candidate]:
    """Candidates whose run no decision of the hash has on its scoreboard: the late results."""
    scored = {entry.run_id for decision in decisions for entry in decision.scoreboard}
    return [c for c in candidates if c.run_id not in scored]


def champion_of(decisions: Sequence[PromotionDecision]) -> PromotionDecision | None:
    """The hash's promotion in force: its latest promoted decision (decisions oldest first)."""
    promoted = [d for d in decisions if d.promoted]
    return promoted[-1] if promoted else None


def later_configuration_live(
    live: PromotionPointer | None, config_hash: str, first_decided_at: datetime
) -> bool:
    """True when the live pointer belongs to another config hash promoted after this hash was
    first decided: a late result of an older configuration must not roll the station back."""
    return live is not None and live.config_hash != config_hash and live.timestamp > first_decided_at


def late_decision(
    *,
    identifier: str,
    config_hash: str,
    candidates: Mapping[ModelType, Candidate],
    late: Sequence[Candidate],
    decisions: Sequence[PromotionDecision],
    live: PromotionPointer | None,
    expected: Sequence[ModelType],
    weights: Mapping[str, float],
    gate: bool,
    timestamp: datetime,
    unloadable: Sequence[Unloadable] = (),
) -> PromotionDecision:
    """The follow-up decision once `late` (runs no decision scored yet) joined `candidates`.

    `decisions` are the hash's earlier decisions, oldest first (at least one); `live` is the
    station's live pointer; `unloadable` the runs left out of `candidates` for want of their
    model files.
    """
    if not decisions:
        raise ValueError("a follow-up decision needs an earlier decision of the hash")
    if not late:
        raise ValueError("a follow-up decision needs a result no decision has scored")
    selection = with_unloadable(select(candidates.values(), weights, gate=gate), unloadable)
    missing = missing_types(expected, candidates)
    champion = champion_of(decisions)
    gone = _champion_gone(champion, candidates, unloadable)
    late_ids = {c.run_id for c in late}
    names = ", ".join(c.label for c in late)
    first_at = decisions[0].timestamp.isoformat()
    still = f"; still missing {', '.join(t.value for t in missing)}" if missing else ""
    if broken := unloadable_note(unloadable):
        still += f"; {broken}"
    winner = selection.winner
    refusal: str
    if winner is not None and (winner.run_id in late_ids or gone is not None):
        if later_configuration_live(live, config_hash, decisions[0].timestamp):
            assert live is not None
            refusal = (
                f"{winner.label} reported after the decision of {first_at} and would win, but "
                f"configuration {live.config_hash[:12]}, promoted since, is live and stays{still}"
            )
        else:
            if champion is not None and champion.pointer is not None:
                replaced = (
                    f"replaces the champion {champion.pointer.model_type.value} run "
                    f"{champion.pointer.run_id[:8]}"
                )
                if gone is not None:
                    replaced += f", which {gone}"
            else:
                replaced = "this configuration had no champion"
            if winner.run_id not in late_ids:
                # Scored before and beaten by the champion then; the champion is gone now.
                replaced = f"{winner.label} {replaced}"
            note = f"late result: {names} reported after the decision of {first_at}; {replaced}{still}"
            return build_decision(
                identifier=identifier,
                config_hash=config_hash,
                selection=selection,
                weights=weights,
                skill_gate=gate,
                missing_model_types=missing,
                note=note,
                timestamp=timestamp,
            )
    else:
        losses = [_why_not(c, selection, champion, gate) for c in late]
        refusal = f"late result: {' | '.join(losses)}; reported after the decision of {first_at}{still}"
    return build_decision(
        identifier=identifier,
        config_hash=config_hash,
        selection=Selection(None, selection.scoreboard, selection.checks, refusal),
        weights=weights,
        skill_gate=gate,
        missing_model_types=missing,
        timestamp=timestamp,
    )


def _champion_gone(
    champion: PromotionDecision | None,
    candidates: Mapping[ModelType, Candidate],
    unloadable: Sequence[Unloadable],
) -> str | None:
    """Why the hash's champion can no longer hold the station (its model files are gone, or a
    newer run of its type replaced it, as a trainer does for a run whose files are gone); None
    while it is still a candidate, or when the hash has no champion."""
    if champion is None or champion.run_id is None:
        return None
    if any(c.run_id == champion.run_id for c in candidates.values()):
        return None
    lost = next((u for u in unloadable if u.candidate.run_id == champion.run_id), None)
    if lost is not None:
        return "cannot be loaded any more"
    return "a newer run of its type replaced"


def _why_not(
    candidate: Candidate, selection: Selection, champion: PromotionDecision | None, gate: bool
) -> str:
    """Why a late candidate did not take the station: the gate, no score, or a better champion."""
    checks = gate_checks(candidate)
    entry = next((e for e in selection.scoreboard if e.run_id == candidate.run_id), None)
    if entry is None or entry.score is None:
        return why_refused(candidate, [c for c in checks if c.name == SCORE_CHECK] or checks)
    if gate and not all(c.passed for c in checks):
        return why_refused(candidate, checks)
    winner = selection.winner
    if winner is None:
        return f"{candidate.label} is not promotable: {selection.reason}"
    best = next(e for e in selection.scoreboard if e.run_id == winner.run_id)
    who = "the champion" if champion is not None and champion.run_id == winner.run_id else "the leader"
    return (
        f"{candidate.label} scores {entry.score:.6g}, not better than {who} "
        f"{winner.label} ({best.score:.6g}), which stays"
    )
