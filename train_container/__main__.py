"""`python -m train_container`: the GRU/LSTM trainer (MODEL_TYPE=GRU|LSTM)."""

from __future__ import annotations

import logging
import sys
import threading

from shared.kafka import install_stop_handlers
from shared.logging import configure_logging
from shared.settings import load_settings
from shared.trainer_service import run_trainer
from train_container.settings import TrainSettings
from train_container.trainer import RecurrentTrainer, configure_torch_threads

log = logging.getLogger("train_container")


def main() -> int:
    settings = load_settings(TrainSettings)
    service = f"train-{settings.MODEL_TYPE.lower()}"
    configure_logging(service, settings.LOG_LEVEL)
    threads = configure_torch_threads(settings.TORCH_THREADS)
    stop = threading.Event()
    install_stop_handlers(stop)
    trainer = RecurrentTrainer(settings)
    log.info(
        "starting",
        extra={"model_type": settings.MODEL_TYPE, "device": str(trainer.device), "threads": threads},
    )
    return run_trainer(settings, trainer, service, stop)


if __name__ == "__main__":
    sys.exit(main())
