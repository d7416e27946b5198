"""A service-shaped consumer for the SIGTERM test: settings -> logging -> clients -> run loop.

Usage: python tests/helpers/sigterm_consumer.py TOPIC GROUP HANDLE_SECONDS

Each message prints `started <offset>`, sleeps HANDLE_SECONDS (standing in for slow work such as
training), then prints `finished <offset>`; the test reads these lines from stdout.
"""

from __future__ import annotations

import sys
import threading
import time

from pydantic import BaseModel

from shared.events import DataClaim
from shared.kafka import ConsumerLoop, EventProducer, MessageContext, install_stop_handlers
from shared.logging import configure_logging
from shared.settings import BaseServiceSettings, load_settings


def main(argv: list[str]) -> int:
    topic, group, handle_seconds = argv[0], argv[1], float(argv[2])
    settings = load_settings(BaseServiceSettings)
    configure_logging("sigterm-consumer", settings.LOG_LEVEL)
    stop = threading.Event()
    install_stop_handlers(stop)
    producer = EventProducer(settings.KAFKA_BOOTSTRAP_SERVERS, client_id="sigterm-consumer")

    def handle(_event: BaseModel, ctx: MessageContext) -> None:
        print(f"started {ctx.offset}", flush=True)
        # PEP 475: a signal handler interrupts this sleep only to set the flag; the sleep resumes,
        # so the message in hand is finished just as real work would be.
        time.sleep(handle_seconds)
        print(f"finished {ctx.offset}", flush=True)

    loop = ConsumerLoop(
        bootstrap=settings.KAFKA_BOOTSTRAP_SERVERS,
        group_id=group,
        topics={topic: DataClaim},
        handler=handle,
        service="sigterm-consumer",
        producer=producer,
        stop=stop,
        fetch_wait_max_ms=settings.KAFKA_FETCH_WAIT_MAX_MS,
        session_timeout_ms=settings.KAFKA_SESSION_TIMEOUT_MS,
    )
    loop.run()
    producer.close()
    print("exited cleanly", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
