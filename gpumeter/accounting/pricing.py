"""Prices of energy and of holding GPUs: tariffs, facility factors, amortization."""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from gpumeter.config import (
    BUILTIN_GPU_PRICES,
    GpuPriceSettings,
    HardwarePriceSettings,
    PricingSettings,
    TariffSettings,
)

__all__ = [
    "JOULES_PER_KWH",
    "SECONDS_PER_YEAR",
    "HardwarePrice",
    "Pricing",
    "Tariff",
    "name_words",
]

logger = logging.getLogger(__name__)

JOULES_PER_KWH = 3_600_000.0
"""Joules in one kilowatt-hour."""

SECONDS_PER_YEAR = 365 * 86_400
"""Seconds in an amortization year: 365 days, 8,760 hours."""

_WEEK_S = 7 * 86_400
# The Unix epoch fell on a Thursday, three days after a Monday 00:00.
_EPOCH_WEEK_S = 3 * 86_400
# Time zones change their UTC offset far less often than this; the offset is
# probed at this spacing and a change is then narrowed down to the second.
_OFFSET_PROBE_S = 6 * 3600.0


class Tariff:
    """The price of a kWh at any instant: flat, or by time of use.

    Time-of-use periods are clock times in the tariff's time zone, so a period
    from 07:00 to 23:00 follows the local clock across daylight saving changes.
    Instants are Unix wall-clock seconds (UTC).

    Attributes:
        default_price_per_kwh: the flat price, or the price outside every period.
        zone: the time zone of the periods; None for a flat tariff.
    """

    def __init__(self, settings: TariffSettings) -> None:
        """Builds the tariff from validated settings (periods do not overlap)."""
        self.default_price_per_kwh = settings.price_per_kwh
        self.zone = ZoneInfo(settings.timezone) if settings.timezone else None
        self._spans = sorted(
            (start, end, period.price_per_kwh)
            for period in settings.periods
            for start, end in period.weekly_spans_s()
        )
        self._starts = [start for start, _, _ in self._spans]
        self._edges = sorted(
            {edge % _WEEK_S for start, end, _ in self._spans for edge in (start, end)}
        )

    @classmethod
    def flat(cls, price_per_kwh: float) -> Tariff:
        """A tariff with one price at all times."""
        return cls(TariffSettings(price_per_kwh=price_per_kwh))

    @property
    def is_flat(self) -> bool:
        """Whether the price never changes."""
        return not self._spans or self.zone is None

    def price_per_kwh(self, wall_s: float) -> float:
        """The price of a kWh drawn at an instant.

        Args:
            wall_s: the instant, in Unix seconds.
        """
        if self.is_flat:
            return self.default_price_per_kwh
        return self._price_at(self._week_s(wall_s, self._offset_s(wall_s)))

    def energy_cost(
        self, joules: float, start_wall_s: float, end_wall_s: float
    ) -> float:
        """The cost of energy drawn evenly over an interval, at the meter.

        An interval across price changes is split in proportion to the time spent
        in each price period, power being taken as constant within it.

        Args:
            joules: energy drawn over the interval, in joules.
            start_wall_s: start of the interval, in Unix seconds.
            end_wall_s: end of the interval, in Unix seconds.

        Returns:
            The cost, in the tariff's currency.

        Raises:
            ValueError: the interval ends before it starts.
        """
        if end_wall_s < start_wall_s:
            raise ValueError(
                f"interval ends before it starts: {start_wall_s} > {end_wall_s}"
            )
        kwh = joules / JOULES_PER_KWH
        if self.is_flat or end_wall_s == start_wall_s:
            return kwh * self.price_per_kwh(start_wall_s)
        price_seconds = sum(
            (stop - begin) * price
            for begin, stop, price in self.segments(start_wall_s, end_wall_s)
        )
        return kwh * price_seconds / (end_wall_s - start_wall_s)

    def segments(
        self, start_wall_s: float, end_wall_s: float
    ) -> Iterator[tuple[float, float, float]]:
        """Splits an interval where the price changes.

        Args:
            start_wall_s: start of the interval, in Unix seconds.
            end_wall_s: end of the interval, in Unix seconds.

        Yields:
            ``(start_wall_s, end_wall_s, price_per_kwh)`` for each stretch of one
            price, in order, covering the interval; none for an empty interval.
        """
        if self.is_flat:
            if end_wall_s > start_wall_s:
                yield start_wall_s, end_wall_s, self.default_price_per_kwh
            return
        held: tuple[float, float, float] | None = None
        for begin, stop, price in self._raw_segments(start_wall_s, end_wall_s):
            if held is not None and held[2] == price:
                held = (held[0], stop, price)
                continue
            if held is not None:
                yield held
            held = (begin, stop, price)
        if held is not None:
            yield held

    def _raw_segments(
        self, start_wall_s: float, end_wall_s: float
    ) -> Iterator[tuple[float, float, float]]:
        for begin, stop, offset_s in self._offset_pieces(start_wall_s, end_wall_s):
            week_s = self._week_s(begin, offset_s)
            week_start = begin - week_s
            price = self._price_at(week_s)
            at = begin
            for edge in self._edges_after(week_s):
                edge_wall_s = week_start + edge
                if edge_wall_s >= stop:
                    break
                if edge_wall_s > at:
                    yield at, edge_wall_s, price
                    at = edge_wall_s
                price = self._price_at(edge % _WEEK_S)
            yield at, stop, price

    def _offset_pieces(
        self, start_wall_s: float, end_wall_s: float
    ) -> Iterator[tuple[float, float, float]]:
        """Splits an interval where the zone's UTC offset changes."""
        at = start_wall_s
        while at < end_wall_s:
            offset_s = self._offset_s(at)
            change = self._next_offset_change(at, offset_s, end_wall_s)
            yield at, change, offset_s
            at = change

    def _next_offset_change(self, after: float, offset_s: float, limit: float) -> float:
        """The first instant after ``after`` with another offset, else ``limit``."""
        low = after
        while low < limit:
            high = min(low + _OFFSET_PROBE_S, limit)
            if self._offset_s(high) != offset_s:
                break
            low = high
        else:
            return limit
        # Offsets change on whole seconds: find the first such second in (low, high].
        first, last = math.floor(low) + 1, math.floor(high)
        while first < last:
            middle = (first + last) // 2
            if self._offset_s(middle) != offset_s:
                last = middle
            else:
                first = middle + 1
        return float(first)

    def _edges_after(self, week_s: float) -> Iterator[int]:
        """Period edges after a point of the week, in seconds from its Monday."""
        weeks = 0
        while True:
            for edge in self._edges:
                if weeks + edge > week_s:
                    yield weeks + edge
            weeks += _WEEK_S

    def _offset_s(self, wall_s: float) -> float:
        offset = datetime.fromtimestamp(wall_s, self.zone).utcoffset()
        return offset.total_seconds() if offset is not None else 0.0

    @staticmethod
    def _week_s(wall_s: float, offset_s: float) -> float:
        return (wall_s + offset_s + _EPOCH_WEEK_S) % _WEEK_S

    def _price_at(self, week_s: float) -> float:
        index = bisect.bisect_right(self._starts, week_s) - 1
        if index >= 0 and week_s < self._spans[index][1]:
            return self._spans[index][2]
        return self.default_price_per_kwh


@dataclass(frozen=True, slots=True)
class HardwarePrice:
    """What holding one GPU costs apart from its energy.

    An owned GPU's capital cost (its price times the server multiplier, which
    adds its share of the rest of the node) less its residual value is spread
    evenly over its lifetime. A rented GPU has an hourly rent instead. Amounts
    are in the configured currency.

    Attributes:
        purchase_price: the GPU's purchase price.
        server_multiplier: the node's capital cost per GPU over the GPU's price.
        lifetime_years: the amortization period, in years of 365 days.
        residual_value: the value of the GPU's share of the node at the end.
        fixed_per_hour: other costs of holding it, per hour.
        rent_per_hour: the rent of a rented GPU, per hour; None when owned.
    """

    purchase_price: float = 0.0
    server_multiplier: float = 1.5
    lifetime_years: float = 5.0
    residual_value: float = 0.0
    fixed_per_hour: float = 0.0
    rent_per_hour: float | None = None

    def __post_init__(self) -> None:
        """Checks the amounts as the configuration does.

        Raises:
            ValueError: an amount is out of range (a pydantic ``ValidationError``).
        """
        HardwarePriceSettings(**dataclasses.asdict(self))

    @classmethod
    def from_settings(cls, settings: HardwarePriceSettings) -> HardwarePrice:
        """The price configured in a ``[[pricing.gpus]]`` entry or the default."""
        return cls(
            purchase_price=settings.purchase_price,
            server_multiplier=settings.server_multiplier,
            lifetime_years=settings.lifetime_years,
            residual_value=settings.residual_value,
            fixed_per_hour=settings.fixed_per_hour,
            rent_per_hour=settings.rent_per_hour,
        )

    @property
    def capital_cost(self) -> float:
        """The GPU's price with its share of the rest of the server."""
        return self.purchase_price * self.server_multiplier

    def hardware_per_second(self) -> float:
        """Amortization per second of holding the GPU; 0 for a rented one."""
        if self.rent_per_hour is not None:
            return 0.0
        lifetime_s = self.lifetime_years * SECONDS_PER_YEAR
        return (self.capital_cost - self.residual_value) / lifetime_s

    def fixed_per_second(self) -> float:
        """Fixed costs and rent per second of holding the GPU."""
        return (self.fixed_per_hour + (self.rent_per_hour or 0.0)) / 3600.0


def name_words(name: str) -> tuple[str, ...]:
    """A GPU name's words, lower case: ``A100-SXM4-80GB`` gives a100, sxm4, 80gb."""
    return tuple(re.findall(r"[0-9a-z]+", name.lower()))


def _contains(words: Sequence[str], part: Sequence[str]) -> bool:
    size = len(part)
    return any(
        tuple(words[i : i + size]) == tuple(part) for i in range(len(words) - size + 1)
    )


def _by_specificity(
    entries: Sequence[GpuPriceSettings],
) -> list[tuple[tuple[str, ...], HardwarePrice]]:
    """Entries with the most words first, then the longest; stable otherwise."""
    keyed = [
        (name_words(entry.match), HardwarePrice.from_settings(entry))
        for entry in entries
    ]
    return sorted(keyed, key=lambda item: (-len(item[0]), -len("".join(item[0]))))


class Pricing:
    """Turns a GPU's energy and time into money, in the one configured currency.

    Energy is priced at the meter and scaled up by the node's overhead (the
    rest of the server's draw) and the facility's PUE. Holding a GPU costs its
    amortization and fixed costs, whether or not it works.

    Attributes:
        currency: ISO 4217 code of every amount.
        tariff: the price of electricity.
        pue: the facility's power usage effectiveness.
        node_overhead: the node's energy over its GPUs' energy.
        default_hardware: the price of a GPU that no entry matches.
    """

    def __init__(self, settings: PricingSettings) -> None:
        """Builds the prices from the ``[pricing]`` settings.

        The built-in table of GPU prices is in US dollars, so it is used only
        when the currency is USD; configured entries always come first.
        """
        self.currency: str = settings.currency
        self.tariff = Tariff(settings.tariff)
        self.pue = settings.pue
        self.node_overhead = settings.node_overhead
        self.default_hardware = HardwarePrice.from_settings(settings.default_gpu)
        self._table = _by_specificity(settings.gpus)
        if settings.currency == "USD":
            self._table += _by_specificity(BUILTIN_GPU_PRICES)
        self._chosen: dict[str, HardwarePrice] = {}

    @property
    def energy_factor(self) -> float:
        """What one joule at the GPU becomes at the facility's meter."""
        return self.pue * self.node_overhead

    def energy_cost(
        self, joules: float, start_wall_s: float, end_wall_s: float
    ) -> float:
        """The cost of energy drawn by a GPU over an interval, facility included.

        Args:
            joules: the GPU's energy over the interval, in joules.
            start_wall_s: start of the interval, in Unix seconds.
            end_wall_s: end of the interval, in Unix seconds.

        Returns:
            kWh times the tariff, the PUE and the node overhead, in the
            configured currency.

        Raises:
            ValueError: the interval ends before it starts.
        """
        cost = self.tariff.energy_cost(joules, start_wall_s, end_wall_s)
        return cost * self.energy_factor

    def hardware_price(self, gpu_name: str) -> HardwarePrice:
        """The price of a GPU by its name: the most specific matching entry.

        Args:
            gpu_name: the name NVML reports, such as ``NVIDIA H100 80GB HBM3``.

        Returns:
            The configured entry, else the built-in one, else the default price.
        """
        chosen = self._chosen.get(gpu_name)
        if chosen is None:
            words = name_words(gpu_name)
            chosen = next(
                (price for part, price in self._table if _contains(words, part)), None
            )
            if chosen is None:
                logger.warning(
                    "no GPU price matches %r; pricing it with pricing.default_gpu",
                    gpu_name,
                )
                chosen = self.default_hardware
            self._chosen[gpu_name] = chosen
        return chosen

    def holding_cost(self, gpu_name: str, duration_s: float) -> tuple[float, float]:
        """The hardware and fixed costs of holding one GPU for a duration.

        Args:
            gpu_name: the GPU's name as NVML reports it.
            duration_s: how long it was held, in seconds.

        Returns:
            ``(hardware, fixed)``: amortization, and fixed costs with rent, in the
            configured currency.

        Raises:
            ValueError: the duration is negative.
        """
        if duration_s < 0:
            raise ValueError(f"negative duration: {duration_s} s")
        price = self.hardware_price(gpu_name)
        return (
            price.hardware_per_second() * duration_s,
            price.fixed_per_second() * duration_s,
        )
