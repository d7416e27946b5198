"""The main job's report: Locust's final stats and the markdown a person reads."""

from __future__ import annotations

import json
from pathlib import Path

from flts_cli.report import baseline_figures, build_report, model_figures, read_locust_stats, render_markdown
from flts_cli.settings import RunnerSettings
from flts_cli.stages import refusal_message
from flts_cli.state import RunOptions, RunState, Stage, StageFailed
from shared.events import DecisionOutcome, GateCheck, ModelType, PromotionDecision
from shared.scoring import DEFAULT_WEIGHTS

CONFIG_HASH = "ef" * 32


def test_locust_stats_merge_endpoints_and_take_percentiles_from_the_histogram(tmp_path: Path) -> None:
    entries = [
        {
            "name": "/predict",
            "method": "POST",
            "num_requests": 90,
            "num_failures": 0,
            "response_times": {"2": 50, "3": 39, "40": 1},
            "start_time": 100.0,
            "last_request_timestamp": 110.0,
        },
        {
            "name": "/healthz",
            "method": "GET",
            "num_requests": 10,
            "num_failures": 1,
            "response_times": {"1": 10},
            "start_time": 100.5,
            "last_request_timestamp": 109.0,
        },
    ]
    (tmp_path / "locust.json").write_text(json.dumps(entries))

    stats = read_locust_stats(tmp_path / "locust")

    assert stats["requests"] == 100
    assert stats["failures"] == 1
    assert stats["rps"] == 10.0
    assert stats["p50_ms"] == 2.0
    assert stats["p95_ms"] == 3.0
    assert stats["p99_ms"] == 3.0
    assert stats["by_endpoint"]["GET /healthz"] == {"requests": 10, "failures": 1}


def test_missing_locust_output_reads_as_no_requests(tmp_path: Path) -> None:
    stats = read_locust_stats(tmp_path / "absent")
    assert stats["requests"] == 0 and stats["p99_ms"] is None


def test_failed_run_report_names_the_failing_stage() -> None:
    report = {
        "status": "failed",
        "failed_stage": "training",
        "error": "LSTM failed: loss diverged",
        "stages": {"training": {"status": "failed", "seconds": 3.0}},
        "models": {},
    }
    text = render_markdown(report, images=[])
    assert "FAILED" in text and "`training`" in text and "loss diverged" in text


def options() -> RunOptions:
    return RunOptions(
        datasets=("LesCorts",),
        sample_train_rows=None,
        sample_test_rows=None,
        salt="",
        epochs=None,
        model_types=("GRU", "LSTM", "PROPHET"),
        load_users=10,
        load_spawn_rate=10.0,
        load_duration="20s",
        keep_running=False,
        no_skill_gate=False,
        stage_timeout=900.0,
    )


def gru_check(name: str, value: float, baseline: float) -> GateCheck:
    return GateCheck(
        name=name,
        model_type=ModelType.GRU,
        run_id="run-gru-1",
        value=value,
        baseline=baseline,
        passed=value < baseline,
    )


def refusal() -> PromotionDecision:
    return PromotionDecision(
        identifier="LesCorts",
        config_hash=CONFIG_HASH,
        decision=DecisionOutcome.REFUSED,
        reason="no candidate beats persistence on validation: "
        "GRU run run-gru-: val_rmse_up 2.1e+07 not below persistence 1.9e+07",
        checks=[
            gru_check("val_rmse_down", 8.0e7, 9.0e7),
            gru_check("val_rmse_up", 2.1e7, 1.9e7),
            gru_check("val_rmse", 0.041, 0.043),
        ],
        weights=DEFAULT_WEIGHTS,
    )


def test_report_of_a_run_that_failed_early_holds_what_the_stages_got_to(tmp_path: Path) -> None:
    run = RunState(options(), RunnerSettings(), tmp_path)
    run.stages["infrastructure"] = Stage("infrastructure", status="failed", seconds=1.5, error="port taken")
    run.stages["report"] = Stage("report", status="running")
    run.failed = StageFailed("infrastructure", "port taken")

    report = build_report(run, client=None, total_seconds=2.0)

    assert report["status"] == "failed"
    assert (report["failed_stage"], report["error"]) == ("infrastructure", "port taken")
    assert report["stages"] == {"infrastructure": {"status": "failed", "seconds": 1.5, "error": "port taken"}}
    assert report["dataset"] == "LesCorts" and report["config_hash"] is None and report["promoted"] is None
    assert report["models"] == {} and report["load_test"] is None


def test_refused_run_reports_the_decision_with_every_check_in_json_and_markdown(tmp_path: Path) -> None:
    run = RunState(options(), RunnerSettings(), tmp_path)
    run.stages["evaluation"] = Stage(
        "evaluation", status="failed", seconds=0.4, error=refusal_message(refusal())
    )
    run.stations["LesCorts"].decision = refusal()
    run.stations["LesCorts"].failed = StageFailed("evaluation", refusal_message(refusal()))
    run.failed = StageFailed("evaluation", refusal_message(refusal()))

    report = build_report(run, client=None, total_seconds=30.0)
    text = render_markdown(report, images=[])

    decision = report["decision"]
    assert decision["decision"] == "refused" and decision["run_id"] is None and decision["skill_gate"]
    assert [(c["name"], c["passed"]) for c in decision["checks"]] == [
        ("val_rmse_down", True),
        ("val_rmse_up", False),
        ("val_rmse", True),
    ]
    assert report["promoted"] is None and report["failed_stage"] == "evaluation"
    assert "val_rmse_up 2.1e+07 not below persistence 1.9e+07" in report["error"]
    assert "## Decision: refused" in text
    assert "| GRU | `run-gru-` | val_rmse_up | 21.00M | 19.00M | **no** |" in text
    assert "| GRU | `run-gru-` | val_rmse | 0.04100 | 0.04300 | yes |" in text


def test_refusal_message_names_the_reason_and_every_figure() -> None:
    message = refusal_message(refusal())
    assert message.startswith("the evaluator refused promotion: no candidate beats persistence")
    assert "GRU run-gru- val_rmse_up: 2.1e+07 vs persistence 1.9e+07 FAIL" in message
    assert "GRU run-gru- val_rmse_down: 8e+07 vs persistence 9e+07 pass" in message


def test_model_entry_keeps_test_figures_and_adds_validation_and_horizon_30_beside_them() -> None:
    metrics = {
        "val_rmse": 0.04, "val_mae": 0.02, "val_mse": 0.002, "val_rmse_down": 8e7, "val_rmse_up": 1.5e7,
        "baseline_val_rmse": 0.05, "baseline_val_rmse_down": 9e7, "baseline_val_rmse_up": 1.6e7,
        "test_rmse": 0.06, "test_mae": 0.03, "test_mse": 0.004, "test_rmse_down": 7e7, "test_rmse_up": 1.4e7,
        "test_h30_rmse": 0.09, "test_h30_rmse_down": 1.2e8, "test_h30_rmse_up": 2.2e7,
        "baseline_test_h30_rmse": 0.12, "baseline_test_h30_rmse_down": 1.5e8,
        "baseline_test_h30_rmse_up": 2.5e7,
        "baseline_test_rmse": 0.07, "baseline_test_rmse_down": 8e7, "baseline_test_rmse_up": 1.5e7,
    }  # fmt: skip

    entry = model_figures("run-1", metrics, DEFAULT_WEIGHTS)
    base = baseline_figures(metrics)

    # The score is the evaluator's: over the validation figures.
    assert entry["score"] == 0.5 * 0.04 + 0.3 * 0.02 + 0.2 * 0.002
    assert (entry["rmse_down"], entry["rmse_up"], entry["test_rmse"]) == (7e7, 1.4e7, 0.06)
    assert (entry["val_rmse_down"], entry["baseline_val_rmse_down"]) == (8e7, 9e7)
    assert (entry["val_rmse_up"], entry["baseline_val_rmse_up"], entry["baseline_val_rmse"]) == (
        1.5e7,
        1.6e7,
        0.05,
    )
    assert (entry["test_h30_rmse_down"], entry["baseline_test_h30_rmse_down"]) == (1.2e8, 1.5e8)
    assert (entry["test_h30_rmse_up"], entry["baseline_test_h30_rmse_up"]) == (2.2e7, 2.5e7)
    assert (base["rmse_down"], base["test_h30_rmse_up"], base["val_rmse"]) == (8e7, 2.5e7, 0.05)

    report = {"status": "ok", "models": {"GRU": entry}, "baseline": base, "promoted": {"run_id": "run-1"}}
    text = render_markdown(report, images=[])
    assert "| model | run | rmse | mae | mse | down h1 | up h1 | down h30 | up h30 |" in text
    assert "| GRU | `run-1` | 0.06000 | 0.03000 | 0.00400 | 70.00M | 14.00M | 120.00M | 22.00M |" in text
    assert "| persistence | — | 0.07000 | — | — | 80.00M | 15.00M | 150.00M | 25.00M |" in text
    assert "| GRU | `run-1` | 0.04000 | 0.02000 | 0.00200 | 0.02640 | 80.00M | 15.00M | **yes** |" in text
