"""The main job's report: Locust's final stats and the markdown a person reads."""

from __future__ import annotations

import json
from pathlib import Path

from flts_cli.report import read_locust_stats, render_markdown


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
