"""When the evaluator decides, what the decision says about missing types, and what a late result
changes (eval_container.rules: pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from eval_container import rules
from shared.events import DecisionOutcome, ModelType, PromotionDecision, PromotionPointer
from shared.mlflow_utils import describe_missing_artifacts
from shared.scoring import DEFAULT_WEIGHTS, Candidate, build_decision, select

GRU, LSTM, PROPHET = ModelType.GRU, ModelType.LSTM, ModelType.PROPHET
EXPECTED = [GRU, LSTM, PROPHET]
HASH = "c0" * 32
OTHER_HASH = "d1" * 32
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def candidate(model_type: ModelType, rmse: float, baseline: float = 1.0, start: int = 1) -> Candidate:
    """A run whose validation figures are `rmse` against persistence's `baseline` on every check."""
    figures = {
        "val_rmse": rmse,
        "val_mae": rmse * 0.8,
        "val_mse": rmse * rmse,
        "val_rmse_down": rmse * 100,
        "val_rmse_up": rmse * 50,
        "baseline_val_rmse": baseline,
        "baseline_val_rmse_down": baseline * 100,
        "baseline_val_rmse_up": baseline * 50,
    }
    return Candidate(model_type, f"run-{model_type.value.lower()}-{start}", "Default", start, figures)


def first_decision(*present: Candidate, at: datetime = T0) -> PromotionDecision:
    """The decision the timeout made among `present`."""
    return build_decision(
        identifier="PobleSec",
        config_hash=HASH,
        selection=select(present, DEFAULT_WEIGHTS),
        weights=DEFAULT_WEIGHTS,
        skill_gate=True,
        missing_model_types=rules.missing_types(EXPECTED, {c.model_type for c in present}),
        timestamp=at,
    )


def late(
    decisions: list[PromotionDecision],
    everything: list[Candidate],
    live: PromotionPointer | None = None,
    gate: bool = True,
    unloadable: Sequence[rules.Unloadable] = (),
) -> PromotionDecision:
    pool = {c.model_type: c for c in everything}
    return rules.late_decision(
        identifier="PobleSec",
        config_hash=HASH,
        candidates=pool,
        late=rules.unscored(pool.values(), decisions),
        decisions=decisions,
        live=live,
        expected=EXPECTED,
        weights=DEFAULT_WEIGHTS,
        gate=gate,
        timestamp=T0 + timedelta(minutes=10),
        unloadable=unloadable,
    )


def lost_files(run: Candidate) -> rules.Unloadable:
    """`run` with its weights gone from the object store."""
    missing = [f"{run.model_type.value}/artifacts/model/state_dict.pt"]
    return rules.Unloadable(run, describe_missing_artifacts(run.run_id, missing), tuple(missing))


# ---------------------------------------------------------------- when to decide
def test_decides_at_once_when_every_expected_type_succeeded() -> None:
    assert rules.ready_to_decide(EXPECTED, {GRU, LSTM, PROPHET}, timed_out=False)


def test_waits_while_a_type_is_missing_and_the_timeout_has_not_passed() -> None:
    assert not rules.ready_to_decide(EXPECTED, {GRU, PROPHET}, timed_out=False)
    assert not rules.ready_to_decide(EXPECTED, set(), timed_out=False)


def test_decides_after_the_timeout_even_when_a_type_never_reported() -> None:
    assert rules.ready_to_decide(EXPECTED, {GRU}, timed_out=True)


# ---------------------------------------------------------------- what the note says
def test_note_names_a_type_that_never_reported() -> None:
    note = rules.timeout_note(expected=EXPECTED, succeeded={GRU, PROPHET}, failed={}, timeout_s=180)
    assert note == "decided among GRU, PROPHET after 180s; missing LSTM (never reported: LSTM)"


def test_note_tells_failed_types_from_silent_ones() -> None:
    note = rules.timeout_note(
        expected=EXPECTED, succeeded={GRU}, failed={LSTM: "CUDA out of memory"}, timeout_s=2.5
    )
    assert note == (
        "decided among GRU after 2.5s; missing LSTM, PROPHET "
        "(failed: LSTM (CUDA out of memory); never reported: PROPHET)"
    )


def test_note_when_nothing_succeeded_says_so() -> None:
    note = rules.timeout_note(expected=EXPECTED, succeeded=set(), failed={GRU: "diverged"}, timeout_s=60)
    assert note is not None and note.startswith("no expected model type succeeded within 60s")
    assert "failed: GRU (diverged)" in note and "never reported: LSTM, PROPHET" in note


def test_no_note_when_nothing_is_missing() -> None:
    assert rules.timeout_note(expected=EXPECTED, succeeded=set(EXPECTED), failed={}, timeout_s=1) is None


# ---------------------------------------------------------------- runs whose files are gone
def test_note_names_an_unloadable_run_and_what_it_lacks_not_as_a_failure() -> None:
    broken = lost_files(candidate(LSTM, 0.1))
    note = rules.timeout_note(
        expected=EXPECTED,
        succeeded={GRU},
        # The type failed once before its run finished: what stands now is the missing file.
        failed={LSTM: "CUDA out of memory"},
        timeout_s=3,
        unloadable={LSTM: broken},
    )
    assert note == (
        f"decided among GRU after 3s; missing LSTM, PROPHET (not loadable: LSTM ({broken.reason}); "
        "never reported: PROPHET)"
    )
    assert "LSTM/artifacts/model/state_dict.pt" in broken.reason and broken.candidate.run_id in broken.reason


def test_note_when_only_unloadable_runs_are_left_says_none_can_be_loaded() -> None:
    broken = lost_files(candidate(GRU, 0.1))
    note = rules.timeout_note(
        expected=[GRU], succeeded=set(), failed={}, timeout_s=3, unloadable={GRU: broken}
    )
    headline = "no expected model type has a run whose model can be loaded after 3s"
    assert note == f"{headline} (not loadable: GRU ({broken.reason}))"


def test_unloadable_run_is_recorded_as_a_failed_model_artifacts_check() -> None:
    gru, lstm = candidate(GRU, 0.1), candidate(LSTM, 0.3)
    selection = rules.with_unloadable(select([lstm]), [lost_files(gru)])
    assert selection.winner == lstm
    [check] = [c for c in selection.checks if c.run_id == gru.run_id]
    assert (check.name, check.model_type, check.passed) == (rules.ARTIFACTS_CHECK, GRU, False)
    assert all(c.passed for c in selection.checks if c.run_id == lstm.run_id)


def test_retrained_run_replaces_a_champion_whose_files_are_gone_even_when_it_scores_worse() -> None:
    gru, prophet = candidate(GRU, 0.2), candidate(PROPHET, 0.4)
    decided = first_decision(gru, prophet)
    assert decided.run_id == gru.run_id
    # The trainer found the champion's files gone and trained the same claim again.
    retrained = candidate(GRU, 0.3, start=2)

    follow_up = late([decided], [retrained, prophet])

    assert follow_up.promoted and follow_up.run_id == retrained.run_id
    assert f"replaces the champion GRU run {gru.run_id[:8]}, which a newer run of its type replaced" in (
        follow_up.reason
    )


def test_when_the_champion_cannot_be_loaded_the_best_loadable_candidate_takes_the_station() -> None:
    gru, prophet, lstm = candidate(GRU, 0.3), candidate(PROPHET, 0.4), candidate(LSTM, 0.2)
    decided = first_decision(gru, prophet, lstm)
    assert decided.run_id == lstm.run_id
    # LSTM's files are gone and a retrained GRU reports: it beats PROPHET, so it takes over.
    retrained = candidate(GRU, 0.35, start=2)

    follow_up = late([decided], [retrained, prophet], unloadable=[lost_files(lstm)])

    assert follow_up.promoted and follow_up.run_id == retrained.run_id
    assert f"replaces the champion LSTM run {lstm.run_id[:8]}, which cannot be loaded any more" in (
        follow_up.reason
    )
    assert "not loadable: LSTM (run run-lstm-1 lacks" in follow_up.reason
    assert [c.passed for c in follow_up.checks if c.run_id == lstm.run_id] == [False]


def test_when_the_champion_cannot_be_loaded_a_candidate_scored_before_may_take_the_station() -> None:
    gru, prophet, lstm = candidate(GRU, 0.3), candidate(PROPHET, 0.25), candidate(LSTM, 0.2)
    decided = first_decision(gru, prophet, lstm)
    retrained = candidate(GRU, 0.35, start=2)

    follow_up = late([decided], [retrained, prophet], unloadable=[lost_files(lstm)])

    # PROPHET lost to LSTM in the first decision; with LSTM gone it is the best that loads.
    assert follow_up.promoted and follow_up.run_id == prophet.run_id
    assert f"PROPHET run {prophet.run_id[:8]} replaces the champion LSTM run" in follow_up.reason


def test_a_champion_that_still_loads_keeps_the_station_against_a_worse_late_run() -> None:
    gru, prophet, lstm = candidate(GRU, 0.3), candidate(PROPHET, 0.25), candidate(LSTM, 0.2)
    decided = first_decision(gru, prophet, lstm)
    retrained = candidate(GRU, 0.35, start=2)

    follow_up = late([decided], [retrained, prophet, lstm])

    assert follow_up.decision is DecisionOutcome.REFUSED
    assert "not better than the champion LSTM run" in follow_up.reason


# ---------------------------------------------------------------- late results
def test_only_runs_no_decision_scored_are_late() -> None:
    gru, prophet, lstm = candidate(GRU, 0.3), candidate(PROPHET, 0.4), candidate(LSTM, 0.2)
    decided = first_decision(gru, prophet)
    assert rules.unscored([gru, prophet, lstm], [decided]) == [lstm]
    # Once a follow-up scored it, the same run is no longer late: a redelivery decides nothing.
    again = late([decided], [gru, prophet, lstm])
    assert rules.unscored([gru, prophet, lstm], [decided, again]) == []


def test_late_type_that_beats_the_champion_is_promoted_and_says_whom_it_replaces() -> None:
    gru, prophet, lstm = candidate(GRU, 0.3), candidate(PROPHET, 0.4), candidate(LSTM, 0.2)
    decided = first_decision(gru, prophet)
    assert decided.promoted and decided.run_id == gru.run_id and decided.missing_model_types == [LSTM]

    follow_up = late([decided], [gru, prophet, lstm])

    assert follow_up.decision is DecisionOutcome.PROMOTED
    assert (follow_up.model_type, follow_up.run_id) == (LSTM, lstm.run_id)
    assert follow_up.missing_model_types == []
    assert "late result: LSTM run" in follow_up.reason
    assert f"replaces the champion GRU run {gru.run_id[:8]}" in follow_up.reason
    assert follow_up.pointer is not None and follow_up.pointer.note is not None
    assert {e.run_id for e in follow_up.scoreboard} == {gru.run_id, prophet.run_id, lstm.run_id}


def test_late_type_that_scores_worse_than_the_champion_is_recorded_as_a_refusal() -> None:
    gru, prophet, lstm = candidate(GRU, 0.3), candidate(PROPHET, 0.4), candidate(LSTM, 0.35)
    decided = first_decision(gru, prophet)

    follow_up = late([decided], [gru, prophet, lstm])

    assert follow_up.decision is DecisionOutcome.REFUSED and follow_up.pointer is None
    assert "not better than the champion GRU run" in follow_up.reason
    assert lstm.run_id[:8] in follow_up.reason
    # The record keeps the full scoreboard, the late run included.
    assert [e.model_type for e in follow_up.scoreboard] == [GRU, LSTM, PROPHET]


def test_late_type_with_a_better_score_that_fails_the_gate_is_refused_with_the_failed_check() -> None:
    gru, prophet = candidate(GRU, 0.3), candidate(PROPHET, 0.4)
    # Best score of all, but no better than persistence (baseline 0.1): the gate refuses it.
    lstm = candidate(LSTM, 0.2, baseline=0.1)
    follow_up = late([first_decision(gru, prophet)], [gru, prophet, lstm])

    assert follow_up.decision is DecisionOutcome.REFUSED
    assert "not below persistence" in follow_up.reason
    # With the gate off the same run wins.
    assert late([first_decision(gru, prophet)], [gru, prophet, lstm], gate=False).run_id == lstm.run_id


def test_late_type_after_a_refusal_is_promoted_when_it_passes_the_gate() -> None:
    # Everything present at the timeout lost to persistence: no champion for this configuration.
    gru = candidate(GRU, 0.3, baseline=0.2)
    refused = first_decision(gru)
    assert refused.decision is DecisionOutcome.REFUSED
    lstm = candidate(LSTM, 0.1)

    follow_up = late([refused], [gru, lstm])

    assert follow_up.promoted and follow_up.run_id == lstm.run_id
    assert "this configuration had no champion" in follow_up.reason
    assert follow_up.missing_model_types == [PROPHET]
    assert "still missing PROPHET" in follow_up.reason


def test_late_winner_never_displaces_a_configuration_promoted_after_this_one() -> None:
    gru, prophet, lstm = candidate(GRU, 0.3), candidate(PROPHET, 0.4), candidate(LSTM, 0.2)
    decided = first_decision(gru, prophet)
    assert decided.pointer is not None
    newer = decided.pointer.model_copy(
        update={"config_hash": OTHER_HASH, "timestamp": T0 + timedelta(minutes=5)}
    )

    follow_up = late([decided], [gru, prophet, lstm], live=newer)

    assert follow_up.decision is DecisionOutcome.REFUSED
    assert f"configuration {OTHER_HASH[:12]}, promoted since, is live" in follow_up.reason


def test_late_winner_may_replace_a_configuration_promoted_before_this_one_was_decided() -> None:
    gru = candidate(GRU, 0.3, baseline=0.2)
    refused = first_decision(gru)
    older = first_decision(candidate(GRU, 0.1), at=T0 - timedelta(days=1)).pointer
    assert older is not None
    older = older.model_copy(update={"config_hash": OTHER_HASH})

    follow_up = late([refused], [gru, candidate(LSTM, 0.1)], live=older)

    assert follow_up.promoted


def test_champion_is_the_latest_promotion_of_the_hash() -> None:
    gru, prophet, lstm = candidate(GRU, 0.3), candidate(PROPHET, 0.4), candidate(LSTM, 0.2)
    decided = first_decision(gru, prophet)
    promoted_late = late([decided], [gru, prophet, lstm])
    refusal = first_decision(candidate(GRU, 0.3, baseline=0.2))
    assert rules.champion_of([decided, promoted_late]) == promoted_late
    assert rules.champion_of([refusal]) is None


def test_a_follow_up_needs_an_earlier_decision_and_a_late_run() -> None:
    gru = candidate(GRU, 0.3)
    with pytest.raises(ValueError, match="earlier decision"):
        late([], [gru])
    with pytest.raises(ValueError, match="no decision has scored"):
        late([first_decision(gru)], [gru])
