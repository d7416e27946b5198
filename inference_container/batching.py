"""Micro-batching of concurrent /predict requests on the event loop.

A forward pass over one 10-row window costs about as much as over twenty (per-call overhead
dominates on a CPU), so windows that arrive together are predicted together. There is no timer
and no added wait: the first request of a loop iteration schedules a flush with `call_soon`,
which runs after the other requests already parsed in that iteration have queued their windows.
An idle service answers a lone request as fast as before; a busy one batches.

A flush makes one call per stack (shared.model_runtime.stacking), not per station: with requests
spread over a fleet, concurrent windows rarely share a station but mostly share a stack (every
station's GRU of one shape, every Prophet), so one batched pass answers them all. Each queued
item carries the `Slot` its request read from the fleet at the start, so a swap between enqueue
and flush cannot mix models: a swap builds new stacks, and items group by stack object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shared.model_runtime.forecasting import Window
from shared.model_runtime.stacking import Slot

log = logging.getLogger(__name__)


@dataclass
class _Item:
    slot: Slot
    window: Window
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Collect windows queued in one event-loop iteration and predict them in one call per stack."""

    def __init__(self, max_batch: int = 64, observe: Callable[[int], None] | None = None) -> None:
        self.max_batch = max_batch
        # Told the size of every batch predicted (the batch-size histogram of /metrics).
        self._observe = observe
        self._pending: list[_Item] = []
        self._scheduled = False
        self.batches = 0
        self.windows = 0

    async def predict(self, slot: Slot, timestamps: np.ndarray, kpis: np.ndarray, horizon: int) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append(_Item(slot, (timestamps, kpis, horizon), future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        groups: dict[int, list[_Item]] = {}
        for item in pending:
            groups.setdefault(id(item.slot.stack), []).append(item)
        for items in groups.values():
            live = [item for item in items if not item.future.done()]  # a client may have gone
            if not live:
                continue
            try:
                results = live[0].slot.stack.predict_many(
                    [item.slot.member for item in live], [item.window for item in live]
                )
            except Exception as exc:  # delivered to each waiting request, which answers 500
                for item in live:
                    item.future.set_exception(exc)
                continue
            self.batches += 1
            self.windows += len(live)
            if self._observe is not None:
                self._observe(len(live))
            for item, result in zip(live, results, strict=True):
                item.future.set_result(result)
