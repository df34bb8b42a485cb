"""A simulated GPU node: power, energy, utilization and processes, with ground truth.

The state of every simulated GPU is piecewise constant: it changes only when a process
is added, changed or removed, or when a reading is pinned. Energy is therefore
integrated exactly, in rational arithmetic, at every change and every read, using the
injected clock's ``monotonic()``. The reported power is the average over the last
second, computed from the same energy history, so that power * time and the energy
counter agree as they do on Ampere and newer GPUs.

The model, for a GPU that is not pinned:

* utilization ``u`` = the sum of its processes' SM percentages, capped at 100, over 100;
* power = idle + (max - idle) * ``u * (2 - u)``, a concave curve: the first kernels
  wake the clocks and memory, later ones add less;
* temperature relaxes towards ``ambient + thermal resistance * power`` with a time
  constant of tens of seconds;
* ground truth: at every instant the idle part is ``min(idle, power)``; the rest is
  active power, split among the GPU's processes by SM share, else by memory-controller
  share, else by memory held, else evenly; with no process resident it is booked as
  unattributed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

from gpumeter.clock import Clock
from gpumeter.sim.scenario import Scenario, ScenarioGpu, ScenarioProcess

logger = logging.getLogger(__name__)

__all__ = [
    "AMBIENT_C",
    "EnergyTruth",
    "SimGpu",
    "SimMigInstance",
    "SimNode",
    "SimProcess",
    "THERMAL_RESISTANCE_C_PER_W",
    "THERMAL_TIME_CONSTANT_S",
    "UtilizationSample",
    "power_curve",
]

AMBIENT_C = 30.0
"""Inlet air temperature in degrees Celsius: an idle GPU settles a little above it."""

THERMAL_RESISTANCE_C_PER_W = 0.08
"""Steady-state temperature rise per watt of board power, in °C/W."""

THERMAL_TIME_CONSTANT_S = 40.0
"""How slowly the temperature follows power, in seconds (first-order lag)."""

POWER_AVERAGE_WINDOW_S = 1
"""The window of the reported power average, in seconds (NVML on Ampere and newer)."""

DEFAULT_IDLE_POWER_W = 70.0
"""Idle board power of a simulated H100 SXM, in watts."""

DEFAULT_MAX_POWER_W = 700.0
"""Board power of a simulated H100 SXM at full utilization, in watts."""

H100_MEMORY_BYTES = 85_520_809_984
"""Framebuffer size NVML reports for an H100 80GB HBM3, in bytes."""

_NEVER = 2**64


def power_curve(utilization: Fraction) -> Fraction:
    """The concave share of the dynamic power range drawn at a given utilization.

    Args:
        utilization: device utilization as a fraction in [0, 1].

    Returns:
        ``u * (2 - u)``: 0 at idle, 1 at full load, with slope 2 at idle and 0 at
        full load.
    """
    return utilization * (2 - utilization)


@dataclass(frozen=True)
class SimProcess:
    """A compute process on a simulated GPU.

    Attributes:
        pid: host PID, as NVML reports it.
        memory_bytes: GPU memory the process holds, in bytes.
        sm_percent: its share of the SMs in percent, 0-100; it drives the device's
            utilization and power and appears in its utilization samples.
        memory_percent: its memory-controller utilization in percent, 0-100.
        command: the process's command line, for the demo's labels.
        container: container name, empty outside containers.
        pod: Kubernetes pod name, empty outside Kubernetes.
        namespace: Kubernetes namespace, empty outside Kubernetes.
    """

    pid: int
    memory_bytes: int
    sm_percent: int = 0
    memory_percent: int = 0
    command: str = ""
    container: str = ""
    pod: str = ""
    namespace: str = ""


@dataclass(frozen=True)
class SimMigInstance:
    """A MIG instance (GPU instance plus compute instance) of a simulated GPU.

    Attributes:
        gpu_instance_id: NVML's GPU instance ID.
        compute_instance_id: NVML's compute instance ID.
        uuid: the instance's ``MIG-…`` UUID.
        name: the instance's device name.
        memory_total_bytes: the instance's memory size, in bytes.
        memory_used_bytes: memory in use, in bytes; None derives it from the
            processes placed on the instance.
    """

    gpu_instance_id: int
    compute_instance_id: int
    uuid: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int | None = None


@dataclass(frozen=True)
class UtilizationSample:
    """One per-process utilization sample in a GPU's ring buffer.

    Attributes:
        pid: the sampled process.
        timestamp_us: when the sample was taken, in wall-clock microseconds since the
            Unix epoch (NVML's CPU timestamp).
        sm_percent: SM utilization of the process, 0-100.
        memory_percent: memory-controller utilization of the process, 0-100.
    """

    pid: int
    timestamp_us: int
    sm_percent: int
    memory_percent: int


@dataclass(frozen=True)
class EnergyTruth:
    """A GPU's exact cumulative energy since the simulation created it.

    ``idle_joules + sum(active_joules_by_pid.values()) + unattributed_joules`` equals
    ``total_joules`` up to float rounding (they are exact rationals inside).

    Attributes:
        total_joules: all energy the board drew, in joules.
        idle_joules: the idle part, ``min(idle power, power) * time``, in joules.
        active_joules_by_pid: the rest, split among processes, in joules per PID;
            every PID that was ever resident has an entry.
        unattributed_joules: active energy drawn while no process was resident (only
            possible with pinned power), in joules.
    """

    total_joules: float
    idle_joules: float
    active_joules_by_pid: Mapping[int, float]
    unattributed_joules: float


@dataclass
class _Pins:
    """Readings held at fixed values instead of following the model."""

    power_mw: int | None = None
    utilization_percent: int | None = None
    memory_utilization_percent: int | None = None
    memory_used_bytes: int | None = None
    temperature_c: int | None = None


class SimGpu:
    """One simulated physical GPU; create it with :meth:`SimNode.add_gpu`.

    Every method is thread-safe (it holds the node's lock) and first brings the
    integrals up to the clock's present, so callers never need to "tick" a GPU.

    Attributes:
        uuid: ``GPU-…`` UUID.
        name: marketing name, as NVML returns it.
        power_limit_mw: enforced power limit in milliwatts.
        memory_total_bytes: framebuffer size in bytes.
        memory_reserved_bytes: memory the driver reserves, in bytes; NVML's v1 memory
            info counts it as used, v2 reports it apart.
    """

    def __init__(
        self,
        node: SimNode,
        index: int,
        *,
        uuid: str,
        name: str,
        idle_power_w: float,
        max_power_w: float,
        power_limit_mw: int,
        memory_total_bytes: int,
        memory_reserved_bytes: int,
        energy_mj: int,
        temperature_c: float | None,
    ) -> None:
        if max_power_w < idle_power_w:
            raise ValueError(
                f"max power {max_power_w} W is below idle {idle_power_w} W"
            )
        self._node = node
        self._index = index
        self.uuid = uuid
        self.name = name
        self._idle_mw = Fraction(idle_power_w) * 1000
        self._max_mw = Fraction(max_power_w) * 1000
        self.power_limit_mw = power_limit_mw
        self.memory_total_bytes = memory_total_bytes
        self.memory_reserved_bytes = memory_reserved_bytes

        self._processes: dict[int, SimProcess] = {}
        self._placement: dict[int, int | None] = {}
        self._mig: tuple[SimMigInstance, ...] = ()
        self._pins = _Pins()
        self._lost = False
        self._errors: dict[str, int] = {}

        now, wall_us = node._now()
        self._last_t = now
        self._power_mw = self._model_power_mw()
        self._history: deque[tuple[Fraction, Fraction]] = deque([(now, self._power_mw)])
        self._counter_mj = Fraction(energy_mj)
        self._counter_running = True
        self._loaded_energy_mj: int | None = None
        self._temperature = (
            self._target_temperature() if temperature_c is None else temperature_c
        )

        self._total_mj = Fraction(0)
        self._idle_mj = Fraction(0)
        self._active_mj: dict[int, Fraction] = {}
        self._unattributed_mj = Fraction(0)

        self._samples: deque[UtilizationSample] = deque(maxlen=node.util_buffer_size)
        self._next_sample_us = wall_us

    # Identity and configuration

    @property
    def index(self) -> int:
        """NVML index of the GPU on its node."""
        return self._index

    @property
    def idle_power_w(self) -> float:
        """Board power with nothing running, in watts."""
        return float(self._idle_mw / 1000)

    @property
    def max_power_w(self) -> float:
        """Board power at full utilization, in watts."""
        return float(self._max_mw / 1000)

    @property
    def lost(self) -> bool:
        """Whether the GPU has fallen off the bus (every NVML call fails)."""
        return self._lost

    def set_lost(self, lost: bool) -> None:
        """Loses the GPU or brings it back; time and energy go on meanwhile.

        Args:
            lost: True makes every NVML call on the device fail with
                ``GPU_IS_LOST``; False restores it.
        """
        with self._node.lock:
            self._advance()
            if lost != self._lost:
                logger.info(
                    "simulated GPU %s %s", self.uuid, "lost" if lost else "back"
                )
            self._lost = lost

    @property
    def errors(self) -> Mapping[str, int]:
        """NVML function (C symbol name) to the return code it fails with."""
        with self._node.lock:
            return dict(self._errors)

    def set_error(self, function: str, code: int) -> None:
        """Makes one NVML function fail on this device.

        Args:
            function: the C symbol, such as ``nvmlDeviceGetPowerUsage`` or
                ``nvmlDeviceGetComputeRunningProcesses_v3``.
            code: the NVML return code, such as 3 (``NOT_SUPPORTED``).
        """
        with self._node.lock:
            self._errors[function] = code

    def clear_error(self, function: str) -> None:
        """Lets an NVML function succeed again on this device."""
        with self._node.lock:
            self._errors.pop(function, None)

    def reset_energy_counter(self, energy_mj: int = 0) -> None:
        """Sets the energy counter, as a driver reload or GPU reset does.

        Args:
            energy_mj: the counter's new value in millijoules.
        """
        with self._node.lock:
            self._advance()
            self._counter_mj = Fraction(energy_mj)

    def set_energy_integration(self, running: bool) -> None:
        """Starts or stops the energy counter; ground truth always integrates.

        Args:
            running: False freezes the counter at its present value.
        """
        with self._node.lock:
            self._advance()
            self._counter_running = running

    def pin(
        self,
        *,
        power_mw: int | None = None,
        utilization_percent: int | None = None,
        memory_utilization_percent: int | None = None,
        memory_used_bytes: int | None = None,
        temperature_c: int | None = None,
    ) -> None:
        """Holds readings at fixed values instead of the model's; None leaves one as is.

        A pinned power is reported exactly (no averaging) and is also what the energy
        counter and the ground truth integrate.

        Args:
            power_mw: board power in milliwatts.
            utilization_percent: device utilization, 0-100.
            memory_utilization_percent: memory-controller utilization, 0-100.
            memory_used_bytes: used memory (v1 ``used``), in bytes.
            temperature_c: core temperature in degrees Celsius.
        """
        with self._node.lock:
            self._advance()
            if power_mw is not None:
                self._pins.power_mw = power_mw
            if utilization_percent is not None:
                self._pins.utilization_percent = utilization_percent
            if memory_utilization_percent is not None:
                self._pins.memory_utilization_percent = memory_utilization_percent
            if memory_used_bytes is not None:
                self._pins.memory_used_bytes = memory_used_bytes
            if temperature_c is not None:
                self._pins.temperature_c = temperature_c
            self._state_changed()

    def unpin(self) -> None:
        """Lets every reading follow the model again."""
        with self._node.lock:
            self._advance()
            self._pins = _Pins()
            self._state_changed()

    # Processes and MIG

    @property
    def processes(self) -> tuple[SimProcess, ...]:
        """Every process on the GPU, on the whole device or on a MIG instance."""
        with self._node.lock:
            return tuple(self._processes.values())

    def processes_on(self, mig_instance: int | None) -> tuple[SimProcess, ...]:
        """The processes on one MIG instance, or on the whole GPU for None.

        Args:
            mig_instance: position of the instance in :attr:`mig_instances`.

        Returns:
            The processes placed there, in the order they were added.
        """
        with self._node.lock:
            return tuple(
                p
                for pid, p in self._processes.items()
                if self._placement[pid] == mig_instance
            )

    def mig_instance_of(self, pid: int) -> int | None:
        """Position of the MIG instance a process runs on; None for the whole GPU.

        Raises:
            KeyError: no such process on this GPU.
        """
        with self._node.lock:
            return self._placement[pid]

    def add_process(
        self, process: SimProcess, *, mig_instance: int | None = None
    ) -> None:
        """Starts a process on the GPU.

        Args:
            process: the new process; its PID must not be on this GPU already.
            mig_instance: position in :attr:`mig_instances` to run it on, or None
                for the whole GPU.

        Raises:
            ValueError: the PID is already on this GPU, or no such MIG instance.
        """
        with self._node.lock:
            if process.pid in self._processes:
                raise ValueError(f"PID {process.pid} already runs on {self.uuid}")
            if mig_instance is not None and not 0 <= mig_instance < len(self._mig):
                raise ValueError(f"{self.uuid} has no MIG instance {mig_instance}")
            self._advance()
            self._processes[process.pid] = process
            self._placement[process.pid] = mig_instance
            self._active_mj.setdefault(process.pid, Fraction(0))
            self._state_changed()

    def update_process(
        self,
        pid: int,
        *,
        memory_bytes: int | None = None,
        sm_percent: int | None = None,
        memory_percent: int | None = None,
    ) -> SimProcess:
        """Changes a running process's memory or utilization; None leaves one as is.

        Args:
            pid: the process.
            memory_bytes: GPU memory it holds, in bytes.
            sm_percent: its SM utilization, 0-100.
            memory_percent: its memory-controller utilization, 0-100.

        Returns:
            The process as it is now.

        Raises:
            KeyError: no such process on this GPU.
        """
        with self._node.lock:
            old = self._processes[pid]
            new = replace(
                old,
                memory_bytes=old.memory_bytes if memory_bytes is None else memory_bytes,
                sm_percent=old.sm_percent if sm_percent is None else sm_percent,
                memory_percent=(
                    old.memory_percent if memory_percent is None else memory_percent
                ),
            )
            if new != old:
                self._advance()
                self._processes[pid] = new
                self._state_changed()
            return new

    def remove_process(self, pid: int) -> None:
        """Ends a process.

        Raises:
            KeyError: no such process on this GPU.
        """
        with self._node.lock:
            if pid not in self._processes:
                raise KeyError(pid)
            self._advance()
            del self._processes[pid]
            del self._placement[pid]
            self._state_changed()

    @property
    def mig_instances(self) -> tuple[SimMigInstance, ...]:
        """The GPU's MIG instances; MIG mode is enabled exactly when there are any."""
        with self._node.lock:
            return self._mig

    def set_mig_instances(self, instances: Sequence[SimMigInstance]) -> None:
        """Replaces the MIG instances (empty disables MIG mode).

        Raises:
            ValueError: a process runs on an instance that would disappear.
        """
        with self._node.lock:
            stranded = [
                pid
                for pid, slot in self._placement.items()
                if slot is not None and slot >= len(instances)
            ]
            if stranded:
                raise ValueError(f"processes {stranded} run on removed MIG instances")
            self._advance()
            self._mig = tuple(instances)

    # Readings

    def power_mw(self) -> int:
        """Reported board power in milliwatts.

        Returns:
            The pinned power if there is one, else the average over the last second
            (before the GPU was created it is taken to have drawn its first power).
        """
        with self._node.lock:
            self._advance()
            if self._pins.power_mw is not None:
                return self._pins.power_mw
            window_start = self._last_t - POWER_AVERAGE_WINDOW_S
            entries = list(self._history)
            energy = Fraction(0)
            for i, (start, power) in enumerate(entries):
                begin = window_start if i == 0 else max(start, window_start)
                end = entries[i + 1][0] if i + 1 < len(entries) else self._last_t
                if end > begin:
                    energy += power * (end - begin)
            return round(energy / POWER_AVERAGE_WINDOW_S)

    def instant_power_mw(self) -> float:
        """Board power at this instant, in milliwatts (not what NVML reports)."""
        with self._node.lock:
            self._advance()
            return float(self._power_mw)

    def energy_mj(self) -> int:
        """The total-energy counter in millijoules, floored to the driver's integer."""
        with self._node.lock:
            self._advance()
            return math.floor(self._counter_mj)

    def utilization_percent(self) -> int:
        """Device utilization: the processes' SM percentages summed, capped at 100."""
        with self._node.lock:
            if self._pins.utilization_percent is not None:
                return self._pins.utilization_percent
            return self._sm_sum()

    def memory_utilization_percent(self) -> int:
        """Memory-controller utilization: the processes' summed, capped at 100."""
        with self._node.lock:
            if self._pins.memory_utilization_percent is not None:
                return self._pins.memory_utilization_percent
            total = sum(p.memory_percent for p in self._processes.values())
            return min(100, total)

    def memory_used_bytes(self) -> int:
        """Used memory as NVML's v1 info counts it (reserved memory included)."""
        with self._node.lock:
            if self._pins.memory_used_bytes is not None:
                return self._pins.memory_used_bytes
            used = self.memory_reserved_bytes + sum(
                p.memory_bytes for p in self._processes.values()
            )
            return min(used, self.memory_total_bytes)

    def mig_memory_used_bytes(self, mig_instance: int) -> int:
        """Used memory of one MIG instance, in bytes.

        Args:
            mig_instance: position in :attr:`mig_instances`.
        """
        with self._node.lock:
            instance = self._mig[mig_instance]
            if instance.memory_used_bytes is not None:
                return instance.memory_used_bytes
            used = sum(p.memory_bytes for p in self.processes_on(mig_instance))
            return min(used, instance.memory_total_bytes)

    def temperature_c(self) -> int:
        """Core temperature in whole degrees Celsius."""
        with self._node.lock:
            self._advance()
            if self._pins.temperature_c is not None:
                return self._pins.temperature_c
            return round(self._temperature)

    def utilization_samples(self, since_us: int = 0) -> list[UtilizationSample]:
        """Per-process utilization samples strictly newer than a timestamp.

        Args:
            since_us: NVML's ``lastSeenTimeStamp`` in wall-clock microseconds; 0 asks
                for the whole ring buffer.

        Returns:
            The matching samples, oldest first.
        """
        with self._node.lock:
            self._advance()
            return [s for s in self._samples if s.timestamp_us > since_us]

    @property
    def truth(self) -> EnergyTruth:
        """Exact cumulative energy, split into idle and per-process active parts."""
        with self._node.lock:
            self._advance()
            return EnergyTruth(
                total_joules=float(self._total_mj / 1000),
                idle_joules=float(self._idle_mj / 1000),
                active_joules_by_pid={
                    pid: float(mj / 1000) for pid, mj in self._active_mj.items()
                },
                unattributed_joules=float(self._unattributed_mj / 1000),
            )

    # The model

    def _sm_sum(self) -> int:
        return min(100, sum(p.sm_percent for p in self._processes.values()))

    def _model_power_mw(self) -> Fraction:
        utilization = Fraction(self._sm_sum(), 100)
        return self._idle_mw + (self._max_mw - self._idle_mw) * power_curve(utilization)

    def _target_temperature(self) -> float:
        return AMBIENT_C + THERMAL_RESISTANCE_C_PER_W * float(self._power_mw) / 1000

    def _active_shares(self) -> dict[int, Fraction]:
        processes = list(self._processes.values())
        if not processes:
            return {}
        for weighting in (
            [p.sm_percent for p in processes],
            [p.memory_percent for p in processes],
            [p.memory_bytes for p in processes],
        ):
            weights = {
                p.pid: max(0, w) for p, w in zip(processes, weighting, strict=True)
            }
            total = sum(weights.values())
            if total > 0:
                return {pid: Fraction(w, total) for pid, w in weights.items()}
        return {p.pid: Fraction(1, len(processes)) for p in processes}

    def _advance(self) -> None:
        """Integrates energy and temperature up to now and takes due samples."""
        now, wall_us = self._node._now()
        dt = now - self._last_t
        if dt > 0:
            self._integrate(dt)
            self._last_t = now
        self._take_samples(wall_us)
        window_start = self._last_t - POWER_AVERAGE_WINDOW_S
        while len(self._history) >= 2 and self._history[1][0] <= window_start:
            self._history.popleft()

    def _integrate(self, dt: Fraction) -> None:
        power = self._power_mw
        energy = power * dt
        if self._counter_running:
            self._counter_mj += energy
        self._total_mj += energy
        idle = min(self._idle_mw, power) * dt
        self._idle_mj += idle
        active = energy - idle
        if active > 0:
            shares = self._active_shares()
            if not shares:
                self._unattributed_mj += active
            for pid, share in shares.items():
                self._active_mj[pid] = self._active_mj.get(pid, Fraction(0)) + (
                    active * share
                )
        target = self._target_temperature()
        decay = math.exp(-float(dt) / THERMAL_TIME_CONSTANT_S)
        self._temperature = target + (self._temperature - target) * decay

    def _state_changed(self) -> None:
        """Recomputes power after a change; call right after :meth:`_advance`."""
        pinned = self._pins.power_mw
        power = self._model_power_mw() if pinned is None else Fraction(pinned)
        if power == self._power_mw:
            return
        self._power_mw = power
        if self._history[-1][0] == self._last_t:
            # A change at the same instant as the previous one: it never lasted.
            self._history.pop()
        if not self._history or self._history[-1][1] != power:
            self._history.append((self._last_t, power))

    def _take_samples(self, wall_us: int) -> None:
        period_us = self._node.util_sample_period_ms * 1000
        due = self._next_sample_us
        if due > wall_us:
            return
        # A period of 0 takes only the sample at creation or load time.
        times = 1 if period_us == 0 else (wall_us - due) // period_us + 1
        active = [
            p for p in self._processes.values() if p.sm_percent or p.memory_percent
        ]
        capacity = self._samples.maxlen or 0
        if active and times * len(active) > capacity:
            # Only the newest samples survive the ring buffer; skip the rest.
            keep = -(-capacity // len(active))
            due += (times - keep) * period_us
            times = keep
        if active:
            for k in range(times):
                stamp = due + k * period_us
                self._samples.extend(
                    UtilizationSample(p.pid, stamp, p.sm_percent, p.memory_percent)
                    for p in active
                )
        self._next_sample_us = _NEVER if period_us == 0 else due + times * period_us

    def _restart_sampling(self, wall_us: int) -> None:
        """Starts a new sampling schedule with a sample now; the buffer is kept.

        The ring takes the node's buffer size, keeping its newest samples. Call
        after :meth:`_advance`, so that samples due before now have the old state.
        """
        size = self._node.util_buffer_size
        if self._samples.maxlen != size:
            self._samples = deque(self._samples, maxlen=size)
        self._next_sample_us = wall_us
        self._take_samples(wall_us)

    # Scenarios

    def _apply_scenario(self, gpu: ScenarioGpu, idle_power_w: float) -> None:
        """Takes a scenario GPU's values; the caller holds the lock and has advanced."""
        self.name = gpu.name
        self.power_limit_mw = gpu.power_limit_mw
        self.memory_total_bytes = gpu.memory_total_bytes
        self.memory_reserved_bytes = 0
        self._idle_mw = Fraction(idle_power_w) * 1000
        self._max_mw = max(Fraction(gpu.power_limit_mw), self._idle_mw)
        self._pins = _Pins(
            power_mw=gpu.power_mw,
            utilization_percent=gpu.gpu_util_percent,
            memory_utilization_percent=gpu.memory_util_percent,
            memory_used_bytes=gpu.memory_used_bytes,
            temperature_c=gpu.temperature_c,
        )
        self._mig = tuple(
            SimMigInstance(
                gpu_instance_id=m.gpu_instance_id,
                compute_instance_id=m.compute_instance_id,
                uuid=m.uuid,
                name=m.name,
                memory_total_bytes=m.memory_total_bytes,
                memory_used_bytes=m.memory_used_bytes,
            )
            for m in gpu.mig_instances
        )
        placed: list[tuple[ScenarioProcess, int | None]] = [
            (p, None) for p in gpu.processes
        ]
        for position, instance in enumerate(gpu.mig_instances):
            placed.extend((p, position) for p in instance.processes)
        self._processes = {}
        self._placement = {}
        for process, slot in placed:
            if process.pid in self._processes:
                raise ValueError(f"PID {process.pid} appears twice on {gpu.uuid}")
            self._processes[process.pid] = SimProcess(
                pid=process.pid,
                memory_bytes=process.memory_bytes,
                sm_percent=process.sm_percent,
                memory_percent=process.memory_percent,
            )
            self._placement[process.pid] = slot
            self._active_mj.setdefault(process.pid, Fraction(0))
        self._lost = gpu.lost
        self._errors = dict(gpu.errors)
        self._counter_running = gpu.integrate_energy
        if gpu.energy_mj != self._loaded_energy_mj:
            self._counter_mj = Fraction(gpu.energy_mj)
        self._loaded_energy_mj = gpu.energy_mj
        self._state_changed()


class SimNode:
    """A simulated machine: its GPUs and the node-wide NVML behaviour.

    Attributes:
        clock: the clock that drives integration (``monotonic``) and sample
            timestamps (``time``).
        lock: held by every reading and change, on any GPU of the node.
        driver_version: what ``nvmlSystemGetDriverVersion`` returns.
        init_error: if non-zero, NVML init fails with this code.
        missing_functions: C symbols that behave as if absent from the library.
        util_sample_period_ms: interval between per-process utilization samples,
            in milliseconds; 0 takes only the sample at creation or load time.
        util_buffer_size: utilization samples kept per GPU.
        util_sizing_count: if non-zero, the count the sizing call of the process
            utilization query reports.
        process_growth: processes that appear between the sizing and the fill
            call of the running-process query.
        scenario_idle_power_w: idle power, in watts, that GPUs built from a
            scenario use for their ground truth (scenarios give no idle power).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        driver_version: str = "550.54.15",
        init_error: int = 0,
        missing_functions: Iterable[str] = (),
        util_sample_period_ms: int = 100,
        util_buffer_size: int = 128,
        util_sizing_count: int = 0,
        process_growth: int = 0,
        scenario_idle_power_w: float = DEFAULT_IDLE_POWER_W,
    ) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.driver_version = driver_version
        self.init_error = init_error
        self.missing_functions = frozenset(missing_functions)
        self.util_sample_period_ms = util_sample_period_ms
        self.util_buffer_size = util_buffer_size
        self.util_sizing_count = util_sizing_count
        self.process_growth = process_growth
        self.scenario_idle_power_w = scenario_idle_power_w
        self._check_sampling()
        self._gpus: list[SimGpu] = []

    @property
    def gpus(self) -> tuple[SimGpu, ...]:
        """The GPUs in NVML index order."""
        with self.lock:
            return tuple(self._gpus)

    def gpu(self, uuid: str) -> SimGpu:
        """The GPU with a given UUID.

        Raises:
            KeyError: no GPU has that UUID.
        """
        with self.lock:
            for gpu in self._gpus:
                if gpu.uuid == uuid:
                    return gpu
        raise KeyError(uuid)

    def add_gpu(
        self,
        uuid: str,
        *,
        name: str = "NVIDIA H100 80GB HBM3",
        idle_power_w: float = DEFAULT_IDLE_POWER_W,
        max_power_w: float = DEFAULT_MAX_POWER_W,
        power_limit_mw: int = 700_000,
        memory_total_bytes: int = H100_MEMORY_BYTES,
        memory_reserved_bytes: int = 0,
        energy_mj: int = 0,
        temperature_c: float | None = None,
    ) -> SimGpu:
        """Installs a GPU that follows the physical model, at the next index.

        Args:
            uuid: ``GPU-…`` UUID.
            name: marketing name.
            idle_power_w: board power with nothing running, in watts.
            max_power_w: board power at full utilization, in watts.
            power_limit_mw: enforced power limit, in milliwatts.
            memory_total_bytes: framebuffer size, in bytes.
            memory_reserved_bytes: memory the driver reserves, in bytes.
            energy_mj: the energy counter's starting value, in millijoules.
            temperature_c: starting temperature in °C; None starts at the steady
                state of idle power.

        Returns:
            The new GPU.
        """
        with self.lock:
            gpu = SimGpu(
                self,
                len(self._gpus),
                uuid=uuid,
                name=name,
                idle_power_w=idle_power_w,
                max_power_w=max_power_w,
                power_limit_mw=power_limit_mw,
                memory_total_bytes=memory_total_bytes,
                memory_reserved_bytes=memory_reserved_bytes,
                energy_mj=energy_mj,
                temperature_c=temperature_c,
            )
            self._gpus.append(gpu)
            return gpu

    @classmethod
    def from_scenario(
        cls,
        scenario: Scenario,
        clock: Clock,
        *,
        idle_power_w: float = DEFAULT_IDLE_POWER_W,
    ) -> SimNode:
        """Builds a node whose NVML readings are exactly the scenario's values.

        Args:
            scenario: the node to simulate.
            clock: drives energy integration and utilization sample stamps.
            idle_power_w: idle power of every GPU, in watts, for the ground truth
                only (scenario GPUs report their pinned ``power_mw``).

        Returns:
            The node; every GPU has its first utilization sample stamped now.
        """
        node = cls(clock, scenario_idle_power_w=idle_power_w)
        node.load(scenario)
        return node

    def load(self, scenario: Scenario) -> None:
        """Switches the node to a new scenario, as a driver reload with new state.

        GPUs are matched by UUID. A GPU whose scenario ``energy_mj`` equals the one
        it was last loaded with keeps counting from where its counter is; otherwise
        its counter is set to the new ``energy_mj``. Ground truth and the
        utilization ring buffer carry on for matched GPUs; every GPU takes a
        sample of its new processes now and every period from now on.

        Args:
            scenario: the new state of the node.
        """
        uuids = [spec.uuid for spec in scenario.gpus]
        if len(set(uuids)) != len(uuids):
            raise ValueError(f"a scenario lists a GPU UUID twice: {uuids}")
        with self.lock:
            self._check_sampling(scenario.util_sample_period_ms)
            by_uuid = {gpu.uuid: gpu for gpu in self._gpus}
            for gpu in self._gpus:
                gpu._advance()
            self.driver_version = scenario.driver_version
            self.init_error = scenario.init_error
            self.missing_functions = frozenset(scenario.missing_functions)
            self.util_sample_period_ms = scenario.util_sample_period_ms
            self.util_buffer_size = scenario.util_buffer_size
            self.util_sizing_count = scenario.util_sizing_count
            self.process_growth = scenario.process_growth

            gpus: list[SimGpu] = []
            for index, spec in enumerate(scenario.gpus):
                gpu = by_uuid.get(spec.uuid) or SimGpu(
                    self,
                    index,
                    uuid=spec.uuid,
                    name=spec.name,
                    idle_power_w=self.scenario_idle_power_w,
                    max_power_w=max(
                        spec.power_limit_mw / 1000, self.scenario_idle_power_w
                    ),
                    power_limit_mw=spec.power_limit_mw,
                    memory_total_bytes=spec.memory_total_bytes,
                    memory_reserved_bytes=0,
                    energy_mj=spec.energy_mj,
                    temperature_c=spec.temperature_c,
                )
                gpu._index = index
                gpu._apply_scenario(spec, self.scenario_idle_power_w)
                gpus.append(gpu)
            self._gpus = gpus
            _, wall_us = self._now()
            for gpu in gpus:
                gpu._restart_sampling(wall_us)
            logger.debug("simulated node loaded a scenario with %d GPUs", len(gpus))

    def _now(self) -> tuple[Fraction, int]:
        """Monotonic seconds (exact) and wall-clock microseconds, read together."""
        return Fraction(self.clock.monotonic()), round(self.clock.time() * 1_000_000)

    def _check_sampling(self, period_ms: int | None = None) -> None:
        period = self.util_sample_period_ms if period_ms is None else period_ms
        if period < 0:
            raise ValueError(f"util_sample_period_ms must not be negative: {period}")
