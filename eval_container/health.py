"""A tiny HTTP server for Kubernetes probes: `/healthz` (liveness) and `/readyz` (readiness)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

SERVICE_NAME = "evaluator"


class HealthState:
    """Readiness = the consumer loop is running and MLflow answered recently.

    The MLflow probe result is cached so a burst of probes never turns into a burst of requests.
    """

    def __init__(self, mlflow_probe: Callable[[], bool], cache_s: float = 5.0) -> None:
        self.consuming = threading.Event()
        self._probe = mlflow_probe
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._mlflow_ok = False

    def mlflow_ok(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= self._cache_s:
                self._mlflow_ok = self._probe()
                self._checked_at = now
            return self._mlflow_ok

    def liveness(self) -> dict[str, object]:
        return {"status": "ok", "service": SERVICE_NAME, "consuming": self.consuming.is_set()}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        consuming = self.consuming.is_set()
        mlflow_ok = self.mlflow_ok() if consuming else False
        ready = consuming and mlflow_ok
        body: dict[str, object] = {
            "status": "ready" if ready else "not ready",
            "service": SERVICE_NAME,
            "consuming": consuming,
            "mlflow": mlflow_ok,
        }
        return ready, body


def _handler_for(state: HealthState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._reply(200, state.liveness())
            elif path == "/readyz":
                ready, body = state.readiness()
                self._reply(200 if ready else 503, body)
            else:
                self._reply(404, {"error": f"no route {path}"})

        def _reply(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            # Probes hit every few seconds; access lines would drown the service's own log.
            log.debug("health request", extra={"request": format % args})

    return Handler


def start_health_server(port: int, state: HealthState, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve probes from a daemon thread; port 0 picks a free port (read `server_address`)."""
    server = ThreadingHTTPServer((host, port), _handler_for(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="health", daemon=True)
    thread.start()
    log.info("health server listening", extra={"port": server.server_address[1]})
    return server
