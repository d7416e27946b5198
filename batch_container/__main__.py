"""`python -m batch_container`: settings → logging → clients → consume claims and promotions."""

from __future__ import annotations

import sys
import threading

from batch_container.app import run
from batch_container.settings import BatchSettings
from shared.kafka import install_stop_handlers
from shared.logging import configure_logging
from shared.settings import load_settings


def main() -> int:
    settings = load_settings(BatchSettings)
    configure_logging("batch-forecast", settings.LOG_LEVEL)
    stop = threading.Event()
    install_stop_handlers(stop)
    return run(settings, stop)


if __name__ == "__main__":
    sys.exit(main())
