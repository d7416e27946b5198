"""Locust users reconnect every LOCUST_RECONNECT_S, so replicas added during a swarm get traffic.

A Kubernetes Service balances connections, not requests: what a replica added by the HPA can get is
the connections opened after it became ready. A headless swarm runs against a small keep-alive HTTP
server that answers like the inference API and records, per TCP connection, when each request came.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shared.columns import KPI_COLUMNS

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUST = [str(Path(sys.executable).parent / "locust"), "-f", str(REPO_ROOT / "locust" / "locustfile.py")]
USERS = 3


@dataclass
class Connections:
    """Arrival times of the requests of each connection, by connection number."""

    requests: dict[int, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def opened(self) -> int:
        with self.lock:
            number = len(self.requests)
            self.requests[number] = []
            return number

    def request(self, number: int) -> None:
        with self.lock:
            self.requests[number].append(time.monotonic())

    def used(self) -> dict[int, list[float]]:
        """The connections that carried at least one request."""
        with self.lock:
            return {n: list(times) for n, times in self.requests.items() if times}


def handler_for(connections: Connections) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1: connections stay open until the client closes them, as uvicorn's do.
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection_number = connections.opened()

        def do_POST(self) -> None:
            connections.request(self.connection_number)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prediction = dict.fromkeys(KPI_COLUMNS, 0.0)
            self._answer(
                {
                    "identifier": body["identifier"],
                    "status": "SUCCESS",
                    "predictions": [prediction] * body["inference_length"],
                }
            )

        def do_GET(self) -> None:
            connections.request(self.connection_number)
            self._answer({"status": "ok"})

        def _answer(self, value: object) -> None:
            data = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the swarm's requests would flood the test output

    return Handler


@pytest.fixture
def counting_server() -> Iterator[tuple[str, Connections]]:
    connections = Connections()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(connections))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", connections
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def locust_env(reconnect_s: str) -> dict[str, str]:
    """PobleSec's windows from the shipped test CSV; the answers' values do not matter here."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "LOCUST_DATASET": "PobleSec",
        "LOCUST_DATASETS": "",
        "LOCUST_DATA_DIR": "",
        "LOCUST_DATA_PATH": str(REPO_ROOT / "data" / "PobleSec_test.csv"),
        "LOCUST_RECONNECT_S": reconnect_s,
    }


def swarm(host: str, reconnect_s: str, tmp_path: Path, duration: str) -> None:
    """A headless swarm of USERS users; fails the test if Locust counted any failed request."""
    env = locust_env(reconnect_s)
    argv = [*LOCUST, "--headless", "-u", str(USERS), "-r", str(USERS), "-t", duration, "--host", host]
    argv += ["--only-summary", "--exit-code-on-error", "1", "--csv", str(tmp_path / "run")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]


def test_users_open_a_new_connection_every_reconnect_period_without_failing_a_request(
    counting_server: tuple[str, Connections], tmp_path: Path
) -> None:
    host, connections = counting_server
    reconnect_s = 1.0
    swarm(host, str(reconnect_s), tmp_path, "8s")

    used = connections.used()
    spans = [times[-1] - times[0] for times in used.values()]
    # Each user reconnected several times, and no connection outlived its period: the check runs
    # before each request, so a connection's requests all start within one period of its opening
    # (the slack covers scheduling delays between Locust sending and this server reading).
    assert len(used) >= 3 * USERS, f"{len(used)} connections for {USERS} users"
    assert max(spans) < reconnect_s + 1.0, sorted(spans)[-5:]
    # ... and only then: a connection carries many requests, not one.
    assert sum(len(times) for times in used.values()) > 3 * len(used)


def test_reconnect_0_keeps_one_connection_per_user_for_the_whole_swarm(
    counting_server: tuple[str, Connections], tmp_path: Path
) -> None:
    host, connections = counting_server
    swarm(host, "0", tmp_path, "5s")

    used = connections.used()
    assert len(used) == USERS, f"{len(used)} connections for {USERS} users"
    assert min(times[-1] - times[0] for times in used.values()) > 1.0


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_a_malformed_reconnect_period_stops_locust_naming_the_variable(
    counting_server: tuple[str, Connections], tmp_path: Path, value: str
) -> None:
    host, connections = counting_server
    env = locust_env(value)
    argv = [*LOCUST, "--headless", "-u", "1", "-r", "1", "-t", "2s", "--host", host, "--only-summary"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode != 0
    assert "LOCUST_RECONNECT_S" in done.stderr
    assert connections.used() == {}
