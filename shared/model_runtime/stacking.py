"""Stations' models grouped into stacks, so that one call answers windows of many stations.

A fleet serves one small model per station. Evaluated model by model, a batch of concurrent
requests spread over many stations costs one call per station, and per-call overhead dominates a
CPU forward pass. Forecasts of one kind and shape (the same `stack_key`) are instead stacked:
their parameters on a leading axis, each window evaluated with its own member's parameters in one
pass (`RecurrentStack`, `ProphetStack`). A forecast without a key (or with stacking turned off)
gets a stack of its own, `OneModel`, which calls its own `predict_many`.

Stacks are immutable. `stack_slots` derives them from the station -> forecast mapping, reusing
every stack whose members are unchanged and building new ones for the groups that changed, so a
swap of one station replaces the stacks of its group (old and new) and nothing else; a window's
answer depends only on its own member's parameters, never on the other members or windows.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from shared.model_runtime.forecasting import Forecast, Window

Key = TypeVar("Key", bound=Hashable)
# The group of a forecast that shares no stack: (ALONE, its name).
ALONE = object()


class StackedForecast(Protocol):
    """Loaded models evaluated together; `members` are the forecasts it was built from."""

    @property
    def members(self) -> tuple[Forecast, ...]: ...

    def predict_many(self, members: Sequence[int], windows: Sequence[Window]) -> list[np.ndarray]:
        """Window i answered by the member at index `members[i]`."""
        ...


@runtime_checkable
class Stackable(Protocol):
    """A forecast that can share a stack with others of the same `stack_key` (None: it cannot)."""

    @property
    def stack_key(self) -> Hashable | None: ...

    def stack(self, forecasts: Sequence[Any]) -> StackedForecast:
        """The stack of `forecasts`, all of this type and key."""
        ...


@dataclass(frozen=True)
class Slot:
    """Where a station's forecast sits: its stack and its index there."""

    stack: StackedForecast
    member: int


@dataclass(frozen=True)
class OneModel:
    """A stack of one forecast, answering through its own `predict_many`."""

    forecast: Forecast

    @property
    def members(self) -> tuple[Forecast, ...]:
        return (self.forecast,)

    def predict_many(self, members: Sequence[int], windows: Sequence[Window]) -> list[np.ndarray]:
        return self.forecast.predict_many(windows)


def _group(forecast: Forecast) -> tuple[object, ...] | None:
    """Which stack the forecast can join, or None when it cannot share one."""
    if not isinstance(forecast, Stackable):
        return None
    key = forecast.stack_key
    return None if key is None else (type(forecast), key)


def stack_slots(
    forecasts: Mapping[Key, Forecast],
    previous: Mapping[Key, Slot],
    *,
    across_stations: bool = True,
) -> dict[Key, Slot]:
    """A slot for every forecast: forecasts of one stack key share a stack (all of them in one
    when `across_stations`, else each its own `OneModel`). A group whose members are the same
    objects, in the same order, as in `previous` keeps its stack."""
    groups: dict[tuple[object, ...], list[Key]] = {}
    for name, forecast in forecasts.items():
        key = _group(forecast) if across_stations else None
        groups.setdefault((ALONE, name) if key is None else key, []).append(name)
    slots: dict[Key, Slot] = {}
    for group_key, names in groups.items():
        members = tuple(forecasts[name] for name in names)
        alone = group_key[0] is ALONE
        kept = previous.get(names[0])
        if (
            kept is not None
            and _same(kept.stack.members, members)
            and isinstance(kept.stack, OneModel) == alone
        ):
            stack = kept.stack
        else:
            stack = OneModel(members[0]) if alone else _build(members)
        slots.update((name, Slot(stack, index)) for index, name in enumerate(names))
    return slots


def _same(old: Sequence[Forecast], new: Sequence[Forecast]) -> bool:
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


def _build(members: tuple[Forecast, ...]) -> StackedForecast:
    first = members[0]
    assert isinstance(first, Stackable)
    return first.stack(members)
