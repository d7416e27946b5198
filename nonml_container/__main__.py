"""`python -m nonml_container`: the Prophet trainer (one Prophet model per KPI)."""

from __future__ import annotations

import logging
import sys
import threading

from nonml_container.settings import ProphetSettings
from nonml_container.trainer import ProphetTrainer
from shared.kafka import install_stop_handlers
from shared.logging import configure_logging
from shared.settings import load_settings
from shared.trainer_service import run_trainer

log = logging.getLogger("nonml_container")


def main() -> int:
    settings = load_settings(ProphetSettings)
    service = "train-prophet"
    configure_logging(service, settings.LOG_LEVEL)
    stop = threading.Event()
    install_stop_handlers(stop)
    log.info("starting", extra={"model_type": "PROPHET", "workers": settings.PROPHET_WORKERS})
    return run_trainer(settings, ProphetTrainer(settings), service, stop)


if __name__ == "__main__":
    sys.exit(main())
