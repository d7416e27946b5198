"""The state of one `flts run`: its options, what each stage found, and what it started.

Stages fill it in order; the report and the shutdown read whatever got filled before a failure.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from flts_cli import REPO_ROOT
from flts_cli.services import ServiceProcess
from flts_cli.settings import RunnerSettings
from flts_cli.stack import LocalStack
from flts_cli.terminal import Terminal
from flts_cli.watch import EventWatcher
from shared.events import DataClaim, PromotionDecision, PromotionPointer
from shared.settings import BaseServiceSettings
from shared.storage import ObjectStore

# "partial": the stage went on with the other stations after one of them failed in it.
StageStatus = Literal["pending", "running", "ok", "skipped", "partial", "failed"]
T = TypeVar("T")


class StageError(RuntimeError):
    """Raised by a stage: the message is what the terminal and the report say went wrong."""


class StageFailed(RuntimeError):
    """A stage (or the user, stage "interrupted") ended the run."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


@dataclass
class Stage:
    name: str
    status: StageStatus = "pending"
    seconds: float = 0.0
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunOptions:
    """The options of `flts run` (see its `--help`)."""

    datasets: tuple[str, ...]  # the stations, in the order given; resolved from `--dataset`
    sample_train_rows: int | None
    sample_test_rows: int | None
    salt: str
    epochs: int | None
    model_types: tuple[str, ...]
    load_users: int
    load_spawn_rate: float
    load_duration: str
    keep_running: bool
    no_skill_gate: bool
    stage_timeout: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        return cls(**{option.name: getattr(args, option.name) for option in fields(cls)})


@dataclass
class Station:
    """What the stages found for one dataset; its claims carry the dataset name as identifier."""

    dataset: str
    claim: DataClaim | None = None
    rows: dict[str, Any] | None = None
    previous_decision: PromotionDecision | None = None  # this config hash was decided before
    decision: PromotionDecision | None = None  # the evaluator's decision for this config hash
    pointer: PromotionPointer | None = None  # the promotion of this station's config hash
    trigger_to_live_seconds: float | None = None
    # Set when a stage gives up on this station; the run goes on with the others.
    failed: StageFailed | None = None

    @property
    def identifier(self) -> str:
        return self.claim.identifier if self.claim is not None else self.dataset


@dataclass
class RunState:
    options: RunOptions
    settings: RunnerSettings
    report_dir: Path
    started: float = field(default_factory=time.monotonic)
    terminal: Terminal = field(init=False)
    # Set by SIGTERM: ends `--keep-running`, which otherwise waits for Ctrl-C.
    interrupted: threading.Event = field(default_factory=threading.Event)
    stages: dict[str, Stage] = field(default_factory=dict)
    failed: StageFailed | None = None

    # infrastructure
    stack: LocalStack | None = None  # None against an external stack, which is not ours to stop
    env: dict[str, str] = field(default_factory=dict)  # how a service reaches the stack
    names: BaseServiceSettings | None = None  # the topic and bucket names the services use
    store: ObjectStore | None = None
    # services; jobs are the processes that run to completion (preprocess, the swarm)
    services: list[ServiceProcess] = field(default_factory=list)
    jobs: list[ServiceProcess] = field(default_factory=list)
    watcher: EventWatcher | None = None
    inference_url: str = ""
    # Every event read from the watched topics, in order: the stations move at their own pace,
    # so a stage may read an event a later stage (or another station) needs.
    events: list[BaseModel] = field(default_factory=list)
    stations: dict[str, Station] = field(init=False)
    triggered_at: float = 0.0  # monotonic, when the preprocess jobs started
    # inference_live and load_test
    trigger_to_live_seconds: float | None = None  # until every station that got there was live
    load_test: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.terminal = Terminal(self.started)
        self.stations = {name: Station(name) for name in self.options.datasets}

    def active(self) -> list[Station]:
        """The stations no stage has given up on."""
        return [station for station in self.stations.values() if station.failed is None]

    def process_name(self, base: str, station: Station) -> str:
        """A per-station process's name (and log file); one station keeps the plain name."""
        return base if len(self.stations) == 1 else f"{base}-{station.dataset}"

    def station_failure(self) -> StageFailed | None:
        """The run's failure when stations failed while the pipeline went on with the others:
        at the earliest stage any of them failed, naming each and why."""
        failures = {s.dataset: s.failed for s in self.stations.values() if s.failed is not None}
        if not failures:
            return None
        order = list(self.stages)
        first = min(failures.values(), key=lambda f: order.index(f.stage) if f.stage in order else len(order))
        message = "\n".join(f"station {name} ({f.stage}): {f.message}" for name, f in failures.items())
        return StageFailed(first.stage, message)

    @property
    def logs_dir(self) -> Path:
        return self.report_dir / "logs"

    def deadline(self) -> float:
        return time.monotonic() + self.options.stage_timeout

    def service_env(self, extra: dict[str, str]) -> dict[str, str]:
        """A child's environment: this one's, but the stack's connection settings replace any
        the caller had set (they may name another stack)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "MLFLOW_", "AWS_"))}
        return {**base, **self.env, "PYTHONPATH": str(REPO_ROOT), "LOG_LEVEL": "INFO", **extra}

    def start(
        self, name: str, argv: list[str], extra: dict[str, str], *, job: bool = False
    ) -> ServiceProcess:
        """Start a process logging to logs/<name>.log; the shutdown stops it if it still runs."""
        process = ServiceProcess(name, argv, self.service_env(extra), self.logs_dir / f"{name}.log")
        (self.jobs if job else self.services).append(process)
        process.start()
        return process

    def check_services(self) -> None:
        """Fail the stage as soon as a service has died: waiting on would only time out."""
        for service in self.services:
            if service.proc is not None and not service.running:
                raise StageError(
                    f"service {service.name} exited with {service.returncode}; "
                    f"log {service.log_path}:\n{service.log_tail(8)}"
                )


def need(value: T | None, what: str) -> T:
    """`value`, which an earlier stage sets; stages run in order, so None here is a runner bug."""
    if value is None:
        raise RuntimeError(f"{what} is missing: the stage that sets it has not run")
    return value
