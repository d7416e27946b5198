"""`python -m preprocess_container`: settings -> logging -> clients -> one run -> exit code.

Exit codes: 0 processed (or reused) and claims published; 10 refused (reported on DLQ-training-data,
permanent); 2 invalid settings (permanent); 3 infrastructure unreachable or failing (retried); 1 is
left to crashes (an uncaught exception, retried).
"""

from __future__ import annotations

import logging
import sys

from preprocess_container.job import (
    EXIT_INFRA,
    EXIT_INVALID_SETTINGS,
    INFRA_ERRORS,
    SERVICE,
    ensure_job_topics,
    execute,
    wait_for_store,
)
from preprocess_container.settings import PreprocessSettings
from shared.kafka import EventProducer, wait_for_broker
from shared.logging import configure_logging
from shared.settings import SettingsError, load_settings
from shared.storage import ObjectStore

log = logging.getLogger("preprocess_container")


def main() -> int:
    try:
        settings = load_settings(PreprocessSettings)
    except SettingsError:
        return EXIT_INVALID_SETTINGS
    configure_logging(SERVICE, settings.LOG_LEVEL)
    bootstrap = settings.KAFKA_BOOTSTRAP_SERVERS
    try:
        store = ObjectStore.from_settings(settings)
        wait_for_store(store, settings.BUCKET_DATASET, settings.STARTUP_TIMEOUT_S)
        wait_for_broker(bootstrap, settings.STARTUP_TIMEOUT_S)
        ensure_job_topics(settings)
        producer = EventProducer(bootstrap, client_id=SERVICE)
    except INFRA_ERRORS as exc:
        log.error("cannot reach the infrastructure", extra={"error": f"{type(exc).__name__}: {exc}"})
        return EXIT_INFRA
    try:
        return execute(settings, store, producer)
    finally:
        producer.close()


if __name__ == "__main__":
    sys.exit(main())
