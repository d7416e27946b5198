"""`flts run`: drive the whole pipeline end to end on one machine and write a report.

The stages (flts_cli/stages.py) run in order until one fails. Whatever happens (a failed stage,
Ctrl-C, SIGTERM) the report is written and every process the run started is stopped; the exit
status is 0 only when every stage succeeded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from flts_cli import REPO_ROOT, locust_cmd, stages
from flts_cli.fleet import DatasetError, data_dir, resolve_datasets
from flts_cli.services import stop_all
from flts_cli.settings import RunnerSettings
from flts_cli.stack import HOST, PortInUseError, check_port_free, free_port
from flts_cli.state import RunOptions, RunState, Stage, StageError, StageFailed
from shared.events import ModelType
from shared.mlflow_utils import configure_mlflow_client
from shared.settings import load_settings

LOCUST_WEB_PORT = 8089  # Locust's own default, where a user looks first


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", help="run the whole pipeline end to end and write a report")
    run.add_argument(
        "--dataset",
        default="PobleSec",
        help="the stations: a dataset name (<name>.csv with <name>_test.csv in DATA_DIR, default data/), "
        "a comma-separated list of them, or `all`",
    )
    run.add_argument("--sample-train-rows", type=int, default=None, help="train rows (default all)")
    run.add_argument("--sample-test-rows", type=int, default=None, help="test rows (default all)")
    run.add_argument("--salt", default="", help="EXTRA_HASH_SALT: a new salt forces a new config hash")
    run.add_argument("--epochs", type=int, default=None, help="trainer epochs (default: trainer's)")
    run.add_argument(
        "--model-types",
        type=_model_types,
        default=tuple(t.value for t in ModelType),
        help="comma-separated model types to train and expect (default GRU,LSTM,PROPHET)",
    )
    run.add_argument("--load-users", type=int, default=10)
    run.add_argument("--load-spawn-rate", type=float, default=10.0)
    run.add_argument("--load-duration", default="20s", help="Locust run time, e.g. 20s, 1m")
    run.add_argument("--report-dir", type=Path, default=None, help="default reports/<timestamp>")
    run.add_argument("--keep-running", action="store_true", help="leave everything up until Ctrl-C")
    run.add_argument(
        "--no-skill-gate",
        action="store_true",
        help="promote the best validation score even if it does not beat persistence (for tiny samples)",
    )
    run.add_argument("--stage-timeout", type=float, default=900.0, help="seconds allowed per stage")
    run.set_defaults(func=cmd_run)


def _model_types(value: str) -> tuple[str, ...]:
    names = [part.strip().upper() for part in value.split(",") if part.strip()]
    unknown = [name for name in names if name not in ModelType.__members__]
    if not names or unknown:
        known = ", ".join(t.value for t in ModelType)
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {known}, got {value!r}")
    return tuple(dict.fromkeys(names))


def cmd_run(args: argparse.Namespace) -> int:
    try:
        args.datasets = resolve_datasets(args.dataset, data_dir())
    except DatasetError as exc:
        print(f"flts run: {exc}", file=sys.stderr)
        return 2
    settings = load_settings(RunnerSettings)
    # MLflow draws progress bars on artifact downloads; they would break the status line.
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    configure_mlflow_client()
    report_dir = args.report_dir or REPO_ROOT / "reports" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return run_pipeline(RunState(RunOptions.from_args(args), settings, Path(report_dir).resolve()))


def run_pipeline(run: RunState) -> int:
    run.report_dir.mkdir(parents=True, exist_ok=True)
    run.logs_dir.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm(run))
    try:
        for name, step in stages.PIPELINE:
            _run_stage(run, name, step)
        # Every stage got through, but perhaps without some stations.
        run.failed = run.station_failure()
    except StageFailed as exc:
        run.failed = exc
    except KeyboardInterrupt:
        run.failed = StageFailed("interrupted", "stopped by the user")
    finally:
        try:
            _write_report(run)
        finally:
            if run.failed is None and run.options.keep_running:
                _keep_running(run)
            _shutdown(run)
            signal.signal(signal.SIGTERM, previous)
    return run.terminal.outcome(run.failed, run.report_dir / "report.md")


def _run_stage(run: RunState, name: str, step: stages.StageFunction) -> None:
    """Run one stage, timing it and recording its outcome; any error becomes StageFailed."""
    stage = Stage(name, status="running")
    run.stages[name] = stage
    began = time.monotonic()
    run.terminal.update(name, "starting")
    try:
        stage.status = step(run, stage)
    except Exception as exc:
        stage.status = "failed"
        stage.error = str(exc) if isinstance(exc, StageError) else f"{type(exc).__name__}: {exc}"
        raise StageFailed(name, stage.error) from exc
    finally:
        stage.seconds = round(time.monotonic() - began, 2)
        run.terminal.done(stage)


def _write_report(run: RunState) -> None:
    try:
        _run_stage(run, "report", stages.report)
    except StageFailed as exc:
        # The run's own outcome stands; the reason the report is missing goes beside it.
        (run.report_dir / "report-error.txt").write_text(exc.message)


def _interrupt_on_sigterm(run: RunState) -> Callable[[int, FrameType | None], None]:
    """SIGTERM ends the run as Ctrl-C does, so the report and the shutdown still happen."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        run.interrupted.set()
        raise KeyboardInterrupt

    return handler


def _keep_running(run: RunState) -> None:
    web_port = LOCUST_WEB_PORT if _port_is_free(LOCUST_WEB_PORT) else free_port()
    # The same repaired test splits the load_test stage replayed (written again: it is cheap, and
    # this does not depend on how that stage left the folder).
    splits = locust_cmd.repaired_test_splits(run)
    run.start(
        "locust-web",
        locust_cmd.web_command(run.inference_url, web_port),
        locust_cmd.data_env([station.dataset for station in run.active()], splits),
    )
    run.terminal.endpoints(run.inference_url, f"http://{HOST}:{web_port}", run.env)
    try:
        while not run.interrupted.is_set():
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def _shutdown(run: RunState) -> None:
    if run.watcher is not None:
        run.watcher.close()
    stop_all([*run.services, *run.jobs])
    if run.stack is not None:
        run.stack.stop()
        # The embedded stack lives and dies with this run; keep only its logs.
        for log in run.stack.config.state_dir.glob("*.log"):
            shutil.copy(log, run.logs_dir / f"stack-{log.name}")


def _port_is_free(port: int) -> bool:
    try:
        check_port_free(port, "the Locust web UI")
    except PortInUseError:
        return False
    return True
