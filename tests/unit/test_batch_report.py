"""`flts run`'s report shows the batch stage: the Parquet beside the report, where it is stored,
and its errors, for one station and for a fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flts_cli.report import build_report, render_markdown
from flts_cli.settings import RunnerSettings
from flts_cli.state import RunOptions, RunState, Stage

KEY = "s3://batch-forecasts/LesCorts/" + "ef" * 32 + "/0123456789abcdef.parquet"


def options(*datasets: str) -> RunOptions:
    return RunOptions(
        datasets=datasets,
        sample_train_rows=None,
        sample_test_rows=None,
        salt="",
        epochs=None,
        model_types=("GRU",),
        load_users=10,
        load_spawn_rate=10.0,
        load_duration="20s",
        keep_running=False,
        no_skill_gate=False,
        stage_timeout=900.0,
    )


def batch_detail(file: str) -> dict[str, Any]:
    return {
        "object": KEY,
        "file": file,
        "run_id": "0123456789abcdef",
        "metrics": {
            "batch_rows": 3972.0,
            "batch_rmse_down": 2.5e7,
            "baseline_batch_rmse_down": 3.0e7,
            "batch_rmse_up": 4.0e6,
            "baseline_batch_rmse_up": 5.0e6,
        },
    }


def test_a_one_station_report_links_the_batch_file_and_names_its_object(tmp_path: Path) -> None:
    run = RunState(options("LesCorts"), RunnerSettings(), tmp_path)
    run.stages["batch_forecast"] = Stage(
        "batch_forecast", status="ok", seconds=0.2, detail=batch_detail("batch-forecast.parquet")
    )
    report = build_report(run, client=None, total_seconds=1.0)
    assert report["stages"]["batch_forecast"]["detail"]["object"] == KEY
    text = render_markdown(report, images=[])
    assert "## Batch forecast (test split)" in text
    row = next(
        line for line in text.splitlines() if "[batch-forecast.parquet](batch-forecast.parquet)" in line
    )
    assert f"`{KEY}`" in row and "`01234567`" in row and "| 3972 |" in row
    assert "25.00M" in row and "30.00M" in row and "4.00M" in row
    assert "| batch_forecast | ok |" in text


def test_a_fleet_report_has_a_batch_row_per_station(tmp_path: Path) -> None:
    run = RunState(options("LesCorts", "PobleSec"), RunnerSettings(), tmp_path)
    run.stages["batch_forecast"] = Stage(
        "batch_forecast",
        status="ok",
        seconds=0.2,
        detail={
            "stations": {
                "LesCorts": batch_detail("batch-forecast-LesCorts.parquet"),
                "PobleSec": batch_detail("batch-forecast-PobleSec.parquet"),
            }
        },
    )
    text = render_markdown(build_report(run, client=None, total_seconds=1.0), images=[])
    rows = [line for line in text.splitlines() if "](batch-forecast-" in line]
    assert [row.split("|")[1].strip() for row in rows] == ["LesCorts", "PobleSec"]


def test_a_run_without_a_batch_stage_has_no_batch_section(tmp_path: Path) -> None:
    run = RunState(options("LesCorts"), RunnerSettings(), tmp_path)
    text = render_markdown(build_report(run, client=None, total_seconds=1.0), images=[])
    assert "Batch forecast" not in text
