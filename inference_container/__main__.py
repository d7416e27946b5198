"""`python -m inference_container`: settings → logging → socket → serve (or supervise workers)."""

from __future__ import annotations

import sys

from inference_container.server import bind_socket, serve, supervise, worker_socket
from inference_container.settings import InferenceSettings
from shared.logging import configure_logging
from shared.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    settings = load_settings(InferenceSettings)
    configure_logging("inference", settings.LOG_LEVEL)
    inherited = worker_socket(args)
    if inherited is not None:
        serve(settings, inherited)
        return 0
    sock = bind_socket(settings.INFERENCE_HOST, settings.INFERENCE_PORT)
    if settings.WORKERS == 1:
        serve(settings, sock)
        return 0
    return supervise(settings, sock)


if __name__ == "__main__":
    sys.exit(main())
