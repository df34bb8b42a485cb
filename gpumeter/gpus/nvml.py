"""The GPU source: reads every NVIDIA GPU through pynvml into immutable samples."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gpumeter.clock import Clock, SystemClock
from gpumeter.errors import GpuLost, NvmlError, NvmlNotSupported, NvmlUnavailable
from gpumeter.gpus.records import GpuCapabilities, GpuDevice, GpuSample, ProcessSample

__all__ = ["NvmlSource", "load_pynvml"]

logger = logging.getLogger(__name__)

# NVML return codes by the short names used in the ``error`` label.
_ERROR_NAMES = {
    1: "uninitialized",
    2: "invalid_argument",
    3: "not_supported",
    4: "no_permission",
    6: "not_found",
    7: "insufficient_size",
    8: "insufficient_power",
    9: "driver_not_loaded",
    10: "timeout",
    11: "irq_issue",
    12: "library_not_found",
    13: "function_not_found",
    14: "corrupted_inforom",
    15: "gpu_lost",
    16: "reset_required",
    17: "operating_system",
    18: "lib_rm_version_mismatch",
    19: "in_use",
    20: "memory",
    21: "no_data",
    25: "argument_version_mismatch",
    27: "not_ready",
    28: "gpu_not_found",
    999: "unknown",
}
_LOST_CODES = frozenset({15, 16, 28})
_UNAVAILABLE_CODES = frozenset({1, 9, 12, 18})
_NOT_SUPPORTED_CODES = frozenset({3, 13})
_NOT_FOUND = 6
_INSUFFICIENT_SIZE = 7
_NVML_TEMPERATURE_GPU = 0
_MIG_ENABLED = 1
_NO_MIG_ID = 0xFFFFFFFF


@dataclass(frozen=True)
class _Reading:
    """A scalar reading: the capability that enables it, and its conversion."""

    field: str
    capability: str
    call: str
    scale: float
    args: tuple[int, ...] = ()


_READINGS = (
    _Reading("power_watts", "power", "nvmlDeviceGetPowerUsage", 1e-3),
    _Reading(
        "energy_joules", "energy_counter", "nvmlDeviceGetTotalEnergyConsumption", 1e-3
    ),
    _Reading(
        "power_limit_watts", "power_limit", "nvmlDeviceGetEnforcedPowerLimit", 1e-3
    ),
    _Reading(
        "temperature_celsius",
        "temperature",
        "nvmlDeviceGetTemperature",
        1.0,
        (_NVML_TEMPERATURE_GPU,),
    ),
)
_PROCESS_LIST_V2 = "nvmlDeviceGetComputeRunningProcesses_v2"
_DEPRECATED_FIX = (
    "pip uninstall -y pynvml && pip install --force-reinstall nvidia-ml-py"
)


def load_pynvml() -> Any:
    """Imports NVIDIA's pynvml bindings, refusing a broken installation.

    The bindings come from the ``nvidia-ml-py`` distribution. The deprecated
    ``pynvml`` distribution ships a module of the same name that can shadow them;
    its presence is reported with the command that fixes it.

    Returns:
        The ``pynvml`` module. Importing it does not load the NVML library.

    Raises:
        NvmlUnavailable: nvidia-ml-py is not installed.
    """
    try:
        importlib.metadata.version("nvidia-ml-py")
    except importlib.metadata.PackageNotFoundError as exc:
        raise NvmlUnavailable(
            "load",
            "bindings_missing",
            f"nvidia-ml-py is not installed; fix: {_DEPRECATED_FIX}",
        ) from exc
    try:
        deprecated = importlib.metadata.version("pynvml")
    except importlib.metadata.PackageNotFoundError:
        deprecated = None
    if deprecated is not None:
        logger.warning(
            "the deprecated 'pynvml' package %s is installed and may shadow "
            "nvidia-ml-py's bindings; fix: %s",
            deprecated,
            _DEPRECATED_FIX,
        )
    return importlib.import_module("pynvml")


@dataclass
class _Device:
    """What the source remembers of one physical GPU between ticks."""

    index: int
    identity: GpuDevice
    capabilities: GpuCapabilities
    last_util_timestamp_us: int = 0
    mig_instances: dict[str, GpuDevice] = field(default_factory=dict)
    down_reason: str | None = None


class NvmlSource:
    """Samples every GPU through an NVML module (pynvml, or the simulation).

    The source never raises from :meth:`sample`: a failing call costs only its
    field, a lost GPU is reported with ``up=False``, and an NVML that cannot be
    initialized is retried with exponential backoff while ``up`` stays false.

    Args:
        nvml: a module-like object with pynvml's API; None loads pynvml on first use.
        clock: clock for sample stamps and retry backoff.
        retry_initial_s: first delay before re-initializing NVML after a failure.
        retry_max_s: longest delay between re-initialization attempts.
    """

    def __init__(
        self,
        nvml: Any = None,
        clock: Clock | None = None,
        *,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
    ) -> None:
        self._nvml = nvml
        self._clock = clock or SystemClock()
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._retry_delay_s = retry_initial_s
        self._next_attempt = float("-inf")
        self._initialized = False
        self._last_failure: str | None = None
        self._devices: list[_Device] = []
        self._process_list_call = "nvmlDeviceGetComputeRunningProcesses"
        self.driver_version: str | None = None
        self.errors: Counter[tuple[str, str, str]] = Counter()
        """Failed NVML calls, by (gpu label, call, error name)."""

    @property
    def up(self) -> bool:
        """Whether NVML is initialized and answering."""
        return self._initialized

    @property
    def devices(self) -> tuple[GpuDevice, ...]:
        """The physical GPUs found at initialization, in NVML index order."""
        return tuple(d.identity for d in self._devices)

    def capabilities(self, uuid: str) -> GpuCapabilities | None:
        """The probed capabilities of a physical GPU, or None if unknown."""
        for device in self._devices:
            if device.identity.uuid == uuid:
                return device.capabilities
        return None

    def sample(self) -> tuple[GpuSample, ...]:
        """Reads every GPU once; initializes NVML first if it is not up."""
        if not self._initialized and not self._try_start():
            return ()
        samples: list[GpuSample] = []
        for device in self._devices:
            samples.extend(self._sample_device(device))
        if self._devices and all(
            d.down_reason == "uninitialized" for d in self._devices
        ):
            self._fail("NVML stopped answering on every GPU")
        return tuple(samples)

    def close(self) -> None:
        """Shuts NVML down if this source initialized it."""
        if self._initialized:
            self._initialized = False
            try:
                self._lib.nvmlShutdown()
            except Exception as exc:  # shutting down must not fail the caller
                logger.debug("nvmlShutdown failed: %s", exc)

    # Initialization

    @property
    def _lib(self) -> Any:
        if self._nvml is None:
            self._nvml = load_pynvml()
        return self._nvml

    def _try_start(self) -> bool:
        now = self._clock.monotonic()
        if now < self._next_attempt:
            return False
        try:
            self._start()
        except NvmlError as exc:
            self._fail(str(exc))
            return False
        self._retry_delay_s = self._retry_initial_s
        if self._last_failure is not None:
            logger.info("NVML is back after: %s", self._last_failure)
            self._last_failure = None
        return True

    def _fail(self, reason: str) -> None:
        self.close()
        self._devices = []
        if reason != self._last_failure:
            logger.error(
                "NVML unavailable: %s; retrying every %.0f s at most",
                reason,
                self._retry_max_s,
            )
        self._last_failure = reason
        self._next_attempt = self._clock.monotonic() + self._retry_delay_s
        self._retry_delay_s = min(self._retry_delay_s * 2, self._retry_max_s)

    def _start(self) -> None:
        self._call("", "nvmlInit")
        self._initialized = True
        try:
            self.driver_version = _text(self._call("", "nvmlSystemGetDriverVersion"))
            count = self._call("", "nvmlDeviceGetCount")
            self._devices = [self._probe(index) for index in range(count)]
        except NvmlError:
            self.close()
            raise
        logger.info(
            "NVML initialized: driver %s, %d GPU(s): %s",
            self.driver_version,
            len(self._devices),
            ", ".join(f"{d.index}={d.identity.name}" for d in self._devices) or "none",
        )

    def _probe(self, index: int) -> _Device:
        label = str(index)
        handle = self._call(label, "nvmlDeviceGetHandleByIndex", index)
        uuid = _text(self._call(label, "nvmlDeviceGetUUID", handle))
        name = _text(self._call(label, "nvmlDeviceGetName", handle))

        def supported(call: str, *args: Any) -> bool:
            try:
                self._call(label, call, handle, *args, count=False)
            except NvmlNotSupported:
                return False
            except NvmlError as exc:
                # "Nothing new yet" is an answer too: the call exists.
                return _code_of(exc) == _NOT_FOUND
            return True

        try:
            mode = self._call(label, "nvmlDeviceGetMigMode", handle, count=False)
            mig = int(mode[0]) == _MIG_ENABLED
        except NvmlError:
            mig = False
        found = {
            reading.capability: supported(reading.call, *reading.args)
            for reading in _READINGS
        }
        caps = GpuCapabilities(
            **found,
            utilization=supported("nvmlDeviceGetUtilizationRates"),
            process_utilization=not mig
            and supported("nvmlDeviceGetProcessUtilization", 0),
            mig_enabled=mig,
        )
        missing = [
            field for field, ok in _fields(caps) if not ok and field != "mig_enabled"
        ]
        if missing:
            logger.info(
                "GPU %s (%s) does not report: %s", label, name, ", ".join(missing)
            )
        identity = GpuDevice(label=label, uuid=uuid, name=name, index=index)
        return _Device(index=index, identity=identity, capabilities=caps)

    # Sampling

    def _sample_device(self, device: _Device) -> list[GpuSample]:
        label = device.identity.label
        caps = device.capabilities
        mono, wall = self._clock.monotonic(), self._clock.time()
        values: dict[str, Any] = {}
        instances: list[GpuSample] = []
        processes: tuple[ProcessSample, ...] = ()
        try:
            handle = self._call(label, "nvmlDeviceGetHandleByIndex", device.index)
            for reading in _READINGS:
                if getattr(caps, reading.capability):
                    raw = self._optional(label, reading.call, handle, *reading.args)
                    values[reading.field] = None if raw is None else raw * reading.scale
            if caps.utilization:
                rates = self._optional(label, "nvmlDeviceGetUtilizationRates", handle)
                values["utilization_ratio"] = None if rates is None else rates.gpu / 100
            values.update(self._memory(label, handle))
            if caps.mig_enabled:
                instances = self._sample_mig(device, handle, mono, wall)
            else:
                processes = self._processes(
                    label, handle, device if caps.process_utilization else None
                )
        except GpuLost as exc:
            return [self._down(device, exc, mono, wall)]
        except NvmlUnavailable as exc:
            return [self._down(device, exc, mono, wall, reason="uninitialized")]
        if device.down_reason is not None:
            logger.warning("GPU %s (%s) answers again", label, device.identity.uuid)
            device.down_reason = None
        sample = GpuSample(
            device=device.identity,
            monotonic_s=mono,
            wall_time_s=wall,
            up=True,
            processes=processes,
            **values,
        )
        return [sample, *instances]

    def _memory(self, label: str, handle: Any) -> dict[str, int]:
        memory = self._optional(label, "nvmlDeviceGetMemoryInfo", handle)
        if memory is None:
            return {}
        return {
            "memory_used_bytes": int(memory.used),
            "memory_total_bytes": int(memory.total),
        }

    def _down(
        self,
        device: _Device,
        exc: NvmlError,
        mono: float,
        wall: float,
        reason: str | None = None,
    ) -> GpuSample:
        reason = reason or exc.code
        if device.down_reason != reason:
            identity = device.identity
            logger.warning(
                "GPU %s (%s) is down: %s", identity.label, identity.uuid, exc
            )
        device.down_reason = reason
        return GpuSample(
            device=device.identity, monotonic_s=mono, wall_time_s=wall, up=False
        )

    def _sample_mig(
        self, device: _Device, handle: Any, mono: float, wall: float
    ) -> list[GpuSample]:
        label = device.identity.label
        count = self._optional(label, "nvmlDeviceGetMaxMigDeviceCount", handle)
        samples: list[GpuSample] = []
        for slot in range(count or 0):
            try:
                mig = self._call(
                    label,
                    "nvmlDeviceGetMigDeviceHandleByIndex",
                    handle,
                    slot,
                    count=False,
                )
            except NvmlError as exc:
                if _code_of(exc) != _NOT_FOUND:  # an empty slot is no failure
                    self._count(label, exc)
                continue
            identity = self._mig_identity(device, mig)
            if identity is None:
                continue
            samples.append(
                GpuSample(
                    device=identity,
                    monotonic_s=mono,
                    wall_time_s=wall,
                    up=True,
                    processes=self._processes(identity.label, mig, None),
                    **self._memory(identity.label, mig),
                )
            )
        return samples

    def _mig_identity(self, device: _Device, mig: Any) -> GpuDevice | None:
        label = device.identity.label
        uuid = _text(self._optional(label, "nvmlDeviceGetUUID", mig) or "")
        if not uuid:
            return None
        known = device.mig_instances.get(uuid)
        if known is not None:
            return known
        gi = self._optional(label, "nvmlDeviceGetGpuInstanceId", mig)
        ci = self._optional(label, "nvmlDeviceGetComputeInstanceId", mig)
        name = _text(self._optional(label, "nvmlDeviceGetName", mig) or "")
        identity = GpuDevice(
            label=f"{label}/gi{gi}/ci{ci}",
            uuid=uuid,
            name=name,
            index=device.index,
            parent_uuid=device.identity.uuid,
            gpu_instance_id=None if gi is None else int(gi),
            compute_instance_id=None if ci is None else int(ci),
        )
        device.mig_instances[uuid] = identity
        logger.info("GPU %s has MIG instance %s (%s)", label, identity.label, name)
        return identity

    def _processes(
        self, label: str, handle: Any, utilization_of: _Device | None
    ) -> tuple[ProcessSample, ...]:
        """The compute processes on a device.

        Per-process utilization is read from ``utilization_of``'s samples when it
        is given (None for MIG instances, which have no such samples).
        """
        infos = self._running_processes(label, handle)
        if infos is None:
            return ()
        utilization: dict[int, float] | None = None
        if utilization_of is not None:
            utilization = self._process_utilization(utilization_of, handle)
        memory_by_pid: dict[int, int | None] = {}
        for info in infos:
            pid, memory = int(info.pid), info.usedGpuMemory
            previous = memory_by_pid.get(pid)
            # A process listed twice (a driver quirk) keeps the larger figure.
            if pid in memory_by_pid and (
                memory is None or (previous is not None and previous >= memory)
            ):
                continue
            memory_by_pid[pid] = None if memory is None else int(memory)
        return tuple(
            ProcessSample(
                pid=pid,
                memory_bytes=memory,
                sm_utilization_ratio=(
                    None if utilization is None else utilization.get(pid, 0.0)
                ),
            )
            for pid, memory in sorted(memory_by_pid.items())
        )

    def _running_processes(self, label: str, handle: Any) -> list[Any] | None:
        for attempt in range(3):
            call = self._process_list_call
            try:
                return list(self._call(label, call, handle, count=False))
            except NvmlNotSupported as exc:
                if exc.code == "library_mismatch" and call != _PROCESS_LIST_V2:
                    # An older driver without the _v3 symbol: _v2 has the same layout.
                    logger.warning(
                        "NVML has no _v3 process list; using %s", _PROCESS_LIST_V2
                    )
                    self._process_list_call = _PROCESS_LIST_V2
                    continue
                self._count(label, exc)
                return None
            except NvmlError as exc:
                # Processes started between the sizing and the fill call: try again.
                if _code_of(exc) == _INSUFFICIENT_SIZE and attempt < 2:
                    continue
                if isinstance(exc, GpuLost | NvmlUnavailable):
                    raise
                self._count(label, exc)
                return None
        return None

    def _process_utilization(
        self, device: _Device, handle: Any
    ) -> dict[int, float] | None:
        label = device.identity.label
        since = device.last_util_timestamp_us
        try:
            raw = self._call(
                label, "nvmlDeviceGetProcessUtilization", handle, since, count=False
            )
        except NvmlError as exc:
            if _code_of(exc) == _NOT_FOUND:
                return {}  # no kernel ran since the previous read
            if isinstance(exc, GpuLost | NvmlUnavailable):
                raise
            self._count(label, exc)
            return None
        by_pid: dict[int, dict[int, int]] = {}
        newest = since
        for entry in raw:
            stamp = int(entry.timeStamp)
            if stamp <= since:
                continue
            newest = max(newest, stamp)
            # Keyed by stamp so that a duplicated sample counts once.
            by_pid.setdefault(int(entry.pid), {})[stamp] = min(
                max(int(entry.smUtil), 0), 100
            )
        device.last_util_timestamp_us = newest
        return {pid: sum(v.values()) / len(v) / 100 for pid, v in by_pid.items()}

    # Calls and errors

    def _optional(self, label: str, call: str, *args: Any) -> Any:
        """Calls NVML for one field: None on failure, except when the GPU is lost."""
        try:
            return self._call(label, call, *args)
        except (GpuLost, NvmlUnavailable):
            raise
        except NvmlError:
            return None

    def _call(self, label: str, call: str, *args: Any, count: bool = True) -> Any:
        """Calls the pynvml function ``call``; failures come out translated.

        Args:
            label: the GPU the call is about, for the error count ("" for none).
            call: the pynvml function's name.
            args: its arguments.
            count: whether a failure counts in ``errors``.
        """
        lib = self._lib
        try:
            return getattr(lib, call)(*args)
        except lib.NVMLError as exc:
            error = _translate(call, exc)
        except lib.NVMLLibraryMismatchError as exc:
            error = NvmlNotSupported(call, "library_mismatch", str(exc))
            error.__cause__ = exc
        if count:
            self._count(label, error)
        raise error

    def _count(self, label: str, error: NvmlError) -> None:
        self.errors[(label, error.call, error.code)] += 1


def _translate(call: str, exc: Any) -> NvmlError:
    code = int(getattr(exc, "value", 999))
    name = _ERROR_NAMES.get(code, f"code_{code}")
    cls: type[NvmlError] = NvmlError
    if code in _LOST_CODES:
        cls = GpuLost
    elif code in _UNAVAILABLE_CODES:
        cls = NvmlUnavailable
    elif code in _NOT_SUPPORTED_CODES:
        cls = NvmlNotSupported
    error = cls(call, name, str(exc))
    error.__cause__ = exc
    return error


def _code_of(error: NvmlError) -> int | None:
    cause = error.__cause__
    value = getattr(cause, "value", None)
    return value if isinstance(value, int) else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(caps: GpuCapabilities) -> list[tuple[str, bool]]:
    return [(name, getattr(caps, name)) for name in caps.__slots__]
