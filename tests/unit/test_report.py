"""The main job's report: Locust's final stats and the markdown a person reads."""

from __future__ import annotations

import json
from pathlib import Path

from flts_cli.report import build_report, read_locust_stats, render_markdown
from flts_cli.settings import RunnerSettings
from flts_cli.state import RunOptions, RunState, Stage, StageFailed


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


def test_report_of_a_run_that_failed_early_holds_what_the_stages_got_to(tmp_path: Path) -> None:
    options = RunOptions(
        dataset="LesCorts",
        sample_train_rows=None,
        sample_test_rows=None,
        salt="",
        epochs=None,
        load_users=10,
        load_spawn_rate=10.0,
        load_duration="20s",
        keep_running=False,
        no_skill_gate=False,
        stage_timeout=900.0,
    )
    run = RunState(options, RunnerSettings(), tmp_path)
    run.stages["infrastructure"] = Stage("infrastructure", status="failed", seconds=1.5, error="port taken")
    run.stages["report"] = Stage("report", status="running")
    run.failed = StageFailed("infrastructure", "port taken")

    report = build_report(run, client=None, total_seconds=2.0)

    assert report["status"] == "failed"
    assert (report["failed_stage"], report["error"]) == ("infrastructure", "port taken")
    assert report["stages"] == {"infrastructure": {"status": "failed", "seconds": 1.5, "error": "port taken"}}
    assert report["dataset"] == "LesCorts" and report["config_hash"] is None and report["promoted"] is None
    assert report["models"] == {} and report["load_test"] is None
