"""Token books: engines' cumulative counters made into totals that survive restarts."""

from __future__ import annotations

import logging
from dataclasses import fields

from gpumeter.engines.records import EngineReading, ModelTotals

__all__ = ["COUNTED", "EngineBooks"]

logger = logging.getLogger(__name__)

COUNTED = (
    "prompt_tokens",
    "generation_tokens",
    "requests",
    "prefill_seconds",
    "decode_seconds",
)
"""The cumulative fields of :class:`ModelReading` that the books follow."""


class _Series:
    """One counter of one model: the last raw value and what it added up to."""

    __slots__ = ("last", "total")

    def __init__(self, last: float) -> None:
        self.last = last
        self.total = 0.0


class EngineBooks:
    """Turns one engine's successive readings into monotonic totals per model.

    A delta is never negative and nothing is counted twice: a counter that goes
    down, or a change of the engine's start time, means the engine restarted, and
    the new raw value is what it counted since. The first reading of an engine is
    a baseline unless the engine started after ``watch_start`` (then everything it
    counted happened while gpumeter watched); a series that appears later (a new
    model, a family created lazily) counts from zero.

    Args:
        watch_start: Unix time from which gpumeter is responsible for counting.
    """

    def __init__(self, watch_start: float) -> None:
        self._watch_start = watch_start
        self._series: dict[tuple[str, str], _Series] = {}
        self._started_at: float | None = None
        self._seen = False

    @property
    def models(self) -> tuple[str, ...]:
        """Every model counted so far."""
        return tuple(sorted({model for model, _ in self._series}))

    def update(self, reading: EngineReading, started_at: float | None = None) -> bool:
        """Books one reading.

        Args:
            reading: the engine's cumulative figures now.
            started_at: when the engine started, if known from outside the
                exposition (its process's start time); the reading's own
                ``started_at`` wins.

        Returns:
            True if the reading showed that the engine restarted.
        """
        start = reading.started_at if reading.started_at is not None else started_at
        raws = {
            (model.model, name): float(value)
            for model in reading.models
            for name in COUNTED
            if (value := getattr(model, name)) is not None
        }
        # A server restart resets every counter at once: decide it for the whole
        # engine before booking, so that no series counts across the reset.
        restarted = self._seen and (
            (
                start is not None
                and self._started_at is not None
                and abs(start - self._started_at) > 1.0
            )
            or any(
                key in self._series and raw < self._series[key].last
                for key, raw in raws.items()
            )
        )
        first = not self._seen
        from_zero = not first or (start is not None and start >= self._watch_start)
        self._seen = True
        if start is not None:
            self._started_at = start
        for key, raw in raws.items():
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(raw)
                series.total = raw if from_zero else 0.0
                continue
            series.total += raw if restarted else raw - series.last
            series.last = raw
        if restarted:
            logger.debug("counters restarted from zero")
        return restarted

    def totals(self, model: str) -> ModelTotals:
        """The totals of one model (all None for a model never seen)."""
        values = {
            f.name: self._series[(model, f.name)].total
            for f in fields(ModelTotals)
            if (model, f.name) in self._series
        }
        return ModelTotals(**values)
