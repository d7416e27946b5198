"""Pure functions of model selection: score, ranking with tie-break, the gate, the decision.

Validation decides, test reports: candidates are ranked by a score over their validation figures
(the tail of the train split) and may be promoted only if they beat persistence there; the test
figures travel on the scoreboard for the report and never change the outcome.

Nothing here talks to Kafka, S3 or MLflow, so every rule of promotion is unit-testable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from shared.events import (
    DecisionOutcome,
    GateCheck,
    ModelType,
    PromotionDecision,
    PromotionPointer,
    ScoreboardEntry,
    utcnow,
)

DEFAULT_WEIGHTS: dict[str, float] = {"rmse": 0.5, "mae": 0.3, "mse": 0.2}
# The figures the score is computed from, by weight name.
SCORE_METRICS: dict[str, str] = {"rmse": "val_rmse", "mae": "val_mae", "mse": "val_mse"}
# The gate: each figure against persistence's on the same validation rows. `down` and `up` are
# checked on their own because the 11-KPI mean can hide a model that is worse on the traffic itself.
GATE_METRICS: tuple[tuple[str, str], ...] = (
    ("val_rmse_down", "baseline_val_rmse_down"),
    ("val_rmse_up", "baseline_val_rmse_up"),
    ("val_rmse", "baseline_val_rmse"),
)
TEST_METRICS: dict[str, str] = {"rmse": "test_rmse", "mae": "test_mae", "mse": "test_mse"}
SCORE_CHECK = "score"
# Scores this close are a tie: they come from float sums of the same metrics and should not be
# told apart by rounding noise.
TIE_REL_TOL = 1e-12
TIE_ABS_TOL = 1e-15


@dataclass(frozen=True)
class Candidate:
    """One successful training run competing for promotion."""

    model_type: ModelType
    run_id: str
    experiment: str
    start_time: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    def figure(self, name: str) -> float | None:
        """The metric `name`, or None when it is absent or not finite."""
        return finite(self.metrics.get(name))

    @property
    def label(self) -> str:
        return f"{self.model_type.value} run {self.run_id[:8]}"


@dataclass(frozen=True)
class Selection:
    """What the rules decided among the candidates of one config hash."""

    winner: Candidate | None
    scoreboard: list[ScoreboardEntry]
    checks: list[GateCheck]
    reason: str


def finite(value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def missing_metrics(metrics: Mapping[str, float], names: Iterable[str] = SCORE_METRICS.values()) -> list[str]:
    """Metrics of `names` that are absent or not finite (a NaN score cannot be ranked)."""
    return [name for name in names if finite(metrics.get(name)) is None]


def score(metrics: Mapping[str, float], weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> float:
    """W_RMSE·val_rmse + W_MAE·val_mae + W_MSE·val_mse; lower is better."""
    absent = missing_metrics(metrics)
    if absent:
        raise ValueError(f"cannot score without finite {', '.join(absent)}")
    return sum(weights[key] * float(metrics[name]) for key, name in SCORE_METRICS.items())


def latest_per_type(candidates: Iterable[Candidate]) -> dict[ModelType, Candidate]:
    """Only the newest successful run of each type competes (a retrain replaces its predecessor)."""
    latest: dict[ModelType, Candidate] = {}
    for candidate in candidates:
        current = latest.get(candidate.model_type)
        if current is None or (candidate.start_time, candidate.run_id) > (current.start_time, current.run_id):
            latest[candidate.model_type] = candidate
    return latest


def scoreboard_entry(candidate: Candidate, weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> ScoreboardEntry:
    figures = candidate.metrics
    return ScoreboardEntry(
        model_type=candidate.model_type,
        run_id=candidate.run_id,
        score=None if missing_metrics(figures) else score(figures, weights),
        val_rmse=candidate.figure("val_rmse"),
        val_mae=candidate.figure("val_mae"),
        val_mse=candidate.figure("val_mse"),
        test_rmse=candidate.figure("test_rmse"),
        test_mae=candidate.figure("test_mae"),
        test_mse=candidate.figure("test_mse"),
        start_time=candidate.start_time,
    )


def rank(
    candidates: Iterable[Candidate], weights: Mapping[str, float] = DEFAULT_WEIGHTS
) -> list[ScoreboardEntry]:
    """The scoreboard, best first: lowest validation score wins; a tie goes to the newest run.

    Candidates that cannot be scored come last, newest first. Ties are resolved explicitly rather
    than by a sort key on the raw score, so two scores that differ only by float noise still fall
    to the newest run.
    """
    entries = [scoreboard_entry(c, weights) for c in candidates]
    unscored = [e for e in entries if e.score is None]
    remaining = sorted((e for e in entries if e.score is not None), key=lambda e: e.score or 0.0)
    ordered: list[ScoreboardEntry] = []
    while remaining:
        best = remaining[0].score or 0.0
        tied = [
            e
            for e in remaining
            if math.isclose(e.score or 0.0, best, rel_tol=TIE_REL_TOL, abs_tol=TIE_ABS_TOL)
        ]
        ordered.extend(_newest_first(tied))
        taken = {id(e) for e in tied}
        remaining = [e for e in remaining if id(e) not in taken]
    return ordered + _newest_first(unscored)


def _newest_first(entries: list[ScoreboardEntry]) -> list[ScoreboardEntry]:
    # run_id only makes the order deterministic for identical start times.
    return sorted(entries, key=lambda e: (e.start_time or 0, e.run_id), reverse=True)


def gate_checks(candidate: Candidate) -> list[GateCheck]:
    """The gate's comparisons for `candidate`, plus a failed `score` check when it cannot be ranked.

    A figure or baseline that is missing or not finite fails its comparison: an unmeasured model
    has not shown that it beats persistence.
    """
    checks = []
    for name, baseline_name in GATE_METRICS:
        value, baseline = candidate.figure(name), candidate.figure(baseline_name)
        checks.append(
            GateCheck(
                name=name,
                model_type=candidate.model_type,
                run_id=candidate.run_id,
                value=value,
                baseline=baseline,
                passed=value is not None and baseline is not None and value < baseline,
            )
        )
    if missing_metrics(candidate.metrics):
        checks.append(
            GateCheck(
                name=SCORE_CHECK,
                model_type=candidate.model_type,
                run_id=candidate.run_id,
                value=None,
                baseline=None,
                passed=False,
            )
        )
    return checks


def why_refused(candidate: Candidate, checks: Sequence[GateCheck]) -> str:
    """Each failed check of `candidate`, in words with its figures."""
    parts = []
    for check in checks:
        if check.passed or check.run_id != candidate.run_id:
            continue
        if check.name == SCORE_CHECK:
            parts.append(f"lacks finite {', '.join(missing_metrics(candidate.metrics))}")
        elif check.value is None or check.baseline is None:
            missing = check.name if check.value is None else dict(GATE_METRICS)[check.name]
            parts.append(f"lacks finite {missing}")
        else:
            parts.append(f"{check.name} {check.value:.6g} not below persistence {check.baseline:.6g}")
    return f"{candidate.label}: {'; '.join(parts)}"


def select(
    candidates: Iterable[Candidate],
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    gate: bool = True,
) -> Selection:
    """The winner is the best-scoring candidate that passes the gate; none passing is a refusal.

    With the gate off, the best-scoring candidate wins whatever persistence does; the checks are
    still computed, for the record. A candidate that cannot be scored never wins.
    """
    pool = {c.run_id: c for c in candidates}
    scoreboard = rank(pool.values(), weights)
    checks_of = {run_id: gate_checks(c) for run_id, c in pool.items()}
    checks = [check for entry in scoreboard for check in checks_of[entry.run_id]]
    passed_over: list[str] = []
    for entry in scoreboard:
        candidate = pool[entry.run_id]
        own = checks_of[entry.run_id]
        if entry.score is not None and (not gate or all(c.passed for c in own)):
            return Selection(candidate, scoreboard, checks, _promotion_reason(entry, gate, passed_over))
        passed_over.append(why_refused(candidate, own))
    if not scoreboard:
        return Selection(None, scoreboard, checks, "no candidate to decide on")
    rule = "beats persistence on validation" if gate else "can be scored"
    return Selection(None, scoreboard, checks, f"no candidate {rule}: {' | '.join(passed_over)}")


def _promotion_reason(entry: ScoreboardEntry, gate: bool, passed_over: list[str]) -> str:
    figures = ", ".join(name for name, _ in GATE_METRICS)
    who = f"{entry.model_type.value} run {entry.run_id[:8]}"
    reason = f"{who} has the best validation score {entry.score:.6g}"
    reason += f" and beats persistence on {figures}" if gate else " (skill gate off)"
    if passed_over:
        reason += f"; better-scoring candidates refused: {' | '.join(passed_over)}"
    return reason


def model_uri(run_id: str, model_type: ModelType) -> str:
    return f"runs:/{run_id}/{model_type.value}"


def build_pointer(
    *,
    identifier: str,
    config_hash: str,
    winner: Candidate,
    scoreboard: list[ScoreboardEntry],
    weights: Mapping[str, float],
    missing_model_types: Iterable[ModelType] = (),
    note: str | None = None,
    timestamp: datetime | None = None,
) -> PromotionPointer:
    """The promotion pointer of DESIGN.md for `winner`, whose entry must be on the scoreboard."""
    entry = next((e for e in scoreboard if e.run_id == winner.run_id), None)
    if entry is None:
        raise ValueError(f"winner run {winner.run_id} is not on the scoreboard")
    if entry.score is None or entry.val_rmse is None or entry.val_mae is None or entry.val_mse is None:
        raise ValueError(f"winner run {winner.run_id} has no validation score")
    return PromotionPointer(
        identifier=identifier,
        config_hash=config_hash,
        run_id=winner.run_id,
        model_type=winner.model_type,
        experiment=winner.experiment,
        model_uri=model_uri(winner.run_id, winner.model_type),
        rmse=entry.val_rmse,
        mae=entry.val_mae,
        mse=entry.val_mse,
        score=entry.score,
        weights=dict(weights),
        scoreboard=scoreboard,
        timestamp=timestamp or utcnow(),
        missing_model_types=sorted(set(missing_model_types)),
        note=note,
    )


def build_decision(
    *,
    identifier: str,
    config_hash: str,
    selection: Selection,
    weights: Mapping[str, float],
    skill_gate: bool,
    missing_model_types: Iterable[ModelType] = (),
    note: str | None = None,
    timestamp: datetime | None = None,
) -> PromotionDecision:
    """The decision record of `selection`; a promotion carries its pointer, stamped the same."""
    stamp = timestamp or utcnow()
    missing = sorted(set(missing_model_types))
    reason = f"{selection.reason}; {note}" if note else selection.reason
    winner = selection.winner
    pointer = (
        None
        if winner is None
        else build_pointer(
            identifier=identifier,
            config_hash=config_hash,
            winner=winner,
            scoreboard=selection.scoreboard,
            weights=weights,
            missing_model_types=missing,
            note=note,
            timestamp=stamp,
        )
    )
    return PromotionDecision(
        identifier=identifier,
        config_hash=config_hash,
        decision=DecisionOutcome.REFUSED if winner is None else DecisionOutcome.PROMOTED,
        model_type=None if winner is None else winner.model_type,
        run_id=None if winner is None else winner.run_id,
        reason=reason,
        skill_gate=skill_gate,
        checks=selection.checks,
        scoreboard=selection.scoreboard,
        weights=dict(weights),
        missing_model_types=missing,
        pointer=pointer,
        timestamp=stamp,
    )
