"""One retry policy for the whole project: capped exponential backoff, interruptible by a stop flag.

Every place that waits and tries again (a Kafka handler's transient error, an MLflow call, a model
load, a reconnecting consumer) takes its delays from a `Backoff`, so the doubling, the cap and the
reaction to SIGTERM are decided here once. Which errors are worth retrying is the caller's
decision, passed as a predicate (see `shared.mlflow_utils.mlflow_unreachable`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_DELAY_S = 30.0


class RetryStopped(Exception):
    """The stop flag was set while waiting to try again."""


class RetryBudgetExhausted(Exception):
    """Every attempt failed with a retryable error; `__cause__` is the last one."""


@dataclass(frozen=True)
class Backoff:
    """Delays of `initial_s`, doubling per attempt, never above `max_s`."""

    initial_s: float
    max_s: float = DEFAULT_MAX_DELAY_S

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        # min() before the power keeps huge attempt counts from overflowing a float.
        return min(self.max_s, self.initial_s * 2.0 ** min(attempt - 1, 64))

    def wait(self, attempt: int, stop: threading.Event | None) -> None:
        """Sleep the delay of `attempt`; raise RetryStopped as soon as `stop` is set."""
        delay = self.delay(attempt)
        if stop is None:
            threading.Event().wait(delay)
        elif stop.wait(delay):
            raise RetryStopped("stop requested while waiting to retry")


def retry_call(
    fn: Callable[[], T],
    *,
    what: str,
    retryable: Callable[[BaseException], bool],
    attempts: int,
    backoff: Backoff,
    stop: threading.Event | None = None,
) -> T:
    """Call `fn` up to `attempts` times while it raises errors that `retryable` accepts.

    A non-retryable error propagates at once. After the last attempt a RetryBudgetExhausted is
    raised from the last error; a stop during a wait raises RetryStopped.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not retryable(exc):
                raise
            if attempt == attempts:
                raise RetryBudgetExhausted(f"{what} failed after {attempts} attempts: {exc}") from exc
            log.warning(
                "retrying after a transient error",
                extra={
                    "call": what,
                    "attempt": attempt,
                    "delay": backoff.delay(attempt),
                    "error": str(exc)[:300],
                },
            )
            backoff.wait(attempt, stop)
    raise AssertionError("unreachable")  # pragma: no cover
