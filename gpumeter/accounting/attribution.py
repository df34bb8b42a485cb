"""Attribution: each GPU's energy per interval, as idle and active, by process."""

from __future__ import annotations

import bisect
import dataclasses
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from gpumeter.accounting.records import GpuInterval, ProcessEnergy
from gpumeter.gpus.records import GpuSample, ProcessSample

logger = logging.getLogger(__name__)

__all__ = [
    "IDLE_QUANTILE",
    "IDLE_SHARE_OF_POWER_LIMIT",
    "IDLE_UTILIZATION_RATIO",
    "IDLE_WINDOW_READINGS",
    "Attributor",
    "HoldingPolicy",
    "IdleBaseline",
]

_Number = TypeVar("_Number", int, float)

HoldingPolicy = Literal["share", "separate"]
"""Who bears the cost of holding a GPU: its resident processes, or an idle workload."""

IDLE_UTILIZATION_RATIO = 0.05
"""Device utilization at or below which a sample may count as idle."""

IDLE_QUANTILE = 0.25
"""The quantile of recent idle power readings taken as the idle power."""

IDLE_SHARE_OF_POWER_LIMIT = 0.1
"""The fallback idle power's ceiling, as a fraction of the enforced power limit."""

IDLE_WINDOW_READINGS = 512
"""How many of the latest idle power readings per GPU the learner keeps."""


class _LowQuantile:
    """A sliding window of readings that answers a low quantile of them."""

    def __init__(self, size: int) -> None:
        self._arrival: deque[float] = deque()
        self._sorted: list[float] = []
        self._size = size

    def __len__(self) -> int:
        return len(self._arrival)

    def add(self, value: float) -> None:
        """Add one reading, dropping the oldest once the window is full."""
        if len(self._arrival) == self._size:
            oldest = self._arrival.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._arrival.append(value)
        bisect.insort(self._sorted, value)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile by nearest rank, never the lone minimum of two or more.

        Args:
            q: the quantile, 0-1.

        Returns:
            The reading at rank ``round(q * (n - 1))``, raised to rank 1 when the
            window holds two readings or more, so that one low reading alone never
            sets the answer.
        """
        rank = round(q * (len(self._sorted) - 1))
        rank = max(rank, min(1, len(self._sorted) - 1))
        return self._sorted[rank]


class IdleBaseline:
    """Each GPU's idle power: configured, or learned from its low-utilization history.

    A configured value (keyed by the GPU's UUID, or else by its label) always wins.
    Otherwise the baseline is learned per GPU UUID from the board power of *idle*
    samples: up, with power read, device utilization at most
    ``IDLE_UTILIZATION_RATIO`` (5 %) and no process with SM activity since the
    previous sample. Where device utilization is not readable (MIG), only a sample
    with no process at all counts as idle.

    The learned idle power is the lower quartile (``IDLE_QUANTILE``) of the latest
    ``IDLE_WINDOW_READINGS`` idle readings. A low quantile rather than the mean
    skips the readings just after work, when NVML's 1-second average power still
    carries the last kernels; a quantile rather than the minimum, and a rank that is
    never the lone lowest reading once there are two, keep one glitchy low reading
    from dragging the baseline down; the sliding window lets it follow slow drift
    (temperature, clocks) while old readings age out. Readings of 0 W or less are
    impossible for a powered board and are ignored.

    Before any idle sample, the baseline falls back to the lowest power seen so far
    on any up sample (the second lowest once there are two, for the same reason),
    but no more than ``IDLE_SHARE_OF_POWER_LIMIT`` of the GPU's enforced power
    limit: a GPU that has been busy all along has shown only working power, and
    datacenter GPUs idle at roughly a tenth of their limit (an H100 SXM at 60-100 W
    of 700 W). The attributor caps idle energy at the interval's energy, so the
    baseline never exceeds the interval's average power in effect.
    """

    def __init__(self, configured_watts: Mapping[str, float] | None = None) -> None:
        """Create the baseline.

        Args:
            configured_watts: idle power in watts, keyed by GPU UUID or label.
        """
        self._configured_watts = dict(configured_watts or {})
        self._idle_readings: dict[str, _LowQuantile] = {}
        self._lowest_watts: dict[str, list[float]] = {}
        self._limit_watts: dict[str, float] = {}

    def observe(self, sample: GpuSample) -> None:
        """Learn from one sample of a physical GPU.

        Args:
            sample: the sample; one that is down, has no power reading, or reads
                0 W or less teaches nothing.
        """
        power_watts = sample.power_watts
        if not sample.up or power_watts is None or power_watts <= 0.0:
            return
        uuid = sample.device.uuid
        if sample.power_limit_watts is not None and sample.power_limit_watts > 0:
            self._limit_watts[uuid] = sample.power_limit_watts
        lowest = self._lowest_watts.setdefault(uuid, [])
        bisect.insort(lowest, power_watts)
        del lowest[2:]
        if not _is_idle(sample):
            return
        readings = self._idle_readings.get(uuid)
        if readings is None:
            readings = self._idle_readings[uuid] = _LowQuantile(IDLE_WINDOW_READINGS)
            logger.info(
                "GPU %s: first idle reading, %.1f W; learning its idle power",
                sample.device.label,
                power_watts,
            )
        readings.add(power_watts)

    def watts(self, uuid: str, label: str) -> float | None:
        """The idle power of one GPU, in watts.

        Args:
            uuid: the GPU's UUID.
            label: the GPU's label.

        Returns:
            The configured value, else the learned one, else the lowest power seen;
            None while nothing is known.
        """
        for key in (uuid, label):
            if key in self._configured_watts:
                return self._configured_watts[key]
        readings = self._idle_readings.get(uuid)
        if readings is not None:
            return readings.quantile(IDLE_QUANTILE)
        lowest = self._lowest_watts.get(uuid)
        if lowest:
            limit = self._limit_watts.get(uuid)
            if limit is not None:
                return min(lowest[-1], limit * IDLE_SHARE_OF_POWER_LIMIT)
            return lowest[-1]
        return None

    def learned(self) -> Mapping[str, float]:
        """The idle power learned from idle samples, in watts, by GPU UUID.

        Returns:
            One entry per GPU with at least one idle reading; neither configured
            values nor the lowest-power fallback are included.
        """
        return {
            uuid: readings.quantile(IDLE_QUANTILE)
            for uuid, readings in self._idle_readings.items()
        }


def _is_idle(sample: GpuSample) -> bool:
    """Whether a sample shows the GPU idle (see `IdleBaseline`)."""
    if sample.utilization_ratio is None:
        return not sample.processes
    if sample.utilization_ratio > IDLE_UTILIZATION_RATIO:
        return False
    return all(
        process.sm_utilization_ratio is None or process.sm_utilization_ratio <= 0.0
        for process in sample.processes
    )


@dataclass(frozen=True, slots=True)
class _Reading:
    """What is kept of a physical GPU's last up sample."""

    monotonic_s: float
    wall_time_s: float
    power_watts: float | None
    energy_joules: float | None


class Attributor:
    """Turns consecutive samples of each physical GPU into attributed intervals.

    For each physical GPU (keyed by UUID) and each interval between two up samples:
    the energy is the delta of NVML's energy counter, or the trapezoid of the two
    power readings where the counter is missing or went back (driver reload, GPU
    reset); the idle part is the idle power times the interval, capped at the
    energy; the active part is split among the GPU's processes by SM share, else by
    memory share; the idle part and the hardware cost (``holding_share``) go by
    memory share to resident processes (``share``) or to the GPU's idle workload
    (``separate``). MIG instances' processes count as their physical GPU's, split by
    memory share. Each physical GPU's sample (with its instances' processes) is
    also fed to the idle baseline.
    """

    def __init__(self, idle: IdleBaseline, policy: HoldingPolicy = "share") -> None:
        """Create the attributor.

        Args:
            idle: the idle baseline; the attributor feeds it every sample.
            policy: ``share`` books idle energy and holding cost to resident
                processes by memory share; ``separate`` books them to the idle
                workload.

        Raises:
            ValueError: for an unknown policy.
        """
        if policy not in ("share", "separate"):
            raise ValueError(f"unknown holding policy {policy!r}")
        self._idle = idle
        self._policy: HoldingPolicy = policy
        self._previous: dict[str, _Reading] = {}

    def update(self, samples: Iterable[GpuSample]) -> list[GpuInterval]:
        """Attribute the interval since each GPU's previous up sample.

        Args:
            samples: one sampling round: physical GPUs and MIG instances.

        Returns:
            One interval per physical GPU that is up now and was up before; a GPU
            seen for the first time, or down now, gives none.
        """
        physical: list[GpuSample] = []
        instance_processes: dict[str, list[ProcessSample]] = {}
        for sample in samples:
            parent_uuid = sample.device.parent_uuid
            if parent_uuid is None:
                physical.append(sample)
            elif sample.up:
                # MIG gives no per-process SM shares: memory decides.
                instance_processes.setdefault(parent_uuid, []).extend(
                    dataclasses.replace(process, sm_utilization_ratio=None)
                    for process in sample.processes
                )

        intervals: list[GpuInterval] = []
        for sample in physical:
            if not sample.up:
                continue
            extra = instance_processes.get(sample.device.uuid)
            if extra:
                sample = dataclasses.replace(
                    sample, processes=(*sample.processes, *extra)
                )
            self._idle.observe(sample)
            interval = self._interval(sample)
            if interval is not None:
                intervals.append(interval)
        return intervals

    def _interval(self, sample: GpuSample) -> GpuInterval | None:
        """Attribute one physical GPU's interval ending at ``sample``."""
        device = sample.device
        previous = self._previous.get(device.uuid)
        self._previous[device.uuid] = _Reading(
            sample.monotonic_s,
            sample.wall_time_s,
            sample.power_watts,
            sample.energy_joules,
        )
        if previous is None:
            return None
        duration_s = sample.monotonic_s - previous.monotonic_s
        if duration_s <= 0.0:
            logger.warning(
                "GPU %s: sample not after the previous one (%.3f s); skipped",
                device.label,
                duration_s,
            )
            return None

        energy_joules, method = _energy(device.label, previous, sample, duration_s)
        idle_watts = self._idle.watts(device.uuid, device.label) or 0.0
        idle_joules = min(max(idle_watts, 0.0) * duration_s, energy_joules)
        active_joules = energy_joules - idle_joules
        processes = _merge(sample.processes)

        basis = "none"
        parts: tuple[ProcessEnergy, ...] = ()
        unattributed_joules, idle_holding_share = energy_joules, 1.0
        if processes:
            basis, active_shares = _active_shares(processes)
            if self._policy == "share":
                holding_shares = _memory_shares(processes)
                unattributed_joules, idle_holding_share = 0.0, 0.0
            else:
                holding_shares = [0.0] * len(processes)
                unattributed_joules, idle_holding_share = idle_joules, 1.0
            parts = tuple(
                ProcessEnergy(
                    pid=process.pid,
                    active_joules=active_joules * active_share,
                    idle_joules=idle_joules * holding_share,
                    holding_share=holding_share,
                )
                for process, active_share, holding_share in zip(
                    processes, active_shares, holding_shares, strict=True
                )
            )
        return GpuInterval(
            gpu=device.label,
            uuid=device.uuid,
            name=device.name,
            start_wall_s=previous.wall_time_s,
            end_wall_s=sample.wall_time_s,
            duration_s=duration_s,
            energy_joules=energy_joules,
            method=method,
            idle_joules=idle_joules,
            active_joules=active_joules,
            basis=basis,
            processes=parts,
            unattributed_joules=unattributed_joules,
            idle_holding_share=idle_holding_share,
        )


def _energy(
    label: str, previous: _Reading, sample: GpuSample, duration_s: float
) -> tuple[float, str]:
    """A GPU's energy over one interval, in joules, and how it was found.

    The counter's delta where both ends have it and it did not go back; else the
    trapezoid of the two power readings (one reading alone stands for the whole
    interval; none gives 0 J). A counter that went back with no power to integrate
    gives its new value: the energy since the reload, a lower bound.
    """
    start_joules, end_joules = previous.energy_joules, sample.energy_joules
    reset = False
    if start_joules is not None and end_joules is not None:
        if end_joules >= start_joules:
            return end_joules - start_joules, "counter"
        reset = True
        logger.warning(
            "GPU %s: energy counter went back from %.0f J to %.0f J (driver reload "
            "or GPU reset); estimating this interval from power",
            label,
            start_joules,
            end_joules,
        )

    powers_watts = [
        max(power_watts, 0.0)
        for power_watts in (previous.power_watts, sample.power_watts)
        if power_watts is not None
    ]
    if powers_watts:
        return sum(powers_watts) / len(powers_watts) * duration_s, "power"
    if reset and end_joules is not None:
        return max(end_joules, 0.0), "counter"
    logger.debug("GPU %s: no energy counter and no power; interval has 0 J", label)
    return 0.0, "power"


def _merge(processes: Iterable[ProcessSample]) -> list[ProcessSample]:
    """One entry per PID: memory and SM shares summed over its entries.

    A sum over the known values; None where no entry knows it.
    """
    by_pid: dict[int, ProcessSample] = {}
    for process in processes:
        seen = by_pid.get(process.pid)
        if seen is None:
            by_pid[process.pid] = process
            continue
        by_pid[process.pid] = ProcessSample(
            pid=process.pid,
            memory_bytes=_add(seen.memory_bytes, process.memory_bytes),
            sm_utilization_ratio=_add(
                seen.sm_utilization_ratio, process.sm_utilization_ratio
            ),
        )
    return list(by_pid.values())


def _add(a: _Number | None, b: _Number | None) -> _Number | None:
    """The sum of two optional numbers, None only if both are None."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _active_shares(processes: list[ProcessSample]) -> tuple[str, list[float]]:
    """How active energy is split among processes: the basis and each share."""
    if len(processes) == 1:
        return "single", [1.0]
    sm_ratios = [process.sm_utilization_ratio for process in processes]
    weights = [max(ratio, 0.0) for ratio in sm_ratios if ratio is not None]
    if len(weights) == len(processes) and sum(weights) > 0.0:
        return "sm", _normalize(weights)
    return "memory", _memory_shares(processes)


def _memory_shares(processes: list[ProcessSample]) -> list[float]:
    """Memory shares of the processes; equal shares where any memory is unknown."""
    weights = [
        max(process.memory_bytes, 0)
        for process in processes
        if process.memory_bytes is not None
    ]
    if len(weights) == len(processes) and sum(weights) > 0:
        return _normalize([float(weight) for weight in weights])
    return [1.0 / len(processes)] * len(processes)


def _normalize(weights: list[float]) -> list[float]:
    """Weights scaled to sum to 1; the sum must be positive."""
    total = sum(weights)
    return [weight / total for weight in weights]
