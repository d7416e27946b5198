"""The main job's report: `report.json` for machines, `report.md` (+ PNGs) for people."""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from flts_cli.fleet import fleet_summary
from shared.events import PromotionDecision, PromotionPointer, model_dict
from shared.mlflow_utils import find_runs
from shared.scoring import DEFAULT_WEIGHTS, missing_metrics, score

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from flts_cli.state import RunState, Station

FORECAST_ARTIFACT = "plots/forecast_down_up.png"
# report key → MLflow metric, per model. `rmse_down`/`rmse_up` are the one-step test RMSE (original
# units), as before validation figures joined them.
MODEL_FIGURES: dict[str, str] = {
    "val_rmse": "val_rmse",
    "val_mae": "val_mae",
    "val_mse": "val_mse",
    "val_rmse_down": "val_rmse_down",
    "val_rmse_up": "val_rmse_up",
    "baseline_val_rmse": "baseline_val_rmse",
    "baseline_val_rmse_down": "baseline_val_rmse_down",
    "baseline_val_rmse_up": "baseline_val_rmse_up",
    "test_rmse": "test_rmse",
    "test_mae": "test_mae",
    "test_mse": "test_mse",
    "rmse_down": "test_rmse_down",
    "rmse_up": "test_rmse_up",
    "test_h30_rmse": "test_h30_rmse",
    "test_h30_rmse_down": "test_h30_rmse_down",
    "test_h30_rmse_up": "test_h30_rmse_up",
    "baseline_test_h30_rmse_down": "baseline_test_h30_rmse_down",
    "baseline_test_h30_rmse_up": "baseline_test_h30_rmse_up",
}
# report key → MLflow metric of persistence, the same rows for every model.
BASELINE_FIGURES: dict[str, str] = {
    "val_rmse": "baseline_val_rmse",
    "val_mae": "baseline_val_mae",
    "val_mse": "baseline_val_mse",
    "val_rmse_down": "baseline_val_rmse_down",
    "val_rmse_up": "baseline_val_rmse_up",
    "test_rmse": "baseline_test_rmse",
    "test_mae": "baseline_test_mae",
    "test_mse": "baseline_test_mse",
    "rmse_down": "baseline_test_rmse_down",
    "rmse_up": "baseline_test_rmse_up",
    "test_h30_rmse": "baseline_test_h30_rmse",
    "test_h30_rmse_down": "baseline_test_h30_rmse_down",
    "test_h30_rmse_up": "baseline_test_h30_rmse_up",
}


def read_locust_stats(prefix: Path) -> dict[str, Any]:
    """Requests, failures, RPS and latency percentiles of the whole swarm.

    Read from Locust's final JSON (`--json-file`), written once at exit from the complete stats;
    its periodic CSV can miss the last requests of a short swarm.
    """
    path = Path(f"{prefix}.json")
    entries = json.loads(path.read_text()) if path.exists() else []
    requests = sum(int(e["num_requests"]) for e in entries)
    failures = sum(int(e["num_failures"]) for e in entries)
    histogram: dict[int, int] = {}
    for entry in entries:
        for millis, count in entry["response_times"].items():
            histogram[int(float(millis))] = histogram.get(int(float(millis)), 0) + int(count)
    stamps = [e["last_request_timestamp"] for e in entries if e.get("last_request_timestamp")]
    starts = [e["start_time"] for e in entries if e.get("start_time")]
    span = max(stamps) - min(starts) if stamps and starts else 0.0
    return {
        "requests": requests,
        "failures": failures,
        "rps": round(requests / span, 1) if span > 0 else 0.0,
        "p50_ms": _percentile(histogram, 0.50),
        "p95_ms": _percentile(histogram, 0.95),
        "p99_ms": _percentile(histogram, 0.99),
        "by_endpoint": {
            f"{e['method']} {e['name']}": {"requests": e["num_requests"], "failures": e["num_failures"]}
            for e in entries
        },
    }


def _percentile(histogram: dict[int, int], fraction: float) -> float | None:
    """The smallest recorded response time (ms) at or below which `fraction` of requests fall."""
    total = sum(histogram.values())
    if not total:
        return None
    seen = 0
    for millis in sorted(histogram):
        seen += histogram[millis]
        if seen >= fraction * total:
            return float(millis)
    return float(max(histogram))


def build_report(run: RunState, client: MlflowClient | None, total_seconds: float) -> dict[str, Any]:
    """The report of `run` as far as it got; the scoreboards come from MLflow when it answers.

    Each station has its entry in `stations` and `fleet` sums them up; a run of one station also
    keeps that station's figures at the top, where they have always been.
    """
    stations = {name: station_report(station, client) for name, station in run.stations.items()}
    report: dict[str, Any] = {
        "status": "failed" if run.failed else "ok",
        "dataset": ",".join(stations),
        "datasets": list(stations),
    }
    if len(stations) == 1:
        only = next(iter(stations.values()))
        report.update({key: only[key] for key in SINGLE_STATION_FIELDS})
    report.update(
        {
            "stages": {
                name: {
                    "status": s.status,
                    "seconds": s.seconds,
                    **({"error": s.error} if s.error else {}),
                    **({"detail": s.detail} if s.detail else {}),
                }
                for name, s in run.stages.items()
                if name != "report"
            },
            "load_test": run.load_test,
            # With several stations: until the last of them was live.
            "trigger_to_live_seconds": run.trigger_to_live_seconds,
            "total_seconds": total_seconds,
            "stations": stations,
            "fleet": fleet_summary(stations),
        }
    )
    if run.failed:
        report["failed_stage"], report["error"] = run.failed.stage, run.failed.message
    return report


# What a one-station report holds at its top, as before the fleet.
SINGLE_STATION_FIELDS = (
    "config_hash",
    "identifier",
    "rows",
    "models",
    "baseline",
    "promoted",
    "decision",
    "score_weights",
)


def station_report(station: Station, client: MlflowClient | None) -> dict[str, Any]:
    """One station's entry: its status, data, scoreboard, decision and promotion."""
    pointer, decision = station.pointer, station.decision
    config_hash = station.claim.config_hash if station.claim is not None else None
    weights = dict(decision.weights) if decision is not None and decision.weights else dict(DEFAULT_WEIGHTS)
    models, baseline = _scoreboard(client, config_hash, weights)
    entry: dict[str, Any] = {
        "status": _station_status(station),
        "identifier": station.claim.identifier if station.claim is not None else None,
        "config_hash": config_hash,
        "rows": station.rows,
        "models": models,
        "baseline": baseline,
        "promoted": (
            {
                "model_type": pointer.model_type.value,
                "run_id": pointer.run_id,
                "score": pointer.score,
                "config_hash": pointer.config_hash,
            }
            if pointer is not None
            else None
        ),
        "decision": _decision_summary(decision),
        "score_weights": weights,
        "trigger_to_live_seconds": station.trigger_to_live_seconds,
    }
    if station.failed is not None:
        entry["failed_stage"], entry["error"] = station.failed.stage, station.failed.message
    return entry


def _station_status(station: Station) -> str:
    """live, refused (by the evaluator), failed (any other stage gave up on it), or pending (the
    run stopped before it got anywhere)."""
    if station.trigger_to_live_seconds is not None:
        return "live"
    if station.decision is not None and station.decision.pointer is None:
        return "refused"
    return "failed" if station.failed is not None else "pending"


def _decision_summary(decision: PromotionDecision | None) -> dict[str, Any] | None:
    """What the evaluator decided and the gate's checks behind it."""
    if decision is None:
        return None
    return {
        "decision": decision.decision.value,
        "model_type": decision.model_type.value if decision.model_type is not None else None,
        "run_id": decision.run_id,
        "reason": decision.reason,
        "skill_gate": decision.skill_gate,
        "checks": [model_dict(check) for check in decision.checks],
        "missing_model_types": [t.value for t in decision.missing_model_types],
        "timestamp": decision.timestamp.isoformat(),
    }


def _scoreboard(
    client: MlflowClient | None, config_hash: str | None, weights: dict[str, float]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each model type's newest run of `config_hash`, and the persistence baseline they logged.

    The score is over the validation figures (the ones the evaluator decides on); the test
    figures are reported beside them.
    """
    models: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    if client is None or not config_hash:
        return models, baseline
    latest: dict[str, Run] = {}
    for logged in find_runs(client, config_hash):
        latest.setdefault(logged.data.tags.get("model_type", "?"), logged)
    for model_type, logged in sorted(latest.items()):
        metrics = logged.data.metrics
        models[model_type] = model_figures(logged.info.run_id, metrics, weights)
        if not baseline and "baseline_test_rmse" in metrics:
            baseline = baseline_figures(metrics)
    return models, baseline


def model_figures(run_id: str, metrics: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, Any]:
    """One model's entry of `models`: its validation score and figures, then its test figures."""
    return {
        "run_id": run_id,
        "score": None if missing_metrics(metrics) else score(metrics, weights),
        **{key: metrics.get(name) for key, name in MODEL_FIGURES.items()},
    }


def baseline_figures(metrics: Mapping[str, float]) -> dict[str, Any]:
    """Persistence's figures, as a run logged them beside its own."""
    return {key: metrics.get(name) for key, name in BASELINE_FIGURES.items()}


def write_report(
    report: dict[str, Any],
    directory: Path,
    client: MlflowClient | None,
    pointers: Mapping[str, PromotionPointer],
) -> None:
    """Write report.json, the charts and report.md; `pointers` are the promotions, per station."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2, default=str))
    images: list[tuple[str, str]] = []
    single = len(report.get("stations") or {}) <= 1
    for name, pointer in pointers.items():
        target = "forecast.png" if single else f"forecast-{name}.png"
        if client is not None and _copy_forecast_plot(client, pointer, directory / target):
            station = "" if single else f"{name}: "
            images.append((f"{station}Forecast vs actual (promoted model, test split)", target))
    if _locust_chart(directory / "locust_stats_history.csv", directory / "load_test.png"):
        images.append(("Load test: throughput and latency", "load_test.png"))
    (directory / "report.md").write_text(render_markdown(report, images))


def render_markdown(report: dict[str, Any], images: list[tuple[str, str]]) -> str:
    stations: dict[str, Any] = report.get("stations") or {}
    lines = [
        "# FLTS pipeline run",
        "",
        f"**Result: {report['status'].upper()}**"
        + (
            # The first line only: a refusal's checks follow as a table.
            f" — failed at `{report.get('failed_stage')}`: {str(report.get('error')).splitlines()[0]}"
            if report.get("error")
            else ""
        ),
        "",
    ]
    if len(stations) > 1:
        lines += [
            f"- stations: {', '.join(f'`{name}`' for name in stations)}",
            f"- trigger → every station live: {report.get('fleet', {}).get('trigger_to_all_live_seconds')} s",
            f"- total: {report.get('total_seconds')} s",
        ]
        lines += _fleet_lines(report.get("fleet") or {}, stations)
        for name, station in stations.items():
            lines += [
                "",
                f"## Station {name}",
                "",
                f"- status: **{station.get('status')}**"
                + (f" at `{station.get('failed_stage')}`" if station.get("failed_stage") else ""),
                f"- identifier `{station.get('identifier')}`, config hash `{station.get('config_hash')}`",
                f"- rows: {station.get('rows')}",
                f"- trigger → promoted model live: {station.get('trigger_to_live_seconds')} s",
            ]
            lines += _decision_lines(station.get("decision"), "###")
            lines += _scoreboard_lines(station, "###")
    else:
        lines += [
            f"- dataset: `{report.get('dataset')}` (identifier `{report.get('identifier')}`)",
            f"- config hash: `{report.get('config_hash')}`",
            f"- rows: {report.get('rows')}",
            f"- trigger → promoted model live: {report.get('trigger_to_live_seconds')} s",
            f"- total: {report.get('total_seconds')} s",
        ]
        lines += _decision_lines(report.get("decision"), "##")
        lines += _scoreboard_lines(report, "##")
        if report.get("fleet"):
            lines += _fleet_lines(report["fleet"], stations)
    lines += _batch_lines(report)
    lines += ["", "## Timeline", "", "| stage | status | seconds |", "|---|---|---|"]
    for name, stage in report.get("stages", {}).items():
        lines.append(f"| {name} | {stage['status']} | {stage['seconds']} |")
    load = report.get("load_test")
    if load:
        lines += [
            "",
            "## Load test (Locust)",
            "",
            f"Spread over {', '.join(f'`{name}`' for name in load.get('stations', []))}.",
            "",
            "| requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|---|---|",
            f"| {load['requests']} | {load['failures']} | {load['rps']} | {load['p50_ms']} | "
            f"{load['p95_ms']} | {load['p99_ms']} |",
        ]
    for title, name in images:
        lines += ["", f"## {title}", "", f"![{title}]({name})"]
    lines += ["", "Service logs: `logs/` beside this file. Machine-readable: `report.json`.", ""]
    return "\n".join(lines)


def _batch_lines(report: dict[str, Any]) -> list[str]:
    """Each station's batch forecast of its test split: the file beside the report, where it is
    stored, and its errors against the actuals (as logged on the champion's run)."""
    detail = (report.get("stages", {}).get("batch_forecast") or {}).get("detail") or {}
    batches = detail.get("stations") or ({report.get("dataset"): detail} if detail.get("object") else {})
    if not batches:
        return []
    lines = [
        "",
        "## Batch forecast (test split)",
        "",
        "Every row of the test split forecast one step ahead by the promoted model, then the horizon "
        "after its last row. RMSE in original units against the actuals, next to persistence's.",
        "",
        "| station | file | stored at | run | rows | RMSE down | persistence | RMSE up | persistence |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, batch in batches.items():
        metrics = batch.get("metrics") or {}
        rows = metrics.get("batch_rows")
        lines.append(
            f"| {name} | [{batch.get('file')}]({batch.get('file')}) | `{batch.get('object')}` | "
            f"`{str(batch.get('run_id'))[:8]}` | {'—' if rows is None else int(rows)} | "
            f"{_big(metrics.get('batch_rmse_down'))} | {_big(metrics.get('baseline_batch_rmse_down'))} | "
            f"{_big(metrics.get('batch_rmse_up'))} | {_big(metrics.get('baseline_batch_rmse_up'))} |"
        )
    return lines


def _fleet_lines(fleet: dict[str, Any], stations: dict[str, Any]) -> list[str]:
    """The fleet summary, then a line per station: what it serves, or why it does not."""
    promoted, refused, failed = fleet.get("promoted", []), fleet.get("refused", {}), fleet.get("failed", {})
    all_live = fleet.get("trigger_to_all_live_seconds")
    lines = [
        "",
        "## Fleet",
        "",
        f"{fleet.get('stations')} station(s): {len(promoted)} promoted, {len(refused)} refused, "
        f"{len(failed)} failed otherwise; live: {', '.join(fleet.get('live', [])) or 'none'}. "
        + (f"Trigger → all live: {all_live} s." if all_live is not None else "Not every station went live."),
        "",
        "| station | status | promoted | run | score | trigger → live s | why not live |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, station in stations.items():
        served = station.get("promoted") or {}
        why = str(station.get("error") or "").splitlines()[:1]
        run_id = f"`{served['run_id'][:8]}`" if served.get("run_id") else "—"
        live_s = station.get("trigger_to_live_seconds")
        lines.append(
            f"| {name} | {station.get('status')} | {served.get('model_type', '—')} | {run_id} | "
            f"{_fmt(served.get('score'))} | {'—' if live_s is None else live_s} | "
            f"{why[0] if why else ''} |"
        )
    return lines


def _decision_lines(decision: dict[str, Any] | None, heading: str) -> list[str]:
    """The evaluator's decision and each check of its gate (validation split)."""
    if not decision:
        return []
    gate = "on" if decision.get("skill_gate", True) else "off"
    lines = [
        "",
        f"{heading} Decision: {decision['decision']}",
        "",
        decision["reason"],
        "",
        f"Gate (skill gate {gate}): on the validation rows (the tail of the train split) a candidate "
        "must beat persistence on `val_rmse_down` and `val_rmse_up` (original units) and on `val_rmse` "
        "(MinMax units, mean of the 11 KPIs).",
        "",
        "| model | run | check | value | persistence | passed |",
        "|---|---|---|---|---|---|",
    ]
    for check in decision.get("checks", []):
        # Per-KPI figures are in original units, the 11-KPI mean in MinMax units.
        shown = _big if str(check["name"]).endswith(("_down", "_up")) else _fmt
        value = "missing" if check["value"] is None else shown(check["value"])
        baseline = "missing" if check["baseline"] is None else shown(check["baseline"])
        lines.append(
            f"| {check['model_type']} | `{str(check['run_id'])[:8]}` | {check['name']} | {value} | "
            f"{baseline} | {'yes' if check['passed'] else '**no**'} |"
        )
    return lines


def _scoreboard_lines(report: dict[str, Any], heading: str) -> list[str]:
    promoted = report.get("promoted") or {}
    models: dict[str, Any] = report.get("models", {})
    base = report.get("baseline") or {}
    lines = [
        "",
        f"{heading} Validation (decides)",
        "",
        "Tail of the train split, one step ahead. Scaled metrics are in train-fit MinMax units "
        "averaged over the 11 KPIs; `down`/`up` RMSE are in original units (bits per 2-minute step). "
        "score = weighted rmse, mae, mse; lower is better.",
        "",
        "| model | run | rmse | mae | mse | score | RMSE down | RMSE up | promoted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model_type, m in models.items():
        star = "**yes**" if m["run_id"] == promoted.get("run_id") else ""
        lines.append(
            f"| {model_type} | `{m['run_id'][:8]}` | {_fmt(m.get('val_rmse'))} | {_fmt(m.get('val_mae'))} | "
            f"{_fmt(m.get('val_mse'))} | {_fmt(m.get('score'))} | {_big(m.get('val_rmse_down'))} | "
            f"{_big(m.get('val_rmse_up'))} | {star} |"
        )
    if base:
        lines.append(
            f"| persistence | — | {_fmt(base.get('val_rmse'))} | {_fmt(base.get('val_mae'))} | "
            f"{_fmt(base.get('val_mse'))} | — | {_big(base.get('val_rmse_down'))} | "
            f"{_big(base.get('val_rmse_up'))} | |"
        )
    lines += [
        "",
        f"{heading} Test (reports)",
        "",
        "The test split, scored once. h1: one step ahead; h30: the 30th step (one hour) of a "
        "recursive forecast. `down`/`up` RMSE in original units.",
        "",
        "| model | run | rmse | mae | mse | down h1 | up h1 | down h30 | up h30 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model_type, m in models.items():
        lines.append(
            f"| {model_type} | `{m['run_id'][:8]}` | {_fmt(m.get('test_rmse'))} | "
            f"{_fmt(m.get('test_mae'))} | {_fmt(m.get('test_mse'))} | {_big(m.get('rmse_down'))} | "
            f"{_big(m.get('rmse_up'))} | "
            f"{_big(m.get('test_h30_rmse_down'))} | {_big(m.get('test_h30_rmse_up'))} |"
        )
    if base:
        lines.append(
            f"| persistence | — | {_fmt(base.get('test_rmse'))} | {_fmt(base.get('test_mae'))} | "
            f"{_fmt(base.get('test_mse'))} | {_big(base.get('rmse_down'))} | {_big(base.get('rmse_up'))} | "
            f"{_big(base.get('test_h30_rmse_down'))} | {_big(base.get('test_h30_rmse_up'))} |"
        )
    return lines


def _copy_forecast_plot(client: MlflowClient, pointer: PromotionPointer, target: Path) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(pointer.run_id, FORECAST_ARTIFACT, tmp)
        except Exception:
            return False
        shutil.copy(local, target)
    return True


def _locust_chart(history: Path, target: Path) -> bool:
    if not history.exists():
        return False
    with history.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("Name") == "Aggregated"]
    if not rows:
        return False
    t0 = int(rows[0]["Timestamp"])
    seconds = [int(r["Timestamp"]) - t0 for r in rows]
    fig, (ax_rps, ax_lat) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax_rps.plot(seconds, [float(r["Requests/s"]) for r in rows], label="requests/s")
    ax_rps.plot(seconds, [float(r["Failures/s"]) for r in rows], label="failures/s", color="red")
    ax_rps.set_ylabel("per second")
    ax_rps.legend(loc="upper left")
    for pct in ("50%", "95%", "99%"):
        ax_lat.plot(seconds, [_number(r.get(pct)) or 0 for r in rows], label=f"p{pct[:-1]}")
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_xlabel("seconds into the swarm")
    ax_lat.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return True


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None
    return number if number is None or math.isfinite(number) else None


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.5f}"


def _big(value: float | None) -> str:
    if value is None:
        return "—"
    # Traffic is in the millions; a figure far below (a stuck counter's zero error) stays legible.
    return f"{value / 1e6:.2f}M" if abs(value) >= 1e6 else f"{value:.4g}"
