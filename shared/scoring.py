"""Pure functions of model selection: score, ranking with tie-break, skill gate, the pointer.

Nothing here talks to Kafka, S3 or MLflow, so every rule of promotion is unit-testable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from shared.events import ModelType, PromotionPointer, ScoreboardEntry, utcnow

DEFAULT_WEIGHTS: dict[str, float] = {"rmse": 0.5, "mae": 0.3, "mse": 0.2}
REQUIRED_METRICS: tuple[str, ...] = ("test_rmse", "test_mae", "test_mse")
BASELINE_METRIC = "baseline_test_rmse"
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

    @property
    def rmse(self) -> float:
        return float(self.metrics["test_rmse"])

    @property
    def mae(self) -> float:
        return float(self.metrics["test_mae"])

    @property
    def mse(self) -> float:
        return float(self.metrics["test_mse"])


@dataclass(frozen=True)
class SkillVerdict:
    passed: bool
    reason: str


def missing_metrics(metrics: Mapping[str, float]) -> list[str]:
    """Required metrics that are absent or not finite (a NaN score cannot be ranked)."""
    return [
        name for name in REQUIRED_METRICS if name not in metrics or not math.isfinite(float(metrics[name]))
    ]


def score(metrics: Mapping[str, float], weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> float:
    """W_RMSE·test_rmse + W_MAE·test_mae + W_MSE·test_mse; lower is better."""
    absent = missing_metrics(metrics)
    if absent:
        raise ValueError(f"cannot score without finite {', '.join(absent)}")
    return (
        weights["rmse"] * float(metrics["test_rmse"])
        + weights["mae"] * float(metrics["test_mae"])
        + weights["mse"] * float(metrics["test_mse"])
    )


def latest_per_type(candidates: Iterable[Candidate]) -> dict[ModelType, Candidate]:
    """Only the newest successful run of each type competes (a retrain replaces its predecessor)."""
    latest: dict[ModelType, Candidate] = {}
    for candidate in candidates:
        current = latest.get(candidate.model_type)
        if current is None or (candidate.start_time, candidate.run_id) > (current.start_time, current.run_id):
            latest[candidate.model_type] = candidate
    return latest


def rank(
    candidates: Iterable[Candidate], weights: Mapping[str, float] = DEFAULT_WEIGHTS
) -> list[ScoreboardEntry]:
    """The scoreboard, best first: lowest score wins; a tie goes to the newest run.

    Ties are resolved explicitly rather than by a sort key on the raw score, so two scores that
    differ only by float noise still fall to the newest run.
    """
    entries = [
        ScoreboardEntry(
            model_type=c.model_type,
            run_id=c.run_id,
            rmse=c.rmse,
            mae=c.mae,
            mse=c.mse,
            score=score(c.metrics, weights),
            start_time=c.start_time,
        )
        for c in candidates
    ]
    remaining = sorted(entries, key=lambda e: e.score)
    ordered: list[ScoreboardEntry] = []
    while remaining:
        best = remaining[0].score
        tied = [e for e in remaining if math.isclose(e.score, best, rel_tol=TIE_REL_TOL, abs_tol=TIE_ABS_TOL)]
        # Newest first; run_id only makes the order deterministic for identical start times.
        tied.sort(key=lambda e: (e.start_time or 0, e.run_id), reverse=True)
        ordered.extend(tied)
        taken = {id(e) for e in tied}
        remaining = [e for e in remaining if id(e) not in taken]
    return ordered


def skill_gate(candidate: Candidate) -> SkillVerdict:
    """The winner must beat the persistence baseline on test_rmse (strictly)."""
    baseline = candidate.metrics.get(BASELINE_METRIC)
    if baseline is None or not math.isfinite(float(baseline)):
        return SkillVerdict(
            False, f"{candidate.model_type} run {candidate.run_id} has no finite {BASELINE_METRIC}"
        )
    if candidate.rmse < float(baseline):
        return SkillVerdict(
            True, f"test_rmse {candidate.rmse:.6g} beats the persistence baseline {float(baseline):.6g}"
        )
    return SkillVerdict(
        False,
        f"{candidate.model_type} run {candidate.run_id} test_rmse {candidate.rmse:.6g} does not beat "
        f"the persistence baseline {float(baseline):.6g}",
    )


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
    return PromotionPointer(
        identifier=identifier,
        config_hash=config_hash,
        run_id=winner.run_id,
        model_type=winner.model_type,
        experiment=winner.experiment,
        model_uri=model_uri(winner.run_id, winner.model_type),
        rmse=entry.rmse,
        mae=entry.mae,
        mse=entry.mse,
        score=entry.score,
        weights=dict(weights),
        scoreboard=scoreboard,
        timestamp=timestamp or utcnow(),
        missing_model_types=sorted(set(missing_model_types)),
        note=note,
    )
