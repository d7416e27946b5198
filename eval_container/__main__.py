"""`python -m eval_container`: settings → logging → clients → consume `model-training`."""

from __future__ import annotations

import sys
import threading

from eval_container.app import run
from eval_container.settings import EvaluatorSettings
from shared.kafka import install_stop_handlers
from shared.logging import configure_logging
from shared.settings import load_settings


def main() -> int:
    settings = load_settings(EvaluatorSettings)
    configure_logging("evaluator", settings.LOG_LEVEL)
    stop = threading.Event()
    install_stop_handlers(stop)
    return run(settings, stop)


if __name__ == "__main__":
    sys.exit(main())
