"""The one polling wait of the test suite."""

from __future__ import annotations

import time
from collections.abc import Callable


class WaitTimedOut(AssertionError):
    """`wait_until` ran out of time; an AssertionError so pytest reports it as a failed check."""


def wait_until(check: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    """Call `check` every `interval_s` until it returns something truthy.

    Raises WaitTimedOut naming `what` after `timeout_s`; an exception from `check` propagates
    at once (a check that can fail on the way there catches its own transient errors)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            raise WaitTimedOut(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)
