"""The report of a fleet run: a scoreboard per station and the fleet summary."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from flts_cli.fleet import fleet_summary
from flts_cli.report import build_report, render_markdown
from flts_cli.settings import RunnerSettings
from flts_cli.stages import refusal_message
from flts_cli.state import RunOptions, RunState, Stage, StageFailed
from shared.events import (
    DataClaim,
    DecisionOutcome,
    GateCheck,
    ModelType,
    PromotionDecision,
    PromotionPointer,
)
from shared.scoring import DEFAULT_WEIGHTS

STATIONS = ("PobleSec", "LesCorts", "ElBorn")


def options(*datasets: str) -> RunOptions:
    return RunOptions(
        datasets=datasets,
        sample_train_rows=400,
        sample_test_rows=200,
        salt="",
        epochs=1,
        model_types=("GRU",),
        load_users=10,
        load_spawn_rate=10.0,
        load_duration="20s",
        keep_running=False,
        no_skill_gate=False,
        stage_timeout=900.0,
    )


def claim(station: str) -> DataClaim:
    return DataClaim.model_validate(
        {
            "identifier": station,
            "dataset": station,
            "config_hash": hashlib.sha256(station.encode()).hexdigest(),
            "bucket": "processed-data",
            "object": "x/train.parquet",
            "test_object": "x/test.parquet",
            "meta_object": "x/meta.json",
            "size": 1,
            "rows": 400,
            "test_rows": 200,
        }
    )


def pointer(station: str) -> PromotionPointer:
    return PromotionPointer.model_validate(
        {
            "identifier": station,
            "config_hash": claim(station).config_hash,
            "model_type": "GRU",
            "run_id": f"run-{station}",
            "model_uri": f"runs:/run-{station}/model",
            "experiment": "flts",
            "rmse": 0.04,
            "mae": 0.02,
            "mse": 0.002,
            "score": 0.03,
            "weights": DEFAULT_WEIGHTS,
            "scoreboard": [],
        }
    )


def refusal(station: str) -> PromotionDecision:
    check = GateCheck(
        name="val_rmse_down", model_type=ModelType.GRU, run_id="run-x", value=2.0, baseline=1.0, passed=False
    )
    return PromotionDecision(
        identifier=station,
        config_hash=claim(station).config_hash,
        decision=DecisionOutcome.REFUSED,
        reason="no candidate beats persistence on validation",
        checks=[check],
        weights=DEFAULT_WEIGHTS,
    )


def fleet_run(tmp_path: Path) -> RunState:
    """PobleSec and LesCorts live, ElBorn refused by the evaluator."""
    run = RunState(options(*STATIONS), RunnerSettings(), tmp_path)
    for seconds, name in enumerate(STATIONS, start=40):
        station = run.stations[name]
        station.claim = claim(name)
        station.rows = {"train": 400, "test": 200}
        if name == "ElBorn":
            station.decision = refusal(name)
            station.failed = StageFailed("evaluation", refusal_message(refusal(name)))
        else:
            station.pointer = pointer(name)
            station.trigger_to_live_seconds = float(seconds)
    run.stages["evaluation"] = Stage("evaluation", status="partial", seconds=2.0)
    run.stages["inference_live"] = Stage("inference_live", status="ok", seconds=3.0)
    run.trigger_to_live_seconds = 41.0
    run.failed = run.station_failure()
    return run


def test_a_refused_station_fails_the_run_at_evaluation_naming_it_and_why(tmp_path: Path) -> None:
    run = fleet_run(tmp_path)
    assert run.failed is not None and run.failed.stage == "evaluation"
    assert run.failed.message.startswith("station ElBorn (evaluation): the evaluator refused promotion: ")
    assert [s.dataset for s in run.active()] == ["PobleSec", "LesCorts"]


def test_fleet_report_has_each_station_and_the_summary(tmp_path: Path) -> None:
    report = build_report(fleet_run(tmp_path), client=None, total_seconds=90.0)

    assert report["status"] == "failed" and report["failed_stage"] == "evaluation"
    assert report["datasets"] == list(STATIONS) and report["dataset"] == "PobleSec,LesCorts,ElBorn"
    # Per-station figures live under `stations` only; the top is the fleet's.
    assert "promoted" not in report and "config_hash" not in report
    assert report["stations"]["PobleSec"]["promoted"]["run_id"] == "run-PobleSec"
    assert report["stations"]["LesCorts"]["status"] == "live"
    elborn = report["stations"]["ElBorn"]
    assert (elborn["status"], elborn["promoted"], elborn["failed_stage"]) == ("refused", None, "evaluation")
    assert elborn["decision"]["decision"] == "refused"
    assert report["fleet"] == {
        "stations": 3,
        "promoted": ["PobleSec", "LesCorts"],
        "refused": {"ElBorn": "no candidate beats persistence on validation"},
        "failed": {},
        "live": ["PobleSec", "LesCorts"],
        "trigger_to_all_live_seconds": None,
    }


def test_fleet_markdown_has_the_summary_and_a_section_per_station(tmp_path: Path) -> None:
    text = render_markdown(build_report(fleet_run(tmp_path), client=None, total_seconds=90.0), images=[])

    assert "**Result: FAILED** — failed at `evaluation`: station ElBorn (evaluation): the evaluator" in text
    assert "3 station(s): 2 promoted, 1 refused, 0 failed otherwise; live: PobleSec, LesCorts." in text
    assert "Not every station went live." in text
    assert "| PobleSec | live | GRU | `run-Pobl` | 0.03000 | 40.0 |  |" in text
    assert "| ElBorn | refused | — | — | — | — | the evaluator refused promotion: no candidate" in text
    for name in STATIONS:
        assert f"## Station {name}" in text
    assert "### Decision: refused" in text and "| GRU | `run-x` | val_rmse_down | 2 | 1 | **no** |" in text
    assert "| evaluation | partial | 2.0 |" in text


def test_one_station_keeps_its_figures_at_the_top_and_adds_the_summary(tmp_path: Path) -> None:
    run = RunState(options("PobleSec"), RunnerSettings(), tmp_path)
    station = run.stations["PobleSec"]
    station.claim, station.pointer, station.trigger_to_live_seconds = (
        claim("PobleSec"),
        pointer("PobleSec"),
        33.0,
    )
    run.trigger_to_live_seconds = 33.0

    report = build_report(run, client=None, total_seconds=60.0)
    text = render_markdown(report, images=[])

    assert (report["status"], report["dataset"], report["identifier"]) == ("ok", "PobleSec", "PobleSec")
    assert report["promoted"]["run_id"] == "run-PobleSec" and report["rows"] is None
    assert report["config_hash"] == claim("PobleSec").config_hash
    assert report["trigger_to_live_seconds"] == 33.0
    assert report["fleet"]["live"] == ["PobleSec"] and report["fleet"]["trigger_to_all_live_seconds"] == 33.0
    assert "- dataset: `PobleSec` (identifier `PobleSec`)" in text
    assert "## Station" not in text and "Trigger → all live: 33.0 s." in text


def test_fleet_summary_counts_failures_of_other_stages_apart_from_refusals() -> None:
    stations: dict[str, dict[str, Any]] = {
        "A": {"status": "live", "promoted": {"run_id": "a"}, "trigger_to_live_seconds": 50.0},
        "B": {"status": "live", "promoted": {"run_id": "b"}, "trigger_to_live_seconds": 61.5},
        "C": {"status": "failed", "failed_stage": "training", "error": "GRU failed: diverged"},
        "D": {"status": "pending"},
    }
    summary = fleet_summary(stations)
    assert summary["promoted"] == ["A", "B"] and summary["live"] == ["A", "B"]
    assert summary["failed"] == {"C": {"stage": "training", "error": "GRU failed: diverged"}}
    assert summary["refused"] == {} and summary["trigger_to_all_live_seconds"] is None

    live = {name: s for name, s in stations.items() if name in "AB"}
    assert fleet_summary(live)["trigger_to_all_live_seconds"] == 61.5
