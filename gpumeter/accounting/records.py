"""Records of attribution: one GPU's energy over one interval, split among processes."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GpuInterval", "ProcessEnergy"]


@dataclass(frozen=True, slots=True)
class ProcessEnergy:
    """One process's part of one GPU's interval.

    Attributes:
        pid: host PID.
        active_joules: its part of the energy above the idle baseline, in joules.
        idle_joules: its part of the idle energy, in joules (zero under the
            ``separate`` policy, where idle energy goes to the GPU's idle workload).
        holding_share: the fraction (0-1) of the cost of holding the GPU (idle
            energy's share and the hardware cost) that it bears.
    """

    pid: int
    active_joules: float
    idle_joules: float
    holding_share: float


@dataclass(frozen=True, slots=True)
class GpuInterval:
    """One physical GPU's energy between two samples, and who it belongs to.

    Everything adds up: ``energy_joules`` equals the processes' active and idle
    joules plus ``unattributed_joules``, and the processes' holding shares plus
    ``idle_holding_share`` equal 1.

    Attributes:
        gpu: the GPU's label (NVML index).
        uuid: the GPU's UUID.
        name: the GPU's name (for its price).
        start_wall_s: start of the interval, in Unix seconds.
        end_wall_s: end of the interval, in Unix seconds.
        duration_s: the interval's length on the monotonic clock, in seconds.
        energy_joules: the GPU's energy over the interval, in joules.
        method: ``counter`` (NVML's energy counter) or ``power`` (power samples
            integrated, where there is no counter or it was reset).
        idle_joules: the idle baseline's energy over the interval, in joules.
        active_joules: the energy above the idle baseline, in joules.
        basis: how active energy was split: ``sm`` (SM-utilization shares),
            ``memory`` (memory shares, where SM shares were missing or all zero),
            ``single`` (one process took all), ``none`` (no process).
        processes: each process's part.
        unattributed_joules: energy booked to the GPU's ``idle`` workload: idle
            energy under the ``separate`` policy, and all energy while no process
            holds the GPU.
        idle_holding_share: the fraction of the holding cost booked to the GPU's
            ``idle`` workload.
    """

    gpu: str
    uuid: str
    name: str
    start_wall_s: float
    end_wall_s: float
    duration_s: float
    energy_joules: float
    method: str
    idle_joules: float
    active_joules: float
    basis: str
    processes: tuple[ProcessEnergy, ...]
    unattributed_joules: float
    idle_holding_share: float
