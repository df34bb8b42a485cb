"""Scenarios: a node's GPUs, processes and faults, described once for every fake NVML.

A scenario is plain data. The simulated NVML (``gpumeter.sim.nvml``) and the fake C
driver used by the tests read the same scenario, so that one contract suite can hold
both to NVML's documented behaviour. Values use NVML's own units (mW, mJ, bytes,
percent) so that what a test writes is exactly what an NVML call returns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Scenario",
    "ScenarioGpu",
    "ScenarioMigInstance",
    "ScenarioProcess",
]


@dataclass(frozen=True)
class ScenarioProcess:
    """A compute process on a GPU or MIG instance.

    Attributes:
        pid: host PID, as NVML reports it.
        memory_bytes: GPU memory the process holds (``usedGpuMemory``).
        sm_percent: SM utilization in the process's utilization samples, 0-100.
            A process with 0 for both utilizations produces no samples.
        memory_percent: memory-controller utilization in its samples, 0-100.
    """

    pid: int
    memory_bytes: int
    sm_percent: int = 0
    memory_percent: int = 0


@dataclass(frozen=True)
class ScenarioMigInstance:
    """A MIG instance (GPU instance plus compute instance) of a MIG-enabled GPU.

    Attributes:
        gpu_instance_id: NVML's GPU instance ID.
        compute_instance_id: NVML's compute instance ID.
        uuid: the instance's ``MIG-…`` UUID.
        name: the instance's device name, such as ``NVIDIA H100 80GB HBM3 MIG 1g.10gb``.
        memory_total_bytes: the instance's memory size.
        memory_used_bytes: memory in use on the instance.
        processes: compute processes running on the instance.
    """

    gpu_instance_id: int
    compute_instance_id: int
    uuid: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    processes: tuple[ScenarioProcess, ...] = ()


@dataclass(frozen=True)
class ScenarioGpu:
    """One physical GPU.

    Attributes:
        uuid: ``GPU-…`` UUID.
        name: marketing name as NVML returns it.
        power_mw: board power draw in milliwatts.
        energy_mj: the total-energy counter in millijoules when the scenario is
            (re)loaded. A reload with a different value resets the counter there,
            as a driver reload does; with the same value the counter carries on.
        integrate_energy: if true, the energy counter grows by ``power_mw`` over the
            time that passes (CLOCK_MONOTONIC for the C fake, the injected clock for
            the simulation); if false it stays at ``energy_mj``.
        gpu_util_percent: device utilization (``nvmlUtilization_t.gpu``), 0-100.
        memory_util_percent: memory-controller utilization, 0-100.
        memory_total_bytes: total framebuffer memory.
        memory_used_bytes: used framebuffer memory (v1 ``nvmlMemory_t.used``).
        temperature_c: core temperature in degrees Celsius.
        power_limit_mw: enforced power limit in milliwatts.
        processes: compute processes on the whole GPU (MIG off).
        mig_instances: MIG instances; MIG mode is enabled exactly when non-empty.
        lost: every call on this device returns ``NVML_ERROR_GPU_IS_LOST``.
        errors: NVML function (C symbol name, e.g. ``nvmlDeviceGetPowerUsage``) to
            the NVML return code it fails with on this device, such as 3
            (``NOT_SUPPORTED``) or 4 (``NO_PERMISSION``).
    """

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    power_mw: int = 70_000
    energy_mj: int = 0
    integrate_energy: bool = True
    gpu_util_percent: int = 0
    memory_util_percent: int = 0
    memory_total_bytes: int = 85_520_809_984
    memory_used_bytes: int = 0
    temperature_c: int = 35
    power_limit_mw: int = 700_000
    processes: tuple[ScenarioProcess, ...] = ()
    mig_instances: tuple[ScenarioMigInstance, ...] = ()
    lost: bool = False
    errors: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """A whole node as NVML sees it.

    Attributes:
        gpus: the physical GPUs, in NVML index order.
        driver_version: what ``nvmlSystemGetDriverVersion`` returns.
        init_error: if non-zero, ``nvmlInitWithFlags`` fails with this code
            (9 is ``DRIVER_NOT_LOADED``).
        missing_functions: C symbols that behave as if absent from the library:
            calls fail with ``NVML_ERROR_FUNCTION_NOT_FOUND`` (13), which pynvml
            raises as ``NVMLError_FunctionNotFound`` (or as
            ``NVMLLibraryMismatchError`` from the unversioned process-list wrapper).
        util_sample_period_ms: how often a process's utilization sample is taken;
            samples are stamped in CPU microseconds (CLOCK_REALTIME), as the driver
            does, and kept in a ring buffer.
        util_buffer_size: samples kept per device; the oldest are dropped first.
        util_sizing_count: if non-zero, the sizing call of
            ``nvmlDeviceGetProcessUtilization`` reports this count whatever the number
            of samples (real drivers report a fixed 100); the fill call then
            writes the real number and sets the count to it.
        process_growth: processes that "start" between the sizing and the fill call of
            ``nvmlDeviceGetComputeRunningProcesses_v3``: the fill call sees this many
            more than the sizing call did. Past pynvml's ``2n+5`` headroom the fill
            call fails with ``INSUFFICIENT_SIZE``, as on a real driver.
    """

    gpus: tuple[ScenarioGpu, ...]
    driver_version: str = "550.54.15"
    init_error: int = 0
    missing_functions: frozenset[str] = frozenset()
    util_sample_period_ms: int = 100
    util_buffer_size: int = 128
    util_sizing_count: int = 0
    process_growth: int = 0

    def to_json(self) -> str:
        """Serializes the scenario as JSON (sets become sorted lists)."""
        data = asdict(self)
        data["missing_functions"] = sorted(self.missing_functions)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Scenario:
        """Parses what :meth:`to_json` wrote."""
        data: dict[str, Any] = json.loads(text)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        """Builds a scenario from plain dicts and lists, as JSON or TOML give them."""
        gpus = tuple(_gpu_from_dict(g) for g in data["gpus"])
        rest = {k: v for k, v in data.items() if k != "gpus"}
        rest["missing_functions"] = frozenset(rest.get("missing_functions", ()))
        return cls(gpus=gpus, **rest)


def _processes_from(items: Any) -> tuple[ScenarioProcess, ...]:
    return tuple(ScenarioProcess(**p) for p in items or ())


def _gpu_from_dict(data: Mapping[str, Any]) -> ScenarioGpu:
    fields = dict(data)
    fields["processes"] = _processes_from(fields.get("processes"))
    fields["mig_instances"] = tuple(
        ScenarioMigInstance(
            **{**m, "processes": _processes_from(m.get("processes"))},
        )
        for m in fields.get("mig_instances") or ()
    )
    fields["errors"] = dict(fields.get("errors") or {})
    return ScenarioGpu(**fields)
