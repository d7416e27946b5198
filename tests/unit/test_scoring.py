"""Selection rules: the score, the ranking and its tie-break, the skill gate, the settings."""

from __future__ import annotations

import math

import pytest

from eval_container.settings import EvaluatorSettings
from shared.events import ModelType
from shared.scoring import (
    DEFAULT_WEIGHTS,
    Candidate,
    latest_per_type,
    missing_metrics,
    rank,
    score,
    skill_gate,
)
from shared.settings import SettingsError, load_settings

BASE_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
    "AWS_ACCESS_KEY_ID": "test-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
}


def candidate(
    model_type: ModelType,
    rmse: float,
    mae: float,
    mse: float,
    start_time: int = 1_000,
    run_id: str | None = None,
    baseline: float | None = 1.0,
) -> Candidate:
    metrics = {"test_rmse": rmse, "test_mae": mae, "test_mse": mse}
    if baseline is not None:
        metrics["baseline_test_rmse"] = baseline
    return Candidate(
        model_type=model_type,
        run_id=run_id or f"{model_type.value.lower()}-{start_time}",
        experiment="NonML" if model_type is ModelType.PROPHET else "Default",
        start_time=start_time,
        metrics=metrics,
    )


def test_score_is_the_weighted_sum_of_rmse_mae_mse() -> None:
    metrics = {"test_rmse": 0.2, "test_mae": 0.1, "test_mse": 0.04}
    assert score(metrics) == pytest.approx(0.5 * 0.2 + 0.3 * 0.1 + 0.2 * 0.04)
    assert score(metrics, {"rmse": 1.0, "mae": 0.0, "mse": 0.0}) == pytest.approx(0.2)


def test_score_refuses_missing_or_non_finite_metrics() -> None:
    with pytest.raises(ValueError, match="test_mse"):
        score({"test_rmse": 0.2, "test_mae": 0.1})
    with pytest.raises(ValueError, match="test_rmse"):
        score({"test_rmse": math.nan, "test_mae": 0.1, "test_mse": 0.1})
    assert missing_metrics({"test_rmse": 1.0, "test_mae": math.inf}) == ["test_mae", "test_mse"]


def test_lowest_score_wins_and_scoreboard_is_best_first() -> None:
    board = rank(
        [
            candidate(ModelType.GRU, 0.30, 0.20, 0.09),
            candidate(ModelType.LSTM, 0.10, 0.08, 0.01),
            candidate(ModelType.PROPHET, 0.50, 0.40, 0.25),
        ]
    )
    assert [e.model_type for e in board] == [ModelType.LSTM, ModelType.GRU, ModelType.PROPHET]
    assert [e.score for e in board] == sorted(e.score for e in board)
    assert board[0].score == pytest.approx(0.5 * 0.10 + 0.3 * 0.08 + 0.2 * 0.01)


def test_weights_change_the_winner() -> None:
    # GRU has the lower RMSE, LSTM the lower MAE: the weights decide.
    gru = candidate(ModelType.GRU, 0.10, 0.50, 0.01)
    lstm = candidate(ModelType.LSTM, 0.30, 0.10, 0.09)
    assert rank([gru, lstm], {"rmse": 1.0, "mae": 0.0, "mse": 0.0})[0].model_type is ModelType.GRU
    assert rank([gru, lstm], {"rmse": 0.0, "mae": 1.0, "mse": 0.0})[0].model_type is ModelType.LSTM


def test_exact_tie_goes_to_the_newest_run() -> None:
    older = candidate(ModelType.GRU, 0.2, 0.1, 0.04, start_time=1_000)
    newer = candidate(ModelType.LSTM, 0.2, 0.1, 0.04, start_time=2_000)
    assert rank([older, newer])[0].run_id == newer.run_id
    assert rank([newer, older])[0].run_id == newer.run_id


def test_tie_within_float_noise_still_goes_to_the_newest_run() -> None:
    # 0.1 + 0.2 != 0.3 in floats; such noise must not decide a promotion.
    older = candidate(ModelType.GRU, 0.3, 0.1, 0.04, start_time=1_000)
    newer = candidate(ModelType.LSTM, 0.1 + 0.2, 0.1, 0.04, start_time=2_000)
    assert score(older.metrics) != score(newer.metrics)
    assert rank([older, newer])[0].run_id == newer.run_id


def test_a_clearly_better_older_run_beats_a_newer_one() -> None:
    older = candidate(ModelType.GRU, 0.1, 0.1, 0.01, start_time=1_000)
    newer = candidate(ModelType.LSTM, 0.1001, 0.1, 0.01, start_time=2_000)
    assert rank([older, newer])[0].run_id == older.run_id


def test_only_the_latest_run_of_each_type_competes() -> None:
    old_gru = candidate(ModelType.GRU, 0.01, 0.01, 0.0001, start_time=1_000)
    new_gru = candidate(ModelType.GRU, 0.40, 0.30, 0.16, start_time=3_000)
    lstm = candidate(ModelType.LSTM, 0.20, 0.10, 0.04, start_time=2_000)
    latest = latest_per_type([old_gru, lstm, new_gru])
    assert latest == {ModelType.GRU: new_gru, ModelType.LSTM: lstm}
    assert rank(latest.values())[0].model_type is ModelType.LSTM


def test_skill_gate_passes_only_when_rmse_beats_persistence() -> None:
    assert skill_gate(candidate(ModelType.GRU, 0.09, 0.05, 0.01, baseline=0.10)).passed
    worse = skill_gate(candidate(ModelType.GRU, 0.11, 0.05, 0.01, baseline=0.10))
    assert not worse.passed
    assert "does not beat" in worse.reason and "0.11" in worse.reason
    assert not skill_gate(candidate(ModelType.GRU, 0.10, 0.05, 0.01, baseline=0.10)).passed


def test_skill_gate_refuses_a_run_without_baseline() -> None:
    verdict = skill_gate(candidate(ModelType.LSTM, 0.09, 0.05, 0.01, baseline=None))
    assert not verdict.passed
    assert "baseline_test_rmse" in verdict.reason


def test_settings_parse_expected_types_weights_and_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EXPECTED_MODEL_TYPES", " gru, LSTM ,gru")
    monkeypatch.setenv("SKILL_GATE", "false")
    monkeypatch.setenv("W_MSE", "0")
    settings = load_settings(EvaluatorSettings)
    assert settings.EXPECTED_MODEL_TYPES == [ModelType.GRU, ModelType.LSTM]
    assert settings.SKILL_GATE is False
    assert settings.weights == {"rmse": 0.5, "mae": 0.3, "mse": 0.0}
    assert settings.PROMOTION_TIMEOUT_S == 180.0


def test_settings_defaults_match_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("EXPECTED_MODEL_TYPES", "SKILL_GATE", "W_RMSE", "W_MAE", "W_MSE"):
        monkeypatch.delenv(key, raising=False)
    settings = load_settings(EvaluatorSettings)
    assert settings.EXPECTED_MODEL_TYPES == [ModelType.GRU, ModelType.LSTM, ModelType.PROPHET]
    assert settings.weights == DEFAULT_WEIGHTS
    assert settings.SKILL_GATE is True


def test_settings_name_an_unknown_model_type(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EXPECTED_MODEL_TYPES", "GRU,XGBOOST")
    with pytest.raises(SettingsError) as info:
        load_settings(EvaluatorSettings)
    assert "EXPECTED_MODEL_TYPES" in str(info.value)
