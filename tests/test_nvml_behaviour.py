"""NVML behaviour that the fake C driver and the simulated NVML must share.

Every test runs on both backends: the fake ``libnvidia-ml.so.1`` under the real,
unmodified pynvml, where time is the host's and passes by sleeping; and
``SimulatedNvml``, where time stands still until the test advances it. What only one
backend does lives in ``test_fake_nvml.py`` or ``test_sim.py``;
``test_nvml_contract.py`` compares whole records of scripted calls on both.
"""

from __future__ import annotations

import ctypes
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import pynvml
import pytest

from gpumeter.sim import (
    Scenario,
    ScenarioGpu,
    ScenarioMigInstance,
    ScenarioProcess,
    SimulatedNvml,
)
from gpumeter.sim.nvml import GROWTH_FIRST_PID
from tests.fake_nvml.conftest_plugin import FakeNvml

T = TypeVar("T")

UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"
MIG_UUID0 = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
MIG_UUID1 = "MIG-ffffffff-0000-1111-2222-333333333333"
NO_ID = 0xFFFFFFFF
MAX_SLEEP_S = 0.3


class Backend(ABC):
    """One NVML under test, the scenario it serves, and the time it sees.

    Attributes:
        nvml: what stands where the ``pynvml`` module would; read it after ``load``.
    """

    nvml: Any

    @abstractmethod
    def load(self, scenario: Scenario) -> None:
        """Serves a fresh machine, not initialized, from the next ``nvmlInit()``."""

    @abstractmethod
    def update(self, scenario: Scenario) -> None:
        """Changes the machine in place, as a hot reload, while it stays initialized."""

    @abstractmethod
    def advance(self, seconds: float) -> None:
        """Lets at least this much time pass, on both the monotonic and wall clocks."""

    @abstractmethod
    def monotonic(self) -> float:
        """Seconds on the clock that energy integrates over."""

    @abstractmethod
    def now_us(self) -> int:
        """Wall-clock microseconds, the unit of utilization sample stamps."""


class FakeDriver(Backend):
    """The fake C driver under the real pynvml, on the host's clocks."""

    def __init__(self, fake: FakeNvml) -> None:
        self.nvml = pynvml
        self._fake = fake

    def load(self, scenario: Scenario) -> None:
        self._fake.load(scenario)

    def update(self, scenario: Scenario) -> None:
        self._fake.update(scenario)

    def advance(self, seconds: float) -> None:
        assert seconds <= MAX_SLEEP_S, "keep real sleeps short"
        time.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()

    def now_us(self) -> int:
        return time.time_ns() // 1000


class Simulation(Backend):
    """The simulated NVML; the backend is also its clock, which only tests move."""

    def __init__(self) -> None:
        self._monotonic_s = 1000.0
        self._wall_s = 1_700_000_000.0

    def load(self, scenario: Scenario) -> None:
        self.nvml = SimulatedNvml.from_scenario(scenario, self)

    def update(self, scenario: Scenario) -> None:
        self.nvml.node.load(scenario)

    def advance(self, seconds: float) -> None:
        self._monotonic_s += seconds
        self._wall_s += seconds

    def monotonic(self) -> float:
        return self._monotonic_s

    def time(self) -> float:
        return self._wall_s

    def now_us(self) -> int:
        return round(self._wall_s * 1_000_000)


@pytest.fixture(params=["fake", "sim"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "fake":
        fake: FakeNvml = request.getfixturevalue("fake_nvml")
        return FakeDriver(fake)
    return Simulation()


def gpu(uuid: str = UUID0, **fields: Any) -> ScenarioGpu:
    return ScenarioGpu(uuid=uuid, **fields)


def start(backend: Backend, *gpus: ScenarioGpu, **node: Any) -> Any:
    """Loads a machine with these GPUs, initializes NVML and returns it."""
    backend.load(Scenario(gpus=gpus, **node))
    backend.nvml.nvmlInit()
    return backend.nvml


def until(backend: Backend, probe: Callable[[], T | None], step_s: float = 0.005) -> T:
    """Lets time pass in steps until probe returns something truthy (3 s at most)."""
    for _ in range(round(3.0 / step_s)):
        backend.advance(step_s)
        value = probe()
        if value:
            return value
    raise AssertionError("condition not met within 3 s")


def busy_and_idle() -> tuple[ScenarioProcess, ...]:
    return (
        ScenarioProcess(pid=11, memory_bytes=1, sm_percent=60, memory_percent=20),
        ScenarioProcess(pid=12, memory_bytes=1),  # idle: produces no samples
        ScenarioProcess(pid=13, memory_bytes=1, sm_percent=0, memory_percent=5),
    )


def mig_gpu() -> ScenarioGpu:
    return gpu(
        UUID0,
        mig_instances=(
            ScenarioMigInstance(
                gpu_instance_id=1,
                compute_instance_id=0,
                uuid=MIG_UUID0,
                name="NVIDIA H100 80GB HBM3 MIG 3g.40gb",
                memory_total_bytes=40 << 30,
                memory_used_bytes=10 << 30,
                processes=(ScenarioProcess(pid=501, memory_bytes=3 << 30),),
            ),
            ScenarioMigInstance(
                gpu_instance_id=2,
                compute_instance_id=1,
                uuid=MIG_UUID1,
                name="NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                memory_total_bytes=10 << 30,
                memory_used_bytes=0,
                processes=(
                    ScenarioProcess(pid=601, memory_bytes=1 << 20, sm_percent=20),
                    ScenarioProcess(pid=602, memory_bytes=2 << 20),
                ),
            ),
        ),
    )


# --- Init and shutdown --------------------------------------------------------


def test_init_is_reference_counted(backend: Backend) -> None:
    backend.load(Scenario(gpus=(gpu(),)))
    nvml = backend.nvml
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    nvml.nvmlInit()
    nvml.nvmlInitWithFlags(pynvml.NVML_INIT_FLAG_NO_ATTACH)
    nvml.nvmlShutdown()
    assert nvml.nvmlDeviceGetCount() == 1
    nvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlShutdown()


def test_init_error_fails_the_first_init_until_the_scenario_changes(
    backend: Backend,
) -> None:
    backend.load(Scenario(gpus=(gpu(),), init_error=9))
    nvml = backend.nvml
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        nvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    backend.update(Scenario(gpus=(gpu(),)))
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetCount() == 1
    # Nested inits just count, whatever the driver would say to a first one.
    backend.update(Scenario(gpus=(gpu(),), init_error=9))
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetCount() == 1


def test_missing_init_and_shutdown_are_function_not_found(backend: Backend) -> None:
    missing_init = frozenset({"nvmlInitWithFlags"})
    backend.load(Scenario(gpus=(gpu(),), missing_functions=missing_init))
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        backend.nvml.nvmlInit()
    nvml = start(backend, gpu())
    backend.update(
        Scenario(gpus=(gpu(),), missing_functions=frozenset({"nvmlShutdown"}))
    )
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nvml.nvmlShutdown()


# --- Identity and board readings ----------------------------------------------


def test_system_and_identity_queries(backend: Backend) -> None:
    nvml = start(
        backend,
        gpu(UUID0, name="NVIDIA H100 80GB HBM3"),
        gpu(UUID1, name="NVIDIA A100-SXM4-40GB"),
        driver_version="570.86.15",
    )
    assert nvml.nvmlSystemGetDriverVersion() == "570.86.15"
    assert nvml.nvmlDeviceGetCount() == 2
    h0 = nvml.nvmlDeviceGetHandleByIndex(0)
    h1 = nvml.nvmlDeviceGetHandleByIndex(1)
    assert [nvml.nvmlDeviceGetIndex(h) for h in (h0, h1)] == [0, 1]
    assert nvml.nvmlDeviceGetName(h0) == "NVIDIA H100 80GB HBM3"
    assert nvml.nvmlDeviceGetName(h1) == "NVIDIA A100-SXM4-40GB"
    assert [nvml.nvmlDeviceGetUUID(h) for h in (h0, h1)] == [UUID0, UUID1]


def test_handles_are_distinct_and_unhashable(backend: Backend) -> None:
    nvml = start(backend, gpu())
    a = nvml.nvmlDeviceGetHandleByIndex(0)
    b = nvml.nvmlDeviceGetHandleByIndex(0)
    assert a != b
    with pytest.raises(TypeError):
        hash(a)


def test_board_readings_are_the_scenario_values(backend: Backend) -> None:
    nvml = start(
        backend,
        gpu(
            power_mw=312_345,
            energy_mj=42,
            integrate_energy=False,
            gpu_util_percent=87,
            memory_util_percent=42,
            memory_total_bytes=80 << 30,
            memory_used_bytes=30 << 30,
            temperature_c=61,
            power_limit_mw=650_000,
        ),
    )
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    backend.advance(0.05)
    assert nvml.nvmlDeviceGetPowerUsage(h) == 312_345
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 42
    assert nvml.nvmlDeviceGetEnforcedPowerLimit(h) == 650_000
    assert nvml.nvmlDeviceGetPowerManagementLimit(h) == 650_000
    assert nvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 61
    util = nvml.nvmlDeviceGetUtilizationRates(h)
    assert (util.gpu, util.memory) == (87, 42)
    mem = nvml.nvmlDeviceGetMemoryInfo(h)
    assert isinstance(mem, pynvml.c_nvmlMemory_t)
    assert (mem.total, mem.used, mem.free) == (80 << 30, 30 << 30, 50 << 30)
    mem2 = nvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert (mem2.version, mem2.total, mem2.reserved, mem2.used, mem2.free) == (
        pynvml.nvmlMemory_v2,
        80 << 30,
        0,
        30 << 30,
        50 << 30,
    )


def test_bad_indexes_handles_sensors_and_versions_are_refused(
    backend: Backend,
) -> None:
    nvml = start(backend, gpu(UUID0), gpu(UUID1))
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    stale = nvml.nvmlDeviceGetHandleByIndex(1)
    for bad in (2, -1):
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            nvml.nvmlDeviceGetHandleByIndex(bad)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetPowerUsage(pynvml.c_nvmlDevice_t())
    # Only the GPU core sensor exists.
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetTemperature(h, 1)
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        nvml.nvmlDeviceGetMemoryInfo(h, version=0x01000028)
    backend.update(Scenario(gpus=(gpu(UUID0),)))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetPowerUsage(stale)


# --- Energy and reloads -------------------------------------------------------


def test_energy_integrates_power_over_monotonic_time(backend: Backend) -> None:
    nvml = start(backend, gpu(power_mw=300_000, energy_mj=5_000))
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    t0_before = backend.monotonic()
    e0 = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
    t0_after = backend.monotonic()
    backend.advance(0.03)
    t1_before = backend.monotonic()
    e1 = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
    t1_after = backend.monotonic()
    assert e0 >= 5_000
    # mW * s = mJ; one mJ of slack for the counter's rounding.
    assert 300_000 * (t1_before - t0_after) - 1 <= e1 - e0
    assert e1 - e0 <= 300_000 * (t1_after - t0_before) + 1


def test_energy_stays_put_without_integration(backend: Backend) -> None:
    nvml = start(
        backend, gpu(power_mw=300_000, energy_mj=123_456, integrate_energy=False)
    )
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 123_456
    backend.advance(0.01)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 123_456


def test_energy_survives_shutdown_and_init(backend: Backend) -> None:
    nvml = start(backend, gpu(power_mw=1_000_000, energy_mj=0))
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    backend.advance(0.01)
    before = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
    assert before > 5
    nvml.nvmlShutdown()
    nvml.nvmlInit()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) >= before


def test_reloads_change_values_while_initialized(backend: Backend) -> None:
    base = gpu(power_mw=100_000, temperature_c=40)
    nvml = start(backend, base)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetPowerUsage(h) == 100_000
    backend.update(Scenario(gpus=(replace(base, power_mw=250_000),)))
    assert nvml.nvmlDeviceGetPowerUsage(h) == 250_000
    assert nvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 40


def test_reload_with_the_same_energy_carries_the_counter_on(backend: Backend) -> None:
    base = gpu(power_mw=2_000_000, energy_mj=1_000)
    nvml = start(backend, base)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    backend.advance(0.01)
    before = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
    assert before > 1_050
    # Freeze the counter so the comparison is exact.
    backend.update(Scenario(gpus=(replace(base, integrate_energy=False),)))
    frozen = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
    assert frozen >= before
    backend.advance(0.005)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == frozen


def test_reload_with_a_new_energy_resets_the_counter(backend: Backend) -> None:
    nvml = start(backend, gpu(power_mw=2_000_000, energy_mj=1_000_000))
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) >= 1_000_000
    backend.update(Scenario(gpus=(gpu(energy_mj=7, integrate_energy=False),)))
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 7


def test_reloads_match_gpus_by_uuid(backend: Backend) -> None:
    nvml = start(backend, gpu(UUID0, power_mw=1_000_000))
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    backend.advance(0.01)
    before = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
    assert before > 5_000
    backend.update(
        Scenario(
            gpus=(
                gpu(UUID1, energy_mj=3, integrate_energy=False),
                gpu(UUID0, integrate_energy=False),
            )
        )
    )
    # A handle names an index: the new GPU there starts from its own energy_mj.
    assert nvml.nvmlDeviceGetUUID(h) == UUID1
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 3
    moved = nvml.nvmlDeviceGetHandleByIndex(1)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(moved) >= before
    assert nvml.nvmlDeviceGetCount() == 2


# --- Faults -------------------------------------------------------------------


def test_a_lost_gpu_fails_every_call_until_it_returns(backend: Backend) -> None:
    nvml = start(backend, gpu(UUID0), gpu(UUID1))
    h0 = nvml.nvmlDeviceGetHandleByIndex(0)
    backend.update(Scenario(gpus=(gpu(UUID0, lost=True), gpu(UUID1))))
    calls: list[Callable[[], object]] = [
        lambda: nvml.nvmlDeviceGetPowerUsage(h0),
        lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(h0),
        lambda: nvml.nvmlDeviceGetName(h0),
        lambda: nvml.nvmlDeviceGetUUID(h0),
        lambda: nvml.nvmlDeviceGetMemoryInfo(h0),
        lambda: nvml.nvmlDeviceGetComputeRunningProcesses(h0),
        lambda: nvml.nvmlDeviceGetProcessUtilization(h0, 0),
        lambda: nvml.nvmlDeviceGetMigMode(h0),
        lambda: nvml.nvmlDeviceGetHandleByIndex(0),
    ]
    for call in calls:
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call()
    assert nvml.nvmlDeviceGetCount() == 2
    assert nvml.nvmlDeviceGetPowerUsage(nvml.nvmlDeviceGetHandleByIndex(1)) == 70_000
    backend.update(Scenario(gpus=(gpu(UUID0), gpu(UUID1))))
    assert nvml.nvmlDeviceGetName(h0) == "NVIDIA H100 80GB HBM3"


def test_scripted_errors_fail_just_that_call_on_that_gpu(backend: Backend) -> None:
    errors = {
        "nvmlDeviceGetPowerUsage": 3,
        "nvmlDeviceGetComputeRunningProcesses_v3": 4,
    }
    nvml = start(backend, gpu(UUID0, errors=errors), gpu(UUID1))
    h0 = nvml.nvmlDeviceGetHandleByIndex(0)
    h1 = nvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_NotSupported) as caught:
        nvml.nvmlDeviceGetPowerUsage(h0)
    assert caught.value.value == pynvml.NVML_ERROR_NOT_SUPPORTED
    assert isinstance(caught.value, nvml.NVMLError)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        nvml.nvmlDeviceGetComputeRunningProcesses(h0)
    assert nvml.nvmlDeviceGetComputeRunningProcesses_v2(h0) == []
    assert nvml.nvmlDeviceGetTemperature(h0, pynvml.NVML_TEMPERATURE_GPU) == 35
    assert nvml.nvmlDeviceGetPowerUsage(h1) == 70_000
    # The errors follow the scenario.
    backend.update(
        Scenario(gpus=(gpu(UUID0), gpu(UUID1, errors={"nvmlDeviceGetName": 999})))
    )
    assert nvml.nvmlDeviceGetPowerUsage(h0) == 70_000
    with pytest.raises(pynvml.NVMLError_Unknown):
        nvml.nvmlDeviceGetName(h1)


def test_missing_functions_behave_as_absent_symbols(backend: Backend) -> None:
    nvml = start(
        backend,
        gpu(processes=(ScenarioProcess(pid=10, memory_bytes=1),)),
        missing_functions=frozenset(
            {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetComputeRunningProcesses_v3"}
        ),
    )
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nvml.nvmlDeviceGetPowerUsage(h)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nvml.nvmlDeviceGetComputeRunningProcesses_v3(h)
    # The unversioned wrapper turns it into an error that is not an NVMLError.
    with pytest.raises(pynvml.NVMLLibraryMismatchError) as caught:
        nvml.nvmlDeviceGetComputeRunningProcesses(h)
    assert not isinstance(caught.value, pynvml.NVMLError)
    assert [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses_v2(h)] == [10]


# --- Running processes --------------------------------------------------------


def test_no_processes_is_an_empty_list(backend: Backend) -> None:
    nvml = start(backend, gpu())
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetComputeRunningProcesses(h) == []
    assert nvml.nvmlDeviceGetComputeRunningProcesses_v2(h) == []


def test_process_list_through_both_symbols(backend: Backend) -> None:
    procs = (
        ScenarioProcess(pid=101, memory_bytes=1 << 30, sm_percent=50),
        ScenarioProcess(pid=202, memory_bytes=2**64 - 1),  # "not available"
        ScenarioProcess(pid=303, memory_bytes=0),
    )
    nvml = start(backend, gpu(processes=procs))
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    for listing in (
        nvml.nvmlDeviceGetComputeRunningProcesses,
        nvml.nvmlDeviceGetComputeRunningProcesses_v2,
    ):
        entries = listing(h)
        assert all(isinstance(e, pynvml.nvmlFriendlyObject) for e in entries)
        assert [
            (e.pid, e.usedGpuMemory, e.gpuInstanceId, e.computeInstanceId)
            for e in entries
        ] == [
            (101, 1 << 30, NO_ID, NO_ID),
            (202, None, NO_ID, NO_ID),
            (303, 0, NO_ID, NO_ID),
        ]


@pytest.mark.parametrize(
    ("pids", "growth"), [((7, 8), 1), ((7, 8), 4), ((10,), 1), ((10,), 6)]
)
def test_processes_that_start_between_the_calls_fit_the_headroom(
    backend: Backend, pids: tuple[int, ...], growth: int
) -> None:
    procs = tuple(ScenarioProcess(pid=pid, memory_bytes=1) for pid in pids)
    nvml = start(backend, gpu(processes=procs), process_growth=growth)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    got = [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(h)]
    assert got == [*pids, *range(GROWTH_FIRST_PID, GROWTH_FIRST_PID + growth)]


def test_growth_past_the_headroom_is_insufficient_size(backend: Backend) -> None:
    # One process: pynvml makes room for 2 * 1 + 5 = 7 entries.
    procs = (ScenarioProcess(pid=10, memory_bytes=1),)
    nvml = start(backend, gpu(UUID0, processes=procs), gpu(UUID1), process_growth=6)
    h0 = nvml.nvmlDeviceGetHandleByIndex(0)
    h1 = nvml.nvmlDeviceGetHandleByIndex(1)
    assert len(nvml.nvmlDeviceGetComputeRunningProcesses(h0)) == 7
    backend.update(
        Scenario(gpus=(gpu(UUID0, processes=procs), gpu(UUID1)), process_growth=7)
    )
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        nvml.nvmlDeviceGetComputeRunningProcesses(h0)
    # With none at sizing time pynvml does not ask again.
    assert nvml.nvmlDeviceGetComputeRunningProcesses(h1) == []


# --- Per-process utilization --------------------------------------------------


def test_first_query_finds_the_load_time_samples(backend: Backend) -> None:
    before = backend.now_us()
    nvml = start(backend, gpu(processes=busy_and_idle()), util_sample_period_ms=60_000)
    after = backend.now_us()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    samples = nvml.nvmlDeviceGetProcessUtilization(h, 0)
    assert all(isinstance(s, pynvml.c_nvmlProcessUtilizationSample_t) for s in samples)
    assert [(s.pid, s.smUtil, s.memUtil, s.encUtil, s.decUtil) for s in samples] == [
        (11, 60, 20, 0, 0),
        (13, 0, 5, 0, 0),
    ]
    assert len({s.timeStamp for s in samples}) == 1
    assert all(before <= s.timeStamp <= after for s in samples)


def test_nothing_newer_than_last_seen_is_not_found(backend: Backend) -> None:
    nvml = start(backend, gpu(processes=busy_and_idle()), util_sample_period_ms=60_000)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    last_seen = max(s.timeStamp for s in nvml.nvmlDeviceGetProcessUtilization(h, 0))
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetProcessUtilization(h, last_seen)
    assert len(nvml.nvmlDeviceGetProcessUtilization(h, last_seen - 1)) == 2


def test_idle_processes_produce_no_samples(backend: Backend) -> None:
    idle = (ScenarioProcess(pid=5, memory_bytes=1),)
    nvml = start(backend, gpu(processes=idle), util_sample_period_ms=1)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    backend.advance(0.01)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetProcessUtilization(h, 0)


def test_samples_arrive_each_period_and_the_ring_drops_the_oldest(
    backend: Backend,
) -> None:
    period_us = 2_000
    nvml = start(
        backend,
        gpu(processes=busy_and_idle()),
        util_sample_period_ms=period_us // 1000,
        util_buffer_size=5,
    )
    after_load = backend.now_us()
    h = nvml.nvmlDeviceGetHandleByIndex(0)

    def full_ring_without_load_samples() -> list[Any]:
        samples = list(nvml.nvmlDeviceGetProcessUtilization(h, 0))
        fresh = all(s.timeStamp > after_load for s in samples)
        return samples if len(samples) == 5 and fresh else []

    samples = until(backend, full_ring_without_load_samples)
    stamps = [s.timeStamp for s in samples]
    assert stamps == sorted(stamps)
    assert all((t - stamps[0]) % period_us == 0 for t in stamps)
    assert {s.pid for s in samples} == {11, 13}
    # Filtering is strictly newer than lastSeenTimeStamp.
    newer = nvml.nvmlDeviceGetProcessUtilization(h, stamps[2])
    assert newer
    assert all(s.timeStamp > stamps[2] for s in newer)


def test_a_zero_period_samples_only_at_load_time(backend: Backend) -> None:
    nvml = start(backend, gpu(processes=busy_and_idle()), util_sample_period_ms=0)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    backend.advance(0.02)
    assert len(nvml.nvmlDeviceGetProcessUtilization(h, 0)) == 2


def test_shrinking_the_ring_on_reload_keeps_the_newest(backend: Backend) -> None:
    nvml = start(backend, gpu(processes=busy_and_idle()), util_sample_period_ms=60_000)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    loaded = nvml.nvmlDeviceGetProcessUtilization(h, 0)
    assert len(loaded) == 2
    backend.update(
        Scenario(
            gpus=(gpu(processes=busy_and_idle()),),
            util_sample_period_ms=60_000,
            util_buffer_size=1,
        )
    )
    (newest,) = nvml.nvmlDeviceGetProcessUtilization(h, 0)
    assert newest.pid == 13
    assert newest.timeStamp >= loaded[-1].timeStamp


def test_a_sizing_count_below_the_samples_fails_the_fill_call(
    backend: Backend,
) -> None:
    nvml = start(backend, gpu(processes=busy_and_idle()), util_sizing_count=1)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        nvml.nvmlDeviceGetProcessUtilization(h, 0)


def test_process_utilization_follows_reloads(backend: Backend) -> None:
    nvml = start(backend, gpu(processes=busy_and_idle()), util_sample_period_ms=60_000)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    last_seen = max(s.timeStamp for s in nvml.nvmlDeviceGetProcessUtilization(h, 0))
    backend.advance(0.01)
    busy = ScenarioProcess(pid=99, memory_bytes=1, sm_percent=100)
    backend.update(
        Scenario(gpus=(gpu(processes=(busy,)),), util_sample_period_ms=60_000)
    )
    newer = nvml.nvmlDeviceGetProcessUtilization(h, last_seen)
    assert [(s.pid, s.smUtil) for s in newer] == [(99, 100)]
    # The ring buffer of a GPU that stays keeps its history.
    assert [s.pid for s in nvml.nvmlDeviceGetProcessUtilization(h, 0)] == [11, 13, 99]


# --- MIG ----------------------------------------------------------------------


def test_mig_mode_and_device_enumeration(backend: Backend) -> None:
    nvml = start(backend, mig_gpu(), gpu(UUID1))
    parent = nvml.nvmlDeviceGetHandleByIndex(0)
    plain = nvml.nvmlDeviceGetHandleByIndex(1)
    assert nvml.nvmlDeviceGetMigMode(parent) == [1, 1]
    assert nvml.nvmlDeviceGetMigMode(plain) == [0, 0]
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(parent) == 7
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(plain) == 0
    migs = [nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, i) for i in (0, 1)]
    for empty_slot in range(2, 7):
        with pytest.raises(pynvml.NVMLError_NotFound):
            nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, empty_slot)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 7)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(plain, 0)
    # pynvml returns the c_uint itself here, not an int.
    is_mig = nvml.nvmlDeviceIsMigDeviceHandle(migs[0])
    assert isinstance(is_mig, ctypes.c_uint)
    assert is_mig.value == 1
    assert nvml.nvmlDeviceIsMigDeviceHandle(parent).value == 0
    back = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(migs[1])
    assert nvml.nvmlDeviceGetUUID(back) == UUID0
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(parent)
    assert [nvml.nvmlDeviceGetGpuInstanceId(m) for m in migs] == [1, 2]
    assert [nvml.nvmlDeviceGetComputeInstanceId(m) for m in migs] == [0, 1]
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetGpuInstanceId(parent)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetComputeInstanceId(plain)


def test_mig_handles_answer_identity_memory_and_processes(backend: Backend) -> None:
    nvml = start(backend, mig_gpu())
    parent = nvml.nvmlDeviceGetHandleByIndex(0)
    mig0 = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    mig1 = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)
    assert nvml.nvmlDeviceGetUUID(mig0) == MIG_UUID0
    assert nvml.nvmlDeviceGetName(mig1) == "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    mem = nvml.nvmlDeviceGetMemoryInfo(mig0)
    assert (mem.total, mem.used, mem.free) == (40 << 30, 10 << 30, 30 << 30)
    mem2 = nvml.nvmlDeviceGetMemoryInfo(mig1, version=pynvml.nvmlMemory_v2)
    assert (mem2.total, mem2.used) == (10 << 30, 0)

    def rows(handle: Any) -> list[tuple[int, int, int, int]]:
        return [
            (p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId)
            for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        ]

    assert rows(mig1) == [(601, 1 << 20, 2, 1), (602, 2 << 20, 2, 1)]
    # The parent of a MIG-enabled GPU aggregates its instances.
    assert rows(parent) == [
        (501, 3 << 30, 1, 0),
        (601, 1 << 20, 2, 1),
        (602, 2 << 20, 2, 1),
    ]


def test_board_level_readings_are_not_supported_on_mig_handles(
    backend: Backend,
) -> None:
    nvml = start(backend, mig_gpu())
    parent = nvml.nvmlDeviceGetHandleByIndex(0)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    calls: list[Callable[[], object]] = [
        lambda: nvml.nvmlDeviceGetPowerUsage(mig),
        lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(mig),
        lambda: nvml.nvmlDeviceGetUtilizationRates(mig),
        lambda: nvml.nvmlDeviceGetTemperature(mig, pynvml.NVML_TEMPERATURE_GPU),
        lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(mig),
        lambda: nvml.nvmlDeviceGetIndex(mig),
        lambda: nvml.nvmlDeviceGetMigMode(mig),
        lambda: nvml.nvmlDeviceGetProcessUtilization(mig, 0),
        # nvml.h: per-process utilization is not supported in MIG mode at all.
        lambda: nvml.nvmlDeviceGetProcessUtilization(parent, 0),
    ]
    for call in calls:
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call()
    assert nvml.nvmlDeviceGetPowerUsage(parent) == 70_000
    assert nvml.nvmlDeviceGetUtilizationRates(parent).gpu == 0


def test_a_lost_mig_parent_loses_its_instances(backend: Backend) -> None:
    nvml = start(backend, mig_gpu())
    parent = nvml.nvmlDeviceGetHandleByIndex(0)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)
    backend.update(Scenario(gpus=(replace(mig_gpu(), lost=True),)))
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetUUID(mig)


def test_process_growth_on_a_mig_handle_keeps_the_instance_ids(
    backend: Backend,
) -> None:
    nvml = start(backend, mig_gpu(), process_growth=1)
    parent = nvml.nvmlDeviceGetHandleByIndex(0)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    procs = nvml.nvmlDeviceGetComputeRunningProcesses(mig)
    assert [(p.pid, p.gpuInstanceId) for p in procs] == [
        (501, 1),
        (GROWTH_FIRST_PID, 1),
    ]
