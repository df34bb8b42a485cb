"""A simulated NVML that looks like the ``pynvml`` module for the calls gpumeter makes.

An instance of :class:`SimulatedNvml` stands where the ``pynvml`` module would: its
methods carry pynvml's names, take the same arguments and return the same kinds of
objects (ctypes structures, ``nvmlFriendlyObject`` process entries, decoded strings),
and they fail by raising pynvml's own exception classes, so code written against
pynvml cannot tell the two apart. Constants and exception classes are read through to
pynvml. Importing pynvml does not load the NVML library, so this works on any machine.

Scenario ``errors`` and ``missing_functions`` name C symbols, as the real library
exports them: ``nvmlDeviceGetCount_v2``, ``nvmlDeviceGetHandleByIndex_v2``,
``nvmlDeviceGetComputeRunningProcesses_v3`` (which the unversioned process-list
wrapper calls), ``nvmlDeviceGetMemoryInfo_v2`` (memory info with ``version=``), and
the wrapper's own name for the rest.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from typing import Any, NoReturn

import pynvml

from gpumeter.clock import Clock
from gpumeter.sim.node import SimGpu, SimMigInstance, SimNode, SimProcess
from gpumeter.sim.scenario import Scenario

logger = logging.getLogger(__name__)

__all__ = ["GROWTH_FIRST_PID", "MAX_MIG_DEVICES", "SimDeviceHandle", "SimulatedNvml"]

MAX_MIG_DEVICES = 7
"""MIG devices a MIG-enabled simulated GPU can hold (as on A100 and H100)."""

GROWTH_FIRST_PID = 4_194_304
"""PID of the first process that ``process_growth`` makes appear mid-query.

Linux's ``PID_MAX_LIMIT``: no real process has it, so the daemon finds no ``/proc``
entry for these, as for a process that exited at once.
"""

_NOT_IN_MIG = 0xFFFFFFFF
_MEMORY_NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF

_SUCCESS: int = pynvml.NVML_SUCCESS
_UNINITIALIZED: int = pynvml.NVML_ERROR_UNINITIALIZED
_INVALID_ARGUMENT: int = pynvml.NVML_ERROR_INVALID_ARGUMENT
_NOT_SUPPORTED: int = pynvml.NVML_ERROR_NOT_SUPPORTED
_NOT_FOUND: int = pynvml.NVML_ERROR_NOT_FOUND
_INSUFFICIENT_SIZE: int = pynvml.NVML_ERROR_INSUFFICIENT_SIZE
_FUNCTION_NOT_FOUND: int = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
_GPU_IS_LOST: int = pynvml.NVML_ERROR_GPU_IS_LOST
_ARGUMENT_VERSION_MISMATCH: int = pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH

_PROCESS_LIST_V3 = "nvmlDeviceGetComputeRunningProcesses_v3"
_PROCESS_LIST_V2 = "nvmlDeviceGetComputeRunningProcesses_v2"

# Names read through to pynvml: constants, exception classes and structures.
_PASSED_THROUGH_PREFIXES = ("NVML_", "NVMLError", "nvmlMemory_v", "c_nvml")


def _fail(code: int) -> NoReturn:
    # NVMLError.__new__ picks the subclass for the code, as pynvml's checks do.
    raise pynvml.NVMLError(code)


class SimDeviceHandle:
    """An opaque device handle, for a whole GPU or one of its MIG devices.

    Like pynvml's handles, two handles for the same device are distinct and
    unhashable: key caches by index or UUID.
    """

    __slots__ = ("_gpu_index", "_mig_slot")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, gpu_index: int, mig_slot: int | None = None) -> None:
        self._gpu_index = gpu_index
        self._mig_slot = mig_slot

    def __repr__(self) -> str:
        where = "" if self._mig_slot is None else f" MIG {self._mig_slot}"
        return f"<simulated NVML device {self._gpu_index}{where}>"


@dataclass(frozen=True)
class _Device:
    """What a handle resolved to."""

    gpu: SimGpu
    mig_slot: int | None

    @property
    def mig(self) -> SimMigInstance | None:
        return None if self.mig_slot is None else self.gpu.mig_instances[self.mig_slot]


class SimulatedNvml:
    """The pynvml API over a :class:`SimNode`; use an instance as the pynvml module.

    Init and shutdown are reference-counted like NVML's; every other call fails with
    ``NVMLError_Uninitialized`` while the count is zero. Calls are serialized by the
    node's lock, so the daemon may call from any thread.

    Attributes:
        NVMLError: pynvml's base exception class.
        NVMLLibraryMismatchError: what pynvml raises from an unversioned wrapper whose
            versioned symbol is missing; not an ``NVMLError``.
    """

    NVMLError: Any = pynvml.NVMLError
    NVMLLibraryMismatchError: Any = pynvml.NVMLLibraryMismatchError
    NVML_SUCCESS: int = pynvml.NVML_SUCCESS
    NVML_TEMPERATURE_GPU: int = pynvml.NVML_TEMPERATURE_GPU
    NVML_DEVICE_MIG_ENABLE: int = pynvml.NVML_DEVICE_MIG_ENABLE
    NVML_DEVICE_MIG_DISABLE: int = pynvml.NVML_DEVICE_MIG_DISABLE
    nvmlMemory_v2: int = pynvml.nvmlMemory_v2

    def __init__(self, node: SimNode) -> None:
        self._node = node
        self._lock: threading.RLock = node.lock
        self._loaded = False
        self._refcount = 0

    @classmethod
    def from_scenario(cls, scenario: Scenario, clock: Clock) -> SimulatedNvml:
        """A simulated NVML over a node built from a scenario.

        Args:
            scenario: the node's GPUs, processes and faults.
            clock: drives energy integration and utilization sample stamps.
        """
        return cls(SimNode.from_scenario(scenario, clock))

    @property
    def node(self) -> SimNode:
        """The simulated node behind the API, for faults and ground truth."""
        return self._node

    def __getattr__(self, name: str) -> Any:
        if name.startswith(_PASSED_THROUGH_PREFIXES):
            return getattr(pynvml, name)
        raise AttributeError(name)

    # Library

    def nvmlInitWithFlags(self, flags: int) -> None:
        """Initializes the library (refcounted); ``flags`` are accepted and ignored.

        Raises:
            NVMLError: the node's ``init_error`` (first init only; nested inits
                just count), or ``FunctionNotFound``.
        """
        with self._lock:
            # pynvml loads the library before it calls init, even if init then fails.
            self._loaded = True
            if "nvmlInitWithFlags" in self._node.missing_functions:
                _fail(_FUNCTION_NOT_FOUND)
            if self._refcount == 0 and self._node.init_error:
                _fail(self._node.init_error)
            self._refcount += 1

    def nvmlInit(self) -> None:
        """Initializes the library; the same as ``nvmlInitWithFlags(0)``."""
        self.nvmlInitWithFlags(0)

    def nvmlShutdown(self) -> None:
        """Drops one reference taken by init.

        Raises:
            NVMLError_Uninitialized: the library is not initialized.
        """
        with self._lock:
            self._enter("nvmlShutdown")
            self._refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        """The driver version string."""
        with self._lock:
            self._enter("nvmlSystemGetDriverVersion")
            return self._node.driver_version

    def nvmlDeviceGetCount(self) -> int:
        """Number of physical GPUs (MIG devices not counted)."""
        with self._lock:
            self._enter("nvmlDeviceGetCount_v2")
            return len(self._node.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimDeviceHandle:
        """A handle for the GPU at an NVML index.

        Raises:
            NVMLError_InvalidArgument: no GPU at that index.
            NVMLError_GpuIsLost: the GPU is lost.
        """
        symbol = "nvmlDeviceGetHandleByIndex_v2"
        with self._lock:
            self._enter(symbol)
            position = ctypes.c_uint(index).value
            gpus = self._node.gpus
            if position >= len(gpus):
                _fail(_INVALID_ARGUMENT)
            self._check_device(gpus[position], symbol)
            return SimDeviceHandle(position)

    # Identity

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        """NVML index of a GPU; ``NOT_SUPPORTED`` on MIG devices."""
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetIndex")
            self._whole_gpu_only(device)
            return device.gpu.index

    def nvmlDeviceGetName(self, handle: Any) -> str:
        """Device name; a MIG device's own name on MIG handles."""
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetName")
            mig = device.mig
            return device.gpu.name if mig is None else mig.name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        """``GPU-…`` UUID, or ``MIG-…`` on MIG handles."""
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetUUID")
            mig = device.mig
            return device.gpu.uuid if mig is None else mig.uuid

    # Power and energy

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        """Board power in milliwatts (the last second's average)."""
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetPowerUsage")
            self._whole_gpu_only(device)
            return device.gpu.power_mw()

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        """Energy counter in millijoules since the (simulated) driver load."""
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetTotalEnergyConsumption")
            self._whole_gpu_only(device)
            return device.gpu.energy_mj()

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        """Enforced power limit in milliwatts."""
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetEnforcedPowerLimit")
            self._whole_gpu_only(device)
            return device.gpu.power_limit_mw

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        """Power management limit in milliwatts (the enforced limit here)."""
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetPowerManagementLimit")
            self._whole_gpu_only(device)
            return device.gpu.power_limit_mw

    # Memory, utilization, temperature

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        """Memory in bytes: ``c_nvmlMemory_t``, or ``c_nvmlMemory_v2_t`` with a version.

        Args:
            handle: a GPU or MIG handle.
            version: ``nvmlMemory_v2`` for the v2 structure, whose ``used`` leaves out
                the driver's ``reserved`` memory.

        Raises:
            NVMLError_ArgumentVersionMismatch: a version other than ``nvmlMemory_v2``.
        """
        symbol = "nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo"
        with self._lock:
            device = self._resolve(handle, symbol)
            gpu, mig, slot = device.gpu, device.mig, device.mig_slot
            if mig is None or slot is None:
                total, reserved = gpu.memory_total_bytes, gpu.memory_reserved_bytes
                used = gpu.memory_used_bytes()
            else:
                total, reserved = mig.memory_total_bytes, 0
                used = gpu.mig_memory_used_bytes(slot)
            free = max(0, total - used)
            if not version:
                return pynvml.c_nvmlMemory_t(total=total, free=free, used=used)
            if version != pynvml.nvmlMemory_v2:
                _fail(_ARGUMENT_VERSION_MISMATCH)
            return pynvml.c_nvmlMemory_v2_t(
                version=version,
                total=total,
                reserved=reserved,
                free=free,
                used=max(0, used - reserved),
            )

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        """``c_nvmlUtilization_t`` with ``gpu`` and ``memory`` in percent.

        Raises:
            NVMLError_NotSupported: on MIG devices.
        """
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetUtilizationRates")
            self._whole_gpu_only(device)
            gpu = device.gpu
            return pynvml.c_nvmlUtilization_t(
                gpu=gpu.utilization_percent(),
                memory=gpu.memory_utilization_percent(),
            )

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        """Core temperature in degrees Celsius.

        Raises:
            NVMLError_InvalidArgument: a sensor other than ``NVML_TEMPERATURE_GPU``.
        """
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetTemperature")
            self._whole_gpu_only(device)
            if ctypes.c_uint(sensor).value != pynvml.NVML_TEMPERATURE_GPU:
                _fail(_INVALID_ARGUMENT)
            return device.gpu.temperature_c()

    # Processes

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any) -> list[Any]:
        """Compute processes as pynvml's ``nvmlFriendlyObject`` entries.

        Each entry has ``pid``, ``usedGpuMemory`` (bytes), ``gpuInstanceId`` and
        ``computeInstanceId`` (``0xFFFFFFFF`` outside MIG). A MIG handle lists its
        instance's processes; a MIG-enabled GPU lists all of them.

        Raises:
            NVMLError_InsufficientSize: more processes appeared between pynvml's
                sizing and fill calls than its ``2n + 5`` headroom.
        """
        with self._lock:
            return self._running_processes(handle, _PROCESS_LIST_V3)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Any) -> list[Any]:
        """The same as the ``_v3`` call, through the ``_v2`` symbol."""
        with self._lock:
            return self._running_processes(handle, _PROCESS_LIST_V2)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        """The ``_v3`` call, as pynvml's unversioned wrapper makes it.

        Raises:
            NVMLLibraryMismatchError: the ``_v3`` symbol is missing.
        """
        try:
            return self.nvmlDeviceGetComputeRunningProcesses_v3(handle)
        except pynvml.NVMLError_FunctionNotFound as error:
            raise pynvml.NVMLLibraryMismatchError(
                "nvmlDeviceGetComputeRunningProcesses: the NVML library lacks "
                f"{_PROCESS_LIST_V3}; call a versioned function such as "
                f"{_PROCESS_LIST_V2}"
            ) from error

    def nvmlDeviceGetProcessUtilization(self, handle: Any, timeStamp: int) -> list[Any]:
        """Per-process utilization samples newer than ``timeStamp``.

        Args:
            handle: a GPU handle.
            timeStamp: ``lastSeenTimeStamp`` in wall-clock microseconds; 0 for every
                sample in the ring buffer.

        Returns:
            ``c_nvmlProcessUtilizationSample_t`` structures, oldest first.

        Raises:
            NVMLError_NotFound: no sample is newer than ``timeStamp``.
            NVMLError_NotSupported: on MIG devices and MIG-enabled GPUs.
            NVMLError_InsufficientSize: more samples than the scenario's fixed
                sizing count.
        """
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetProcessUtilization")
            self._mig_disabled_only(device)
            since = ctypes.c_ulonglong(timeStamp).value
            samples = device.gpu.utilization_samples(since)
            if not samples:
                _fail(_NOT_FOUND)
            sizing = self._node.util_sizing_count
            if sizing and len(samples) > sizing:
                _fail(_INSUFFICIENT_SIZE)
            return [
                pynvml.c_nvmlProcessUtilizationSample_t(
                    pid=s.pid,
                    timeStamp=s.timestamp_us,
                    smUtil=s.sm_percent,
                    memUtil=s.memory_percent,
                    encUtil=0,
                    decUtil=0,
                )
                for s in samples
            ]

    # MIG

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        """``[current, pending]``: ``[1, 1]`` with MIG instances, else ``[0, 0]``."""
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetMigMode")
            self._whole_gpu_only(device)
            mode = 1 if device.gpu.mig_instances else 0
            return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        """MIG device slots: :data:`MAX_MIG_DEVICES` with MIG enabled, else 0."""
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetMaxMigDeviceCount")
            self._whole_gpu_only(device)
            return _max_mig_devices(device.gpu)

    def nvmlDeviceGetMigDeviceHandleByIndex(
        self, handle: Any, index: int
    ) -> SimDeviceHandle:
        """A handle for the MIG device in one slot of a GPU.

        Raises:
            NVMLError_NotFound: an empty slot.
            NVMLError_InvalidArgument: past the last slot (every slot without MIG).
        """
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
            self._whole_gpu_only(device)
            slot = ctypes.c_uint(index).value
            if slot >= _max_mig_devices(device.gpu):
                _fail(_INVALID_ARGUMENT)
            if slot >= len(device.gpu.mig_instances):
                _fail(_NOT_FOUND)
            return SimDeviceHandle(device.gpu.index, slot)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
        self, handle: Any
    ) -> SimDeviceHandle:
        """The parent GPU's handle of a MIG device.

        Raises:
            NVMLError_InvalidArgument: the handle is not a MIG device's.
        """
        with self._lock:
            device = self._resolve(
                handle, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle"
            )
            if device.mig_slot is None:
                _fail(_INVALID_ARGUMENT)
            return SimDeviceHandle(device.gpu.index)

    def nvmlDeviceIsMigDeviceHandle(self, handle: Any) -> ctypes.c_uint:
        """Whether a handle is a MIG device's, as a ``c_uint`` (like pynvml)."""
        with self._lock:
            device = self._resolve(handle, "nvmlDeviceIsMigDeviceHandle")
            return ctypes.c_uint(0 if device.mig_slot is None else 1)

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        """GPU instance ID of a MIG device; ``NOT_SUPPORTED`` on whole GPUs."""
        with self._lock:
            mig = self._resolve(handle, "nvmlDeviceGetGpuInstanceId").mig
            if mig is None:
                _fail(_NOT_SUPPORTED)
            return mig.gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, handle: Any) -> int:
        """Compute instance ID of a MIG device; ``NOT_SUPPORTED`` on whole GPUs."""
        with self._lock:
            mig = self._resolve(handle, "nvmlDeviceGetComputeInstanceId").mig
            if mig is None:
                _fail(_NOT_SUPPORTED)
            return mig.compute_instance_id

    # Checks shared by every call

    def _enter(self, symbol: str) -> None:
        """Fails as pynvml and the library would before touching any device."""
        if not self._loaded:
            # pynvml has not loaded the library yet: every lookup fails this way.
            _fail(_UNINITIALIZED)
        if symbol in self._node.missing_functions:
            _fail(_FUNCTION_NOT_FOUND)
        if self._refcount == 0:
            _fail(_UNINITIALIZED)

    def _resolve(self, handle: Any, symbol: str) -> _Device:
        self._enter(symbol)
        if not isinstance(handle, SimDeviceHandle):
            _fail(_INVALID_ARGUMENT)
        gpus = self._node.gpus
        if handle._gpu_index >= len(gpus):
            _fail(_INVALID_ARGUMENT)
        gpu = gpus[handle._gpu_index]
        slot = handle._mig_slot
        if slot is not None and slot >= len(gpu.mig_instances):
            _fail(_INVALID_ARGUMENT)
        self._check_device(gpu, symbol)
        return _Device(gpu, slot)

    @staticmethod
    def _check_device(gpu: SimGpu, symbol: str) -> None:
        if gpu.lost:
            _fail(_GPU_IS_LOST)
        code = gpu.errors.get(symbol, _SUCCESS)
        if code != _SUCCESS:
            _fail(code)

    @staticmethod
    def _whole_gpu_only(device: _Device) -> None:
        if device.mig_slot is not None:
            _fail(_NOT_SUPPORTED)

    @staticmethod
    def _mig_disabled_only(device: _Device) -> None:
        if device.mig_slot is not None or device.gpu.mig_instances:
            _fail(_NOT_SUPPORTED)

    def _running_processes(self, handle: Any, symbol: str) -> list[Any]:
        device = self._resolve(handle, symbol)
        gpu, slot = device.gpu, device.mig_slot
        instances = gpu.mig_instances
        processes: list[tuple[SimProcess, int | None]] = [
            (p, gpu.mig_instance_of(p.pid))
            for p in (gpu.processes if slot is None else gpu.processes_on(slot))
        ]
        if not processes:
            # pynvml's sizing call got SUCCESS: no processes, whatever starts next.
            return []
        growth = self._node.process_growth
        if growth > len(processes) + 5:
            _fail(_INSUFFICIENT_SIZE)
        mig = device.mig
        entries = [
            _process_entry(
                process.pid,
                process.memory_bytes,
                None if where is None else instances[where],
            )
            for process, where in processes
        ]
        entries.extend(
            _process_entry(GROWTH_FIRST_PID + k, 0, mig) for k in range(growth)
        )
        return entries


def _max_mig_devices(gpu: SimGpu) -> int:
    count = len(gpu.mig_instances)
    return max(MAX_MIG_DEVICES, count) if count else 0


def _process_entry(pid: int, memory_bytes: int, mig: SimMigInstance | None) -> Any:
    """One process as pynvml's wrapper returns it."""
    info = pynvml.c_nvmlProcessInfo_v3_t()
    info.pid = pid
    info.usedGpuMemory = memory_bytes
    info.gpuInstanceId = _NOT_IN_MIG if mig is None else mig.gpu_instance_id
    info.computeInstanceId = _NOT_IN_MIG if mig is None else mig.compute_instance_id
    entry = pynvml.nvmlStructToFriendlyObject(info)
    if entry.usedGpuMemory == _MEMORY_NOT_AVAILABLE:
        entry.usedGpuMemory = None
    return entry
