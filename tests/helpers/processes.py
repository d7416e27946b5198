"""The one way tests run a service as a real process: start it, wait until it is ready, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from tests.helpers.waiting import WaitTimedOut, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """`python -m <module>` (or any argv) in its own session, with `env`, writing to `log_path`.

    `start()` launches it; `wait_until(check, ...)` returns once `check()` is truthy (it is
    ready, or did what the test waits for) and fails early, with the log's tail, when the process
    exits first; `stop()` sends SIGTERM to the process group and SIGKILL after a grace period;
    `kill()` sends SIGKILL straight away.
    """

    def __init__(
        self,
        command: str | Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        cwd: Path = REPO_ROOT,
        name: str = "",
    ) -> None:
        self.argv = [sys.executable, "-m", command] if isinstance(command, str) else list(command)
        # What failure messages call it: the module, or the program of an argv.
        self.name = name or (command if isinstance(command, str) else Path(self.argv[0]).name)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def wait_until(
        self, check: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2
    ) -> Self:
        """Wait until `check()` is truthy while the process lives; fail with the log tail if it
        exits first or time runs out."""

        def ready() -> bool:
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited with {self.returncode} before {what}; log tail:\n{self.tail()}"
                )
            return bool(check())

        try:
            wait_until(ready, timeout_s, what, interval_s)
        except WaitTimedOut as exc:
            raise WaitTimedOut(f"{exc}; {self.name} log tail:\n{self.tail()}") from None
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (the services' logging writes one object per line)."""
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    records.append(value)
        return records

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    def kill(self) -> None:
        """SIGKILL the whole process group: no handler runs, nothing is committed or cleaned."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `timeout_s`; the exit code (None if never
        started; negative when a signal ended it)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode
