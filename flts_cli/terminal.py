"""What `flts run` shows: one status line while a stage runs, one line per finished stage.

The services log to files; the terminal carries only this runner's own lines.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the run state holds a Terminal
    from flts_cli.state import Stage, StageFailed


class Terminal:
    """One status line on a terminal; occasional plain lines when output is not a terminal."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.tty = sys.stdout.isatty()
        self._last_stage = ""
        self._last_print = 0.0

    def update(self, stage: str, text: str) -> None:
        line = f"[{self._elapsed():7.1f}s] {stage:<15} {text}"
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
        line = f"[{self._elapsed():7.1f}s] {stage.name:<15} {mark} ({stage.seconds:.1f}s)"
        if stage.error:
            line += f": {stage.error}"
        if self.tty:
            sys.stdout.write("\r\033[K")
        print(line, flush=True)

    def endpoints(self, inference_url: str, locust_url: str, env: dict[str, str]) -> None:
        print("\nEverything is running; Ctrl-C stops it.")
        print(f"  inference API  {inference_url}  (docs: {inference_url}/docs)")
        print(f"  MLflow UI      {env['MLFLOW_TRACKING_URI']}")
        print(f"  Locust UI      {locust_url}")
        print(f"  S3 endpoint    {env['MLFLOW_S3_ENDPOINT_URL']}")
        print(f"  Kafka          {env['KAFKA_BOOTSTRAP_SERVERS']}", flush=True)

    def outcome(self, failed: StageFailed | None, report: Path) -> int:
        """The last word on the run, and the exit status that goes with it."""
        if failed is not None:
            print(f"flts run FAILED at {failed.stage}: {failed.message}", file=sys.stderr)
            print(f"report: {report}", file=sys.stderr)
            return 1
        print(f"flts run ok in {self._elapsed():.1f}s; report: {report}")
        return 0

    def _elapsed(self) -> float:
        return time.monotonic() - self.started
