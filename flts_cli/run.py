"""`flts run`: drive the whole pipeline end to end on one machine and write a report.

Stages: infrastructure → services → preprocess → training → evaluation → inference_live →
load_test → report. Each service runs as its own OS process exactly as its container would;
the runner only triggers the preprocess job and watches Kafka, MLflow and the inference API.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flts_cli.services import ServiceProcess, python_module, stop_all
from flts_cli.settings import RunnerSettings
from flts_cli.stack import (
    LocalStack,
    PortInUseError,
    StackConfig,
    StackError,
    check_port_free,
    free_port,
    venv_bin,
)
from flts_cli.watch import EventWatcher
from shared.events import DataClaim, PromotionPointer, TrainingEvent, TrainingStatus
from shared.kafka import ensure_topics, wait_for_broker
from shared.mlflow_utils import configure_mlflow_client, connect, wait_for_mlflow
from shared.promotion import list_history, load_history
from shared.settings import load_settings
from shared.storage import ObjectStore

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_TYPES = ("GRU", "LSTM", "PROPHET")
TOPICS = ("training-data", "inference-data", "model-training", "model-selected")


class StageFailed(RuntimeError):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


@dataclass
class Stage:
    name: str
    status: str = "pending"
    seconds: float = 0.0
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = commands.add_parser("run", help="run the whole pipeline end to end and write a report")
    run.add_argument("--dataset", default="PobleSec", help="dataset name (data/<name>.csv)")
    run.add_argument("--sample-train-rows", type=int, default=None, help="train rows (default all)")
    run.add_argument("--sample-test-rows", type=int, default=None, help="test rows (default all)")
    run.add_argument("--salt", default="", help="EXTRA_HASH_SALT: a new salt forces a new config hash")
    run.add_argument("--epochs", type=int, default=None, help="trainer epochs (default: trainer's)")
    run.add_argument("--load-users", type=int, default=10)
    run.add_argument("--load-spawn-rate", type=float, default=10.0)
    run.add_argument("--load-duration", default="20s", help="Locust run time, e.g. 20s, 1m")
    run.add_argument("--report-dir", type=Path, default=None, help="default reports/<timestamp>")
    run.add_argument("--keep-running", action="store_true", help="leave everything up until Ctrl-C")
    run.add_argument(
        "--no-skill-gate",
        action="store_true",
        help="promote even if no model beats persistence (for tiny samples)",
    )
    run.add_argument("--stage-timeout", type=float, default=900.0, help="seconds allowed per stage")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(RunnerSettings)
    # MLflow draws progress bars on artifact downloads; they would break the status line.
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    configure_mlflow_client()
    report_dir = args.report_dir or REPO_ROOT / "reports" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    runner = PipelineRun(args, settings, Path(report_dir).resolve())
    return runner.run()


class Progress:
    """One status line on a terminal; occasional plain lines when output is not a terminal."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.tty = sys.stdout.isatty()
        self._last_stage = ""
        self._last_print = 0.0

    def update(self, stage: str, text: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f}s] {stage:<15} {text}"
        if self.tty:
            sys.stdout.write("\r\033[K" + line)
            sys.stdout.flush()
        elif stage != self._last_stage or time.monotonic() - self._last_print > 10:
            # Not a terminal (a log file, CI): a line per stage change and every 10 s at most.
            print(line, flush=True)
            self._last_print = time.monotonic()
        self._last_stage = stage

    def done(self, stage: Stage) -> None:
        mark = {"ok": "ok", "skipped": "skipped"}.get(stage.status, "FAILED")
        line = f"[{time.monotonic() - self.started:7.1f}s] {stage.name:<15} {mark} ({stage.seconds:.1f}s)"
        if stage.error:
            line += f": {stage.error}"
        if self.tty:
            sys.stdout.write("\r\033[K")
        print(line, flush=True)


class PipelineRun:
    def __init__(self, args: argparse.Namespace, settings: RunnerSettings, report_dir: Path) -> None:
        self.args = args
        self.settings = settings
        self.report_dir = report_dir
        self.logs_dir = report_dir / "logs"
        self.started = time.monotonic()
        self.progress = Progress(self.started)
        self.stages: dict[str, Stage] = {}
        self.stack: LocalStack | None = None
        self.services: list[ServiceProcess] = []
        self.env: dict[str, str] = {}
        self.watcher: EventWatcher | None = None
        self.store: ObjectStore | None = None
        self.inference_url = ""
        self.facts: dict[str, Any] = {"dataset": args.dataset}
        self._interrupted = threading.Event()

    # -- orchestration -------------------------------------------------------------------------
    def run(self) -> int:
        self.report_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        failed: StageFailed | None = None
        try:
            for name, step in (
                ("infrastructure", self.start_infrastructure),
                ("services", self.start_services),
                ("preprocess", self.run_preprocess),
                ("training", self.follow_training),
                ("evaluation", self.follow_evaluation),
                ("inference_live", self.wait_inference_live),
                ("load_test", self.run_load_test),
            ):
                self._stage(name, step)
        except StageFailed as exc:
            failed = exc
        except KeyboardInterrupt:
            failed = StageFailed("interrupted", "stopped by the user")
        finally:
            try:
                self._write_report(failed)
            finally:
                if failed is None and self.args.keep_running:
                    self._keep_running()
                self._shutdown()
                signal.signal(signal.SIGTERM, previous)
        if failed is not None:
            print(f"flts run FAILED at {failed.stage}: {failed.message}", file=sys.stderr)
            print(f"report: {self.report_dir / 'report.md'}", file=sys.stderr)
            return 1
        print(
            f"flts run ok in {time.monotonic() - self.started:.1f}s; report: {self.report_dir / 'report.md'}"
        )
        return 0

    def _on_signal(self, *_: object) -> None:
        self._interrupted.set()
        raise KeyboardInterrupt

    def _stage(self, name: str, step: Any) -> None:
        stage = Stage(name, status="running")
        self.stages[name] = stage
        began = time.monotonic()
        self.progress.update(name, "starting")
        try:
            result = step(stage)
            stage.status = result or "ok"
        except StageFailed as exc:
            stage.status, stage.error = "failed", exc.message
            raise
        except Exception as exc:
            stage.status, stage.error = "failed", f"{type(exc).__name__}: {exc}"
            raise StageFailed(name, stage.error) from exc
        finally:
            stage.seconds = round(time.monotonic() - began, 2)
            self.progress.done(stage)

    def _deadline(self) -> float:
        return time.monotonic() + self.args.stage_timeout

    def _check_services(self, stage: str) -> None:
        for service in self.services:
            if service.proc is not None and not service.running and service.name != "preprocess":
                raise StageFailed(
                    stage,
                    f"service {service.name} exited with {service.returncode}; "
                    f"log {service.log_path}:\n{service.log_tail(8)}",
                )

    # -- stages ----------------------------------------------------------------------------------
    def start_infrastructure(self, stage: Stage) -> str:
        if self.settings.external_stack:
            s = self.settings
            assert s.AWS_ACCESS_KEY_ID is not None and s.AWS_SECRET_ACCESS_KEY is not None
            self.env = {
                "KAFKA_BOOTSTRAP_SERVERS": str(s.KAFKA_BOOTSTRAP_SERVERS),
                "MLFLOW_TRACKING_URI": str(s.MLFLOW_TRACKING_URI),
                "MLFLOW_S3_ENDPOINT_URL": str(s.MLFLOW_S3_ENDPOINT_URL),
                "AWS_ACCESS_KEY_ID": s.AWS_ACCESS_KEY_ID.get_secret_value(),
                "AWS_SECRET_ACCESS_KEY": s.AWS_SECRET_ACCESS_KEY.get_secret_value(),
                "AWS_DEFAULT_REGION": "us-east-1",
                "KAFKA_FETCH_WAIT_MAX_MS": "10",
            }
            wait_for_broker(self.env["KAFKA_BOOTSTRAP_SERVERS"], 30)
            wait_for_mlflow(self.env["MLFLOW_TRACKING_URI"], 30)
            stage.detail["mode"] = "external"
        else:
            config = StackConfig(
                kafka_port=free_port(),
                s3_port=free_port(),
                mlflow_port=free_port(),
                state_dir=self.report_dir / "stack",
            )
            self.stack = LocalStack(config)
            try:
                self.stack.start()
            except StackError as exc:
                raise StageFailed("infrastructure", str(exc)) from exc
            self.env = config.service_env()
            stage.detail["mode"] = "embedded"
        ensure_topics(self.env["KAFKA_BOOTSTRAP_SERVERS"], TOPICS)
        self.store = ObjectStore(
            self.env["MLFLOW_S3_ENDPOINT_URL"],
            self.env["AWS_ACCESS_KEY_ID"],
            self.env["AWS_SECRET_ACCESS_KEY"],
        )
        stage.detail["endpoints"] = {
            "kafka": self.env["KAFKA_BOOTSTRAP_SERVERS"],
            "s3": self.env["MLFLOW_S3_ENDPOINT_URL"],
            "mlflow": self.env["MLFLOW_TRACKING_URI"],
        }
        return "ok"

    def _service_env(self, extra: dict[str, str]) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "MLFLOW_", "AWS_"))}
        return {**base, **self.env, "PYTHONPATH": str(REPO_ROOT), "LOG_LEVEL": "INFO", **extra}

    def _spawn(self, name: str, module: str, extra: dict[str, str]) -> ServiceProcess:
        service = ServiceProcess(
            name=name,
            argv=python_module(module),
            env=self._service_env(extra),
            log_path=self.logs_dir / f"{name}.log",
        )
        service.start()
        self.services.append(service)
        return service

    def start_services(self, stage: Stage) -> str:
        trainer_extra: dict[str, str] = {}
        if self.args.epochs is not None:
            trainer_extra["EPOCHS"] = str(self.args.epochs)
        for model_type in ("GRU", "LSTM"):
            self._spawn(
                f"train-{model_type.lower()}", "train_container", {"MODEL_TYPE": model_type, **trainer_extra}
            )
        self._spawn("train-prophet", "nonml_container", {})
        eval_port = free_port()
        self._spawn(
            "evaluator",
            "eval_container",
            {
                "HEALTH_PORT": str(eval_port),
                "SKILL_GATE": "false" if self.args.no_skill_gate else "true",
            },
        )
        inference_port = free_port()
        self.inference_url = f"http://127.0.0.1:{inference_port}"
        self._spawn(
            "inference",
            "inference_container",
            {"INFERENCE_HOST": "127.0.0.1", "INFERENCE_PORT": str(inference_port)},
        )
        # Start watching before anything is triggered; the first group join takes seconds.
        self.watcher = EventWatcher(
            self.env["KAFKA_BOOTSTRAP_SERVERS"],
            {
                "training-data": DataClaim,
                "model-training": TrainingEvent,
                "model-selected": PromotionPointer,
            },
            since=datetime.now(UTC),
        )
        deadline = time.monotonic() + 120
        pending = {
            "inference": f"{self.inference_url}/healthz",
            "evaluator": f"http://127.0.0.1:{eval_port}/healthz",
        }
        while pending:
            self._check_services("services")
            for name, url in list(pending.items()):
                if _http_json(url) is not None:
                    del pending[name]
            if time.monotonic() > deadline:
                raise StageFailed("services", f"not healthy after 120s: {', '.join(pending)}")
            self.progress.update("services", f"waiting for {', '.join(pending) or 'trainers'}")
            time.sleep(0.3)
        stage.detail["inference_url"] = self.inference_url
        stage.detail["processes"] = {s.name: s.proc.pid for s in self.services if s.proc is not None}
        return "ok"

    def run_preprocess(self, stage: Stage) -> str:
        extra = {"DATASET_NAME": self.args.dataset, "EXTRA_HASH_SALT": self.args.salt}
        if self.args.sample_train_rows:
            extra["SAMPLE_TRAIN_ROWS"] = str(self.args.sample_train_rows)
        if self.args.sample_test_rows:
            extra["SAMPLE_TEST_ROWS"] = str(self.args.sample_test_rows)
        self.trigger_time = datetime.now(UTC)
        self.trigger_monotonic = time.monotonic()
        job = ServiceProcess(
            name="preprocess",
            argv=python_module("preprocess_container"),
            env=self._service_env(extra),
            log_path=self.logs_dir / "preprocess.log",
        )
        job.start()
        code = job.wait(self.args.stage_timeout)
        if code is None:
            job.kill()
            raise StageFailed("preprocess", f"did not finish in {self.args.stage_timeout:.0f}s")
        if code != 0:
            raise StageFailed("preprocess", f"exit code {code}:\n{job.log_tail(8)}")
        claim = self._await_claim()
        assert self.store is not None
        meta = self.store.get_json(claim.bucket, claim.meta_object)
        created = datetime.fromisoformat(str(meta.get("created_at")))
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        self.claim = claim
        self.reused = created < self.trigger_time
        self.facts.update(
            config_hash=claim.config_hash,
            identifier=claim.identifier,
            rows={"train": claim.rows, "test": claim.test_rows or meta.get("rows", {}).get("test")},
        )
        stage.detail.update(config_hash=claim.config_hash, reused_processed_data=self.reused)
        return "ok"

    def _await_claim(self) -> DataClaim:
        assert self.watcher is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = self.watcher.poll(0.5)
            if got and got[0] == "training-data":
                claim = got[1]
                assert isinstance(claim, DataClaim)
                if claim.dataset == self.args.dataset:
                    return claim
        raise StageFailed("preprocess", "the job exited 0 but no training-data claim arrived in 60s")

    def _already_promoted(self) -> PromotionPointer | None:
        """The pointer of an earlier promotion of this config hash, if there was one."""
        assert self.store is not None
        keys = list_history(self.store, "model-promotion", self.claim.identifier, self.claim.config_hash)
        return load_history(self.store, "model-promotion", keys[-1]) if keys else None

    def follow_training(self, stage: Stage) -> str:
        self.previous_promotion = self._already_promoted()
        if self.previous_promotion is not None:
            stage.detail["note"] = "config hash already trained and promoted; nothing retrained"
            return "skipped"
        assert self.watcher is not None
        status: dict[str, str] = dict.fromkeys(MODEL_TYPES, "waiting")
        self.training_events: dict[str, TrainingEvent] = {}
        self.early_pointer: PromotionPointer | None = None
        client = connect(self.env["MLFLOW_TRACKING_URI"])
        epochs: dict[str, str] = {}
        last_epoch_check = 0.0
        deadline = self._deadline()
        while any(s != "SUCCESS" for s in status.values()):
            self._check_services("training")
            if time.monotonic() > deadline:
                raise StageFailed("training", f"timed out; status {status}")
            got = self.watcher.poll(0.3)
            if got:
                _topic, event = got
                if isinstance(event, TrainingEvent) and event.config_hash == self.claim.config_hash:
                    status[event.model_type.value] = event.status.value
                    self.training_events[event.model_type.value] = event
                    if event.status == TrainingStatus.FAILED:
                        raise StageFailed("training", f"{event.model_type.value} failed: {event.error}")
                elif isinstance(event, PromotionPointer) and event.config_hash == self.claim.config_hash:
                    self.early_pointer = event
            if time.monotonic() - last_epoch_check > 2:
                last_epoch_check = time.monotonic()
                epochs = _epoch_progress(client, self.training_events, status)
            self.progress.update(
                "training",
                "  ".join(f"{t}: {epochs.get(t, status[t].lower())}" for t in MODEL_TYPES),
            )
        stage.detail["runs"] = {t: e.run_id for t, e in self.training_events.items()}
        return "ok"

    def follow_evaluation(self, stage: Stage) -> str:
        if self.previous_promotion is not None:
            self.pointer = self.previous_promotion
            stage.detail["note"] = "promotion of this config hash reused"
            return "skipped"
        if self.early_pointer is not None:
            self.pointer = self.early_pointer
            return "ok"
        assert self.watcher is not None
        deadline = self._deadline()
        while time.monotonic() < deadline:
            self._check_services("evaluation")
            got = self.watcher.poll(0.3)
            if got and isinstance(got[1], PromotionPointer) and got[1].config_hash == self.claim.config_hash:
                self.pointer = got[1]
                stage.detail.update(model_type=self.pointer.model_type.value, run_id=self.pointer.run_id)
                return "ok"
            self.progress.update("evaluation", "waiting for the evaluator's promotion")
        raise StageFailed(
            "evaluation", "no model-selected event for this config hash (see logs/evaluator.log)"
        )

    def wait_inference_live(self, stage: Stage) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self._check_services("inference_live")
            info = _http_json(f"{self.inference_url}/model")
            if info and info.get("run_id") == self.pointer.run_id:
                self.facts["trigger_to_live_seconds"] = round(time.monotonic() - self.trigger_monotonic, 2)
                stage.detail["trigger_to_live_seconds"] = self.facts["trigger_to_live_seconds"]
                return "ok"
            self.progress.update(
                "inference_live", f"waiting for inference to serve {self.pointer.run_id[:8]}"
            )
            time.sleep(0.3)
        raise StageFailed("inference_live", f"inference did not serve run {self.pointer.run_id} within 120s")

    def run_load_test(self, stage: Stage) -> str:
        prefix = self.report_dir / "locust"
        argv = [
            venv_bin("locust"),
            "-f",
            str(REPO_ROOT / "locust" / "locustfile.py"),
            "--headless",
            "-u",
            str(self.args.load_users),
            "-r",
            str(self.args.load_spawn_rate),
            "-t",
            str(self.args.load_duration),
            "--host",
            self.inference_url,
            "--csv",
            str(prefix),
            "--csv-full-history",
            "--json-file",
            str(prefix),
            "--only-summary",
            "--exit-code-on-error",
            "1",
        ]
        env = self._service_env(
            {"LOCUST_DATA_PATH": str(REPO_ROOT / "data" / f"{self.args.dataset}_test.csv")}
        )
        load = ServiceProcess("locust", argv, env, self.logs_dir / "locust.log")
        load.start()
        began = time.monotonic()
        while load.running:
            self._check_services("load_test")
            self.progress.update(
                "load_test", f"{self.args.load_users} users, {time.monotonic() - began:.0f}s"
            )
            load.wait(0.5)
            if time.monotonic() - began > self.args.stage_timeout:
                load.kill()
                raise StageFailed("load_test", "Locust did not finish")
        from flts_cli import report as report_writer  # matplotlib: only when a report is due

        stats = report_writer.read_locust_stats(prefix)
        self.facts["load_test"] = stats
        stage.detail.update(stats)
        if stats["requests"] == 0:
            raise StageFailed("load_test", f"no requests were made (see {load.log_path})")
        if stats["failures"]:
            raise StageFailed("load_test", f"{stats['failures']} of {stats['requests']} requests failed")
        return "ok"

    # -- report and shutdown ---------------------------------------------------------------------
    def _write_report(self, failed: StageFailed | None) -> None:
        began = time.monotonic()
        stage = Stage("report", status="running")
        self.stages["report"] = stage
        try:
            from flts_cli import report as report_writer  # matplotlib: only when a report is due

            pointer = getattr(self, "pointer", None)
            client = connect(self.env["MLFLOW_TRACKING_URI"]) if self.env else None
            report = report_writer.build_report(
                facts=self.facts,
                stages={n: s for n, s in self.stages.items() if n != "report"},
                pointer=pointer,
                client=client,
                config_hash=self.facts.get("config_hash"),
                failed=(failed.stage, failed.message) if failed else None,
                total_seconds=round(time.monotonic() - self.started, 2),
            )
            report_writer.write_report(report, self.report_dir, client, pointer)
            stage.status = "ok"
        except Exception as exc:
            stage.status, stage.error = "failed", f"{type(exc).__name__}: {exc}"
            (self.report_dir / "report-error.txt").write_text(stage.error)
        finally:
            stage.seconds = round(time.monotonic() - began, 2)
            self.progress.done(stage)

    def _keep_running(self) -> None:
        web_port = 8089 if _port_is_free(8089) else free_port()
        argv = [
            venv_bin("locust"),
            "-f",
            str(REPO_ROOT / "locust" / "locustfile.py"),
            "--host",
            self.inference_url,
            "--web-host",
            "127.0.0.1",
            "--web-port",
            str(web_port),
        ]
        env = self._service_env(
            {"LOCUST_DATA_PATH": str(REPO_ROOT / "data" / f"{self.args.dataset}_test.csv")}
        )
        self.services.append(ServiceProcess("locust-web", argv, env, self.logs_dir / "locust-web.log"))
        self.services[-1].start()
        print("\nEverything is running; Ctrl-C stops it.")
        print(f"  inference API  {self.inference_url}  (docs: {self.inference_url}/docs)")
        print(f"  MLflow UI      {self.env['MLFLOW_TRACKING_URI']}")
        print(f"  Locust UI      http://127.0.0.1:{web_port}")
        print(f"  S3 endpoint    {self.env['MLFLOW_S3_ENDPOINT_URL']}")
        print(f"  Kafka          {self.env['KAFKA_BOOTSTRAP_SERVERS']}", flush=True)
        try:
            while not self._interrupted.is_set():
                time.sleep(1)
        except KeyboardInterrupt:
            pass

    def _shutdown(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        stop_all(self.services)
        if self.stack is not None:
            self.stack.stop()
            # The embedded stack lives and dies with this run; keep only its logs.
            for log in (self.stack.config.state_dir).glob("*.log"):
                shutil.copy(log, self.logs_dir / f"stack-{log.name}")


def _epoch_progress(client: Any, events: dict[str, TrainingEvent], status: dict[str, str]) -> dict[str, str]:
    progress: dict[str, str] = {}
    for model_type, event in events.items():
        if status.get(model_type) != "RUNNING" or not event.run_id:
            continue
        try:
            history = client.get_metric_history(event.run_id, "epoch")
        except Exception:
            continue
        if history:
            progress[model_type] = f"epoch {max(m.step for m in history)}"
    return progress


def _http_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status != 200:
                return None
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _port_is_free(port: int) -> bool:
    try:
        check_port_free(port, "the Locust web UI")
    except PortInUseError:
        return False
    return True
