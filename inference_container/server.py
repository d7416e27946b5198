"""Run the API: one uvicorn server per process, all serving one pre-bound socket.

asyncio sets TCP_NODELAY on an accepted connection only when the listening socket says
IPPROTO_TCP, and `uvicorn --workers N` binds with protocol 0: every keep-alive response then
waits about 44 ms for the client's delayed ACK. So this module binds the socket itself, and with
WORKERS > 1 starts N worker processes that inherit it; the kernel spreads connections between
them. Each worker has its own model and its own Kafka consumer, so each swaps on every promotion.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import uvicorn

from inference_container.app import create_app
from inference_container.settings import InferenceSettings
from shared.mlflow_utils import configure_mlflow_client

log = logging.getLogger(__name__)

LISTEN_FD_FLAG = "--listen-fd"


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: with protocol 0 uvicorn never sets TCP_NODELAY on accepted
    # sockets, and every keep-alive request then waits ~44 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: InferenceSettings, sock: socket.socket) -> None:
    """Serve the app on `sock` until SIGTERM/SIGINT (uvicorn drains in-flight requests)."""
    # The model loader retries with its own backoff: keep each MLflow call short.
    configure_mlflow_client(timeout_s=30, max_retries=2)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=settings.ACCESS_LOG,
        lifespan="on",
        timeout_graceful_shutdown=10,
        backlog=2048,
    )
    # Imports (torch, mlflow, pandas) leave ~300k long-lived objects; a full collection walks them
    # all (~60-150 ms, a p99 spike). Frozen, they are never scanned again.
    gc.collect()
    gc.freeze()
    host, port = sock.getsockname()[:2]
    log.info("serving", extra={"host": host, "port": port, "pid": os.getpid()})
    uvicorn.Server(config).run(sockets=[sock])


def supervise(settings: InferenceSettings, sock: socket.socket) -> int:
    """Start WORKERS processes on the inherited socket; forward SIGTERM; if one dies, stop all
    and exit with its code so the orchestrator restarts the pod."""
    fd = sock.fileno()
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "inference_container", LISTEN_FD_FLAG, str(fd)],
            pass_fds=(fd,),
        )
        for _ in range(settings.WORKERS)
    ]
    log.info("workers started", extra={"workers": [c.pid for c in children]})
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    exit_code = 0
    while any(c.poll() is None for c in children):
        dead = [c for c in children if c.poll() is not None]
        if dead and not stopping:
            exit_code = dead[0].returncode or 1
            log.error("worker exited; stopping the others", extra={"pid": dead[0].pid, "code": exit_code})
            forward(signal.SIGTERM, None)
        time.sleep(0.2)
    return exit_code


def worker_socket(argv: list[str]) -> socket.socket | None:
    """The inherited listening socket when started as a worker (`--listen-fd N`)."""
    if LISTEN_FD_FLAG not in argv:
        return None
    fd = int(argv[argv.index(LISTEN_FD_FLAG) + 1])
    # socket(fileno=) detects family and protocol; socket.fromfd would leave proto 0, and
    # asyncio only sets TCP_NODELAY when proto is IPPROTO_TCP.
    return socket.socket(fileno=fd)
