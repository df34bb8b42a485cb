"""Immutable records that the GPU source produces, in base units."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GpuCapabilities", "GpuDevice", "GpuSample", "ProcessSample"]


@dataclass(frozen=True, slots=True)
class GpuCapabilities:
    """What a device can report, probed once when the device is first seen.

    Attributes:
        power: board power draw is readable.
        energy_counter: the total-energy counter exists (Volta and newer).
        utilization: device utilization rates are readable.
        process_utilization: per-process utilization samples are readable.
        power_limit: the enforced power limit is readable.
        temperature: the core temperature is readable.
        mig_enabled: MIG mode is on; processes and memory are per instance.
    """

    power: bool
    energy_counter: bool
    utilization: bool
    process_utilization: bool
    power_limit: bool
    temperature: bool
    mig_enabled: bool


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """Identity of one physical GPU or one MIG instance.

    Attributes:
        label: the ``gpu`` label: the NVML index (``"0"``) for a physical GPU,
            ``"<index>/gi<G>/ci<C>"`` for a MIG instance.
        uuid: NVML's UUID, ``GPU-…`` or ``MIG-…``; the key of everything.
        name: the device name.
        index: the NVML index of the physical GPU (of the parent for MIG).
        parent_uuid: the physical GPU's UUID for a MIG instance, else None.
        gpu_instance_id: MIG GPU instance ID, else None.
        compute_instance_id: MIG compute instance ID, else None.
    """

    label: str
    uuid: str
    name: str
    index: int
    parent_uuid: str | None = None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One process's use of one GPU (or MIG instance) at sampling time.

    Attributes:
        pid: host PID as NVML reports it.
        memory_bytes: GPU memory held, in bytes; None where the driver hides it.
        sm_utilization_ratio: mean SM utilization over the samples the driver took
            since the previous read, 0-1; 0 when the driver took none (the process
            ran no kernels); None where per-process utilization is unavailable.
    """

    pid: int
    memory_bytes: int | None
    sm_utilization_ratio: float | None


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One reading of one GPU or MIG instance.

    A field is None when the device lacks the capability or the call failed this
    time; ``up`` is false when the device could not be read at all (lost, reset).

    Attributes:
        device: which GPU this is.
        monotonic_s: monotonic clock at sampling, in seconds (for intervals).
        wall_time_s: wall clock at sampling, in Unix seconds (for the books).
        up: the device answered.
        power_watts: board power draw, in watts (board level; None for MIG).
        energy_joules: NVML's total-energy counter, in joules since the driver
            loaded (board level; None for MIG or GPUs without the counter).
        utilization_ratio: fraction of time a kernel ran, 0-1.
        memory_used_bytes: memory in use, in bytes.
        memory_total_bytes: memory size, in bytes.
        temperature_celsius: core temperature, in degrees Celsius.
        power_limit_watts: enforced power limit, in watts.
        processes: the compute processes on this device.
    """

    device: GpuDevice
    monotonic_s: float
    wall_time_s: float
    up: bool
    power_watts: float | None = None
    energy_joules: float | None = None
    utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_celsius: float | None = None
    power_limit_watts: float | None = None
    processes: tuple[ProcessSample, ...] = ()
