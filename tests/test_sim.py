"""The simulated node and NVML, driven by a clock the tests control."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

import pynvml
import pytest

from gpumeter.sim import (
    DemoWorkload,
    Scenario,
    ScenarioGpu,
    ScenarioMigInstance,
    ScenarioProcess,
    SimGpu,
    SimMigInstance,
    SimNode,
    SimProcess,
    SimulatedNvml,
    build_demo_node,
)
from gpumeter.sim.nvml import GROWTH_FIRST_PID

UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"
MIG_UUID0 = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
MIG_UUID1 = "MIG-ffffffff-0000-1111-2222-333333333333"
NO_ID = 0xFFFFFFFF
WALL_START = 1_700_000_000.0


class FakeClock:
    """Both clocks move together, only when the test says so."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = WALL_START

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def now_us(self) -> int:
        return round(self.wall * 1_000_000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def model_gpu(clock: FakeClock, **kwargs: Any) -> SimGpu:
    node = SimNode(clock)
    options: dict[str, Any] = {"idle_power_w": 100.0, "max_power_w": 500.0}
    options.update(kwargs)
    return node.add_gpu(UUID0, **options)


def gpu(uuid: str = UUID0, **kwargs: Any) -> ScenarioGpu:
    return ScenarioGpu(uuid=uuid, **kwargs)


def started(clock: FakeClock, *gpus: ScenarioGpu, **kwargs: Any) -> SimulatedNvml:
    nvml = SimulatedNvml.from_scenario(Scenario(gpus=gpus, **kwargs), clock)
    nvml.nvmlInit()
    return nvml


def assert_truth_adds_up(sim_gpu: SimGpu) -> None:
    truth = sim_gpu.truth
    parts = (
        truth.idle_joules
        + sum(truth.active_joules_by_pid.values())
        + truth.unattributed_joules
    )
    assert parts == pytest.approx(truth.total_joules, rel=1e-12, abs=1e-9)


# --- The physical model -------------------------------------------------------


def test_energy_integrates_exactly_across_changes(clock: FakeClock) -> None:
    g = model_gpu(clock, energy_mj=1000)
    assert g.energy_mj() == 1000
    clock.advance(2.0)  # idle: 100 W
    assert g.energy_mj() == 1000 + 200_000
    g.add_process(SimProcess(pid=7, memory_bytes=1 << 30, sm_percent=50))
    # u = 0.5: 100 + 400 * 0.5 * (2 - 0.5) = 400 W
    assert g.instant_power_mw() == 400_000
    clock.advance(0.5)
    assert g.energy_mj() == 401_000
    g.update_process(7, sm_percent=100)
    clock.advance(0.25)  # 500 W
    assert g.energy_mj() == 526_000
    g.remove_process(7)
    clock.advance(1.0)
    assert g.energy_mj() == 626_000


def test_power_is_the_average_of_the_last_second(clock: FakeClock) -> None:
    g = model_gpu(clock)
    assert g.power_mw() == 100_000  # before creation it drew its first power
    clock.advance(0.5)
    g.add_process(SimProcess(pid=7, memory_bytes=0, sm_percent=100))
    assert g.power_mw() == 100_000  # nothing of the new state has lasted yet
    clock.advance(0.25)
    assert g.power_mw() == 200_000  # 0.75 s at 100 W, 0.25 s at 500 W
    clock.advance(0.75)
    assert g.power_mw() == 500_000
    g.remove_process(7)
    clock.advance(0.5)
    assert g.power_mw() == 300_000


def test_changes_at_creation_are_the_initial_state(clock: FakeClock) -> None:
    g = model_gpu(clock)
    g.add_process(SimProcess(pid=7, memory_bytes=0, sm_percent=100))
    assert g.power_mw() == 500_000


def test_power_over_each_second_equals_the_energy_counter(clock: FakeClock) -> None:
    g = model_gpu(clock)
    g.add_process(SimProcess(pid=7, memory_bytes=0, sm_percent=10))
    before = g.energy_mj()
    for second in range(10):
        for step in range(4):
            g.update_process(7, sm_percent=(second * 7 + step * 13) % 101)
            clock.advance(0.25)
        after = g.energy_mj()
        assert abs(g.power_mw() - (after - before)) <= 1
        before = after


def test_utilization_memory_and_temperature_follow_the_processes(
    clock: FakeClock,
) -> None:
    g = model_gpu(clock, memory_reserved_bytes=500)
    assert g.temperature_c() == 38  # steady at idle: 30 + 0.08 * 100
    g.add_process(
        SimProcess(pid=1, memory_bytes=1000, sm_percent=70, memory_percent=40)
    )
    g.add_process(
        SimProcess(pid=2, memory_bytes=3000, sm_percent=60, memory_percent=70)
    )
    assert g.utilization_percent() == 100
    assert g.memory_utilization_percent() == 100
    assert g.memory_used_bytes() == 4500
    g.update_process(2, sm_percent=10, memory_percent=5, memory_bytes=2000)
    assert (g.utilization_percent(), g.memory_utilization_percent()) == (80, 45)
    assert g.memory_used_bytes() == 3500
    clock.advance(1.0)
    assert g.temperature_c() <= 40  # follows power slowly
    clock.advance(600.0)
    # 100 + 400 * 0.96 = 484 W; 30 + 0.08 * 484 = 68.7 degrees
    assert g.temperature_c() == 69


def test_ground_truth_splits_idle_and_active_energy(clock: FakeClock) -> None:
    g = model_gpu(clock)
    clock.advance(1.0)
    g.add_process(SimProcess(pid=1, memory_bytes=10, sm_percent=30))
    g.add_process(SimProcess(pid=2, memory_bytes=10, sm_percent=10))
    # u = 0.4: 100 + 400 * 0.64 = 356 W, of which 256 W active, split 3:1
    clock.advance(2.0)
    truth = g.truth
    assert truth.total_joules == pytest.approx(100 + 712)
    assert truth.idle_joules == pytest.approx(100 + 200)
    assert truth.active_joules_by_pid == pytest.approx({1: 384.0, 2: 128.0})
    assert truth.unattributed_joules == 0
    assert_truth_adds_up(g)

    # No SM activity but pinned power above idle: split by memory-controller share.
    g.update_process(1, sm_percent=0, memory_percent=20)
    g.update_process(2, sm_percent=0, memory_percent=60)
    g.pin(power_mw=300_000)
    clock.advance(1.0)
    truth = g.truth
    assert truth.active_joules_by_pid == pytest.approx({1: 384.0 + 50, 2: 128.0 + 150})
    assert_truth_adds_up(g)

    # Nobody left to take it: the active part is unattributed.
    g.remove_process(1)
    g.remove_process(2)
    clock.advance(1.0)
    truth = g.truth
    assert truth.unattributed_joules == pytest.approx(200.0)
    assert set(truth.active_joules_by_pid) == {1, 2}
    assert truth.total_joules == pytest.approx(g.energy_mj() / 1000)
    assert_truth_adds_up(g)


def test_pinned_power_below_idle_is_all_idle(clock: FakeClock) -> None:
    g = model_gpu(clock)
    g.add_process(SimProcess(pid=1, memory_bytes=1, sm_percent=50))
    g.pin(power_mw=60_000)
    clock.advance(2.0)
    assert g.power_mw() == 60_000
    truth = g.truth
    assert truth.idle_joules == pytest.approx(120.0)
    assert truth.active_joules_by_pid == {1: 0.0}
    g.unpin()
    assert g.instant_power_mw() == 400_000


def test_energy_counter_faults(clock: FakeClock) -> None:
    g = model_gpu(clock, energy_mj=5_000)
    clock.advance(1.0)
    g.reset_energy_counter()
    assert g.energy_mj() == 0
    clock.advance(1.0)
    assert g.energy_mj() == 100_000
    g.set_energy_integration(False)
    clock.advance(1.0)
    assert g.energy_mj() == 100_000
    assert g.truth.total_joules == pytest.approx(300.0)  # the truth never stops


def test_process_bookkeeping_errors(clock: FakeClock) -> None:
    g = model_gpu(clock)
    g.add_process(SimProcess(pid=1, memory_bytes=1))
    with pytest.raises(ValueError, match="already runs"):
        g.add_process(SimProcess(pid=1, memory_bytes=1))
    with pytest.raises(ValueError, match="no MIG instance"):
        g.add_process(SimProcess(pid=2, memory_bytes=1), mig_instance=0)
    with pytest.raises(KeyError):
        g.update_process(3, sm_percent=1)
    with pytest.raises(KeyError):
        g.remove_process(3)
    with pytest.raises(ValueError, match="below idle"):
        SimNode(clock).add_gpu(UUID1, idle_power_w=100.0, max_power_w=50.0)


# --- Library lifecycle and errors ----------------------------------------------


def test_init_is_reference_counted(clock: FakeClock) -> None:
    nvml = SimulatedNvml.from_scenario(Scenario(gpus=(gpu(),)), clock)
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


def test_init_error_fails_the_first_init(clock: FakeClock) -> None:
    nvml = SimulatedNvml.from_scenario(Scenario(gpus=(gpu(),), init_error=9), clock)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        nvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    nvml.node.load(Scenario(gpus=(gpu(),)))
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetCount() == 1


def test_errors_are_pynvml_classes(clock: FakeClock) -> None:
    nvml = started(
        clock,
        gpu(
            UUID0,
            errors={
                "nvmlDeviceGetPowerUsage": 3,
                "nvmlDeviceGetComputeRunningProcesses_v3": 4,
            },
        ),
        gpu(UUID1),
    )
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
    nvml.node.gpus[0].clear_error("nvmlDeviceGetPowerUsage")
    assert nvml.nvmlDeviceGetPowerUsage(h0) == 70_000
    nvml.node.gpus[1].set_error("nvmlDeviceGetName", 999)
    with pytest.raises(pynvml.NVMLError_Unknown):
        nvml.nvmlDeviceGetName(h1)


def test_missing_functions_behave_as_absent_symbols(clock: FakeClock) -> None:
    nvml = started(
        clock,
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
    with pytest.raises(pynvml.NVMLLibraryMismatchError) as caught:
        nvml.nvmlDeviceGetComputeRunningProcesses(h)
    assert not isinstance(caught.value, pynvml.NVMLError)
    assert [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses_v2(h)] == [10]


def test_missing_init_fails_init(clock: FakeClock) -> None:
    scenario = Scenario(
        gpus=(gpu(),), missing_functions=frozenset({"nvmlInitWithFlags"})
    )
    nvml = SimulatedNvml.from_scenario(scenario, clock)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nvml.nvmlInit()


def test_a_lost_gpu_fails_every_call_until_it_returns(clock: FakeClock) -> None:
    nvml = started(clock, gpu(UUID0), gpu(UUID1))
    h0 = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.node.gpus[0].set_lost(True)
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
    nvml.node.gpus[0].set_lost(False)
    assert nvml.nvmlDeviceGetName(h0) == "NVIDIA H100 80GB HBM3"


def test_bad_indexes_sensors_and_handles(clock: FakeClock) -> None:
    nvml = started(clock, gpu())
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    for bad in (1, -1):
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            nvml.nvmlDeviceGetHandleByIndex(bad)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetPowerUsage(object())
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetTemperature(h, 1)
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        nvml.nvmlDeviceGetMemoryInfo(h, version=0x01000028)


def test_handles_are_distinct_and_unhashable(clock: FakeClock) -> None:
    nvml = started(clock, gpu())
    a = nvml.nvmlDeviceGetHandleByIndex(0)
    b = nvml.nvmlDeviceGetHandleByIndex(0)
    assert a != b
    with pytest.raises(TypeError):
        hash(a)


def test_constants_and_classes_come_from_pynvml(clock: FakeClock) -> None:
    nvml = SimulatedNvml.from_scenario(Scenario(gpus=()), clock)
    assert nvml.NVMLError is pynvml.NVMLError
    assert nvml.NVMLLibraryMismatchError is pynvml.NVMLLibraryMismatchError
    assert nvml.NVMLError_NotFound is pynvml.NVMLError_NotFound
    assert nvml.NVML_ERROR_GPU_IS_LOST == pynvml.NVML_ERROR_GPU_IS_LOST
    assert nvml.NVML_VALUE_NOT_AVAILABLE_uint is pynvml.NVML_VALUE_NOT_AVAILABLE_uint
    assert nvml.nvmlMemory_v2 == pynvml.nvmlMemory_v2
    assert nvml.NVML_TEMPERATURE_GPU == pynvml.NVML_TEMPERATURE_GPU
    assert not hasattr(nvml, "nvmlDeviceGetFanSpeed")


# --- Readings from a scenario ----------------------------------------------------


def test_scenario_values_are_returned_exactly(clock: FakeClock) -> None:
    nvml = started(
        clock,
        gpu(
            name="NVIDIA A100-SXM4-80GB",
            power_mw=312_345,
            energy_mj=42,
            integrate_energy=False,
            gpu_util_percent=77,
            memory_util_percent=33,
            memory_total_bytes=80 << 30,
            memory_used_bytes=20 << 30,
            temperature_c=61,
            power_limit_mw=400_000,
        ),
        driver_version="535.183.01",
    )
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlSystemGetDriverVersion() == "535.183.01"
    assert nvml.nvmlDeviceGetIndex(h) == 0
    assert nvml.nvmlDeviceGetName(h) == "NVIDIA A100-SXM4-80GB"
    assert nvml.nvmlDeviceGetUUID(h) == UUID0
    clock.advance(3.7)
    assert nvml.nvmlDeviceGetPowerUsage(h) == 312_345
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 42
    assert nvml.nvmlDeviceGetEnforcedPowerLimit(h) == 400_000
    assert nvml.nvmlDeviceGetPowerManagementLimit(h) == 400_000
    util = nvml.nvmlDeviceGetUtilizationRates(h)
    assert (util.gpu, util.memory) == (77, 33)
    assert nvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 61
    mem = nvml.nvmlDeviceGetMemoryInfo(h)
    assert isinstance(mem, pynvml.c_nvmlMemory_t)
    assert (mem.total, mem.used, mem.free) == (80 << 30, 20 << 30, 60 << 30)
    mem2 = nvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert (mem2.version, mem2.total, mem2.reserved, mem2.used, mem2.free) == (
        pynvml.nvmlMemory_v2,
        80 << 30,
        0,
        20 << 30,
        60 << 30,
    )


def test_model_memory_v2_reports_reserved_apart(clock: FakeClock) -> None:
    node = SimNode(clock)
    node.add_gpu(UUID0, memory_total_bytes=10_000, memory_reserved_bytes=500)
    node.gpus[0].add_process(SimProcess(pid=1, memory_bytes=1500))
    nvml = SimulatedNvml(node)
    nvml.nvmlInit()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    mem = nvml.nvmlDeviceGetMemoryInfo(h)
    assert (mem.total, mem.used, mem.free) == (10_000, 2000, 8000)
    mem2 = nvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert (mem2.total, mem2.reserved, mem2.used, mem2.free) == (
        10_000,
        500,
        1500,
        8000,
    )


def test_scenario_energy_integrates_its_power(clock: FakeClock) -> None:
    nvml = started(clock, gpu(power_mw=312_000, energy_mj=5_000))
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(0.25)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 5_000 + 78_000
    assert nvml.node.gpus[0].truth.total_joules == pytest.approx(78.0)


def test_reload_carries_the_counter_on_or_resets_it(clock: FakeClock) -> None:
    nvml = started(clock, gpu(UUID0, power_mw=100_000, energy_mj=1_000))
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(1.0)
    # Same energy_mj: the counter carries on, now at the new power.
    nvml.node.load(Scenario(gpus=(gpu(UUID0, power_mw=200_000, energy_mj=1_000),)))
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 101_000
    assert nvml.nvmlDeviceGetPowerUsage(h) == 200_000
    clock.advance(0.5)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 201_000
    # A new energy_mj is a driver reload: the counter restarts there.
    nvml.node.load(Scenario(gpus=(gpu(UUID0, power_mw=200_000, energy_mj=7),)))
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 7
    clock.advance(0.5)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 100_007
    # GPUs are matched by UUID: a new one starts from its own energy_mj.
    nvml.node.load(
        Scenario(
            gpus=(gpu(UUID1, energy_mj=3), gpu(UUID0, power_mw=200_000, energy_mj=7))
        )
    )
    assert nvml.nvmlDeviceGetUUID(h) == UUID1
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 3
    moved = nvml.nvmlDeviceGetHandleByIndex(1)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(moved) == 100_007
    assert nvml.node.gpus[1].truth.total_joules == pytest.approx(300.0)
    # The library stayed initialized throughout.
    assert nvml.nvmlDeviceGetCount() == 2


# --- Running processes -----------------------------------------------------------


def test_process_list_entries(clock: FakeClock) -> None:
    procs = (
        ScenarioProcess(pid=10, memory_bytes=1 << 30, sm_percent=50),
        ScenarioProcess(pid=11, memory_bytes=2 << 30),
    )
    nvml = started(clock, gpu(processes=procs), gpu(UUID1))
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    entries = nvml.nvmlDeviceGetComputeRunningProcesses(h)
    assert all(isinstance(e, pynvml.nvmlFriendlyObject) for e in entries)
    assert [
        (e.pid, e.usedGpuMemory, e.gpuInstanceId, e.computeInstanceId) for e in entries
    ] == [(10, 1 << 30, NO_ID, NO_ID), (11, 2 << 30, NO_ID, NO_ID)]
    empty = nvml.nvmlDeviceGetHandleByIndex(1)
    assert nvml.nvmlDeviceGetComputeRunningProcesses(empty) == []


@pytest.mark.parametrize("growth", [1, 6])
def test_processes_that_start_between_the_calls_fit_the_headroom(
    clock: FakeClock, growth: int
) -> None:
    nvml = started(
        clock,
        gpu(processes=(ScenarioProcess(pid=10, memory_bytes=1),)),
        process_growth=growth,
    )
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    pids = [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(h)]
    assert pids == [10, *(GROWTH_FIRST_PID + k for k in range(growth))]


def test_growth_past_the_headroom_is_insufficient_size(clock: FakeClock) -> None:
    nvml = started(
        clock,
        gpu(UUID0, processes=(ScenarioProcess(pid=10, memory_bytes=1),)),
        gpu(UUID1),
        process_growth=7,  # one process: pynvml makes room for 2 * 1 + 5
    )
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        nvml.nvmlDeviceGetComputeRunningProcesses(nvml.nvmlDeviceGetHandleByIndex(0))
    # With none at sizing time pynvml does not ask again.
    assert (
        nvml.nvmlDeviceGetComputeRunningProcesses(nvml.nvmlDeviceGetHandleByIndex(1))
        == []
    )


# --- Per-process utilization -------------------------------------------------------


def busy_and_idle() -> tuple[ScenarioProcess, ...]:
    return (
        ScenarioProcess(pid=21, memory_bytes=1, sm_percent=40, memory_percent=10),
        ScenarioProcess(pid=22, memory_bytes=1, memory_percent=5),
        ScenarioProcess(pid=23, memory_bytes=1),
    )


def test_first_query_finds_the_load_time_samples(clock: FakeClock) -> None:
    load_us = clock.now_us()
    nvml = started(clock, gpu(processes=busy_and_idle()))
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    samples = nvml.nvmlDeviceGetProcessUtilization(h, 0)
    assert all(isinstance(s, pynvml.c_nvmlProcessUtilizationSample_t) for s in samples)
    # Idle processes produce no samples.
    assert [
        (s.pid, s.timeStamp, s.smUtil, s.memUtil, s.encUtil, s.decUtil) for s in samples
    ] == [(21, load_us, 40, 10, 0, 0), (22, load_us, 0, 5, 0, 0)]
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetProcessUtilization(h, load_us)


def test_no_busy_process_is_not_found(clock: FakeClock) -> None:
    nvml = started(clock, gpu(processes=(ScenarioProcess(pid=1, memory_bytes=1),)))
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(5.0)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetProcessUtilization(h, 0)


def test_samples_arrive_each_period_and_the_ring_drops_the_oldest(
    clock: FakeClock,
) -> None:
    load_us = clock.now_us()
    nvml = started(
        clock,
        gpu(processes=busy_and_idle()),
        util_sample_period_ms=100,
        util_buffer_size=5,
    )
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(0.15)
    samples = nvml.nvmlDeviceGetProcessUtilization(h, load_us)
    assert [(s.pid, s.timeStamp - load_us) for s in samples] == [
        (21, 100_000),
        (22, 100_000),
    ]
    clock.advance(0.1)
    samples = nvml.nvmlDeviceGetProcessUtilization(h, 0)
    # Three ticks of two samples each, in a ring of five: the oldest is gone.
    assert [(s.pid, s.timeStamp - load_us) for s in samples] == [
        (22, 0),
        (21, 100_000),
        (22, 100_000),
        (21, 200_000),
        (22, 200_000),
    ]
    # After a long pause only the newest samples remain.
    clock.advance(3600.0)
    samples = nvml.nvmlDeviceGetProcessUtilization(h, 0)
    newest = load_us + 36_002 * 100_000
    assert [s.timeStamp for s in samples] == [newest - 200_000] + [
        newest - 100_000
    ] * 2 + [newest] * 2


def test_samples_follow_process_changes(clock: FakeClock) -> None:
    node = SimNode(clock, util_sample_period_ms=1000)
    g = node.add_gpu(UUID0)
    g.add_process(SimProcess(pid=5, memory_bytes=1, sm_percent=30))
    clock.advance(1.0)
    g.update_process(5, sm_percent=80)
    clock.advance(1.0)
    g.remove_process(5)
    clock.advance(1.0)
    start_us = round(WALL_START * 1_000_000)
    assert [
        (s.timestamp_us - start_us, s.sm_percent) for s in g.utilization_samples()
    ] == [
        (1_000_000, 30),  # due at the change: taken before it
        (2_000_000, 80),
    ]


def test_a_zero_period_samples_only_at_load_time(clock: FakeClock) -> None:
    nvml = started(clock, gpu(processes=busy_and_idle()), util_sample_period_ms=0)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(10.0)
    assert len(nvml.nvmlDeviceGetProcessUtilization(h, 0)) == 2


def test_a_scenario_with_a_uuid_twice_is_refused(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="twice"):
        SimNode.from_scenario(Scenario(gpus=(gpu(UUID0), gpu(UUID0))), clock)


def test_fixed_sizing_count_like_real_drivers(clock: FakeClock) -> None:
    nvml = started(clock, gpu(processes=busy_and_idle()), util_sizing_count=100)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert [s.pid for s in nvml.nvmlDeviceGetProcessUtilization(h, 0)] == [21, 22]


def test_a_sizing_count_below_the_samples_fails_the_fill_call(
    clock: FakeClock,
) -> None:
    nvml = started(clock, gpu(processes=busy_and_idle()), util_sizing_count=1)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        nvml.nvmlDeviceGetProcessUtilization(h, 0)


def test_process_utilization_follows_reloads(clock: FakeClock) -> None:
    nvml = started(clock, gpu(processes=busy_and_idle()), util_sample_period_ms=60_000)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    last_seen = max(s.timeStamp for s in nvml.nvmlDeviceGetProcessUtilization(h, 0))
    clock.advance(1.0)
    busy = ScenarioProcess(pid=99, memory_bytes=1, sm_percent=100)
    nvml.node.load(
        Scenario(gpus=(gpu(processes=(busy,)),), util_sample_period_ms=60_000)
    )
    newer = nvml.nvmlDeviceGetProcessUtilization(h, last_seen)
    assert [(s.pid, s.smUtil) for s in newer] == [(99, 100)]
    # The ring buffer of a GPU that stays keeps its history.
    assert [s.pid for s in nvml.nvmlDeviceGetProcessUtilization(h, 0)] == [21, 22, 99]


# --- MIG ---------------------------------------------------------------------------


def mig_gpu(**kwargs: Any) -> ScenarioGpu:
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
        **kwargs,
    )


def test_mig_mode_and_device_enumeration(clock: FakeClock) -> None:
    nvml = started(clock, mig_gpu(), gpu(UUID1))
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


def test_mig_handles_answer_identity_memory_and_processes(clock: FakeClock) -> None:
    nvml = started(clock, mig_gpu())
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
    assert rows(parent) == [
        (501, 3 << 30, 1, 0),
        (601, 1 << 20, 2, 1),
        (602, 2 << 20, 2, 1),
    ]


def test_board_level_readings_are_not_supported_on_mig_handles(
    clock: FakeClock,
) -> None:
    nvml = started(clock, mig_gpu())
    parent = nvml.nvmlDeviceGetHandleByIndex(0)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    calls: list[Callable[[], object]] = [
        lambda: nvml.nvmlDeviceGetPowerUsage(mig),
        lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(mig),
        lambda: nvml.nvmlDeviceGetUtilizationRates(mig),
        lambda: nvml.nvmlDeviceGetTemperature(mig, 0),
        lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(mig),
        lambda: nvml.nvmlDeviceGetIndex(mig),
        lambda: nvml.nvmlDeviceGetMigMode(mig),
        lambda: nvml.nvmlDeviceGetProcessUtilization(mig, 0),
        # Per-process utilization is not supported in MIG mode at all.
        lambda: nvml.nvmlDeviceGetProcessUtilization(parent, 0),
    ]
    for call in calls:
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call()
    assert nvml.nvmlDeviceGetPowerUsage(parent) == 70_000
    assert nvml.nvmlDeviceGetUtilizationRates(parent).gpu == 0


def test_a_lost_mig_parent_loses_its_instances(clock: FakeClock) -> None:
    nvml = started(clock, mig_gpu())
    parent = nvml.nvmlDeviceGetHandleByIndex(0)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)
    nvml.node.gpus[0].set_lost(True)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetUUID(mig)


def test_process_growth_on_a_mig_handle_keeps_the_instance_ids(
    clock: FakeClock,
) -> None:
    nvml = started(clock, mig_gpu(), process_growth=1)
    parent = nvml.nvmlDeviceGetHandleByIndex(0)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    procs = nvml.nvmlDeviceGetComputeRunningProcesses(mig)
    assert [(p.pid, p.gpuInstanceId) for p in procs] == [
        (501, 1),
        (GROWTH_FIRST_PID, 1),
    ]


def test_mig_ground_truth_splits_across_instances(clock: FakeClock) -> None:
    node = SimNode(clock)
    g = node.add_gpu(UUID0, idle_power_w=100.0, max_power_w=500.0)
    g.set_mig_instances(
        [
            SimMigInstance(1, 0, MIG_UUID0, "MIG 3g.40gb", 40 << 30),
            SimMigInstance(2, 0, MIG_UUID1, "MIG 3g.40gb", 40 << 30),
        ]
    )
    g.add_process(SimProcess(pid=1, memory_bytes=5, sm_percent=30), mig_instance=0)
    g.add_process(SimProcess(pid=2, memory_bytes=7, sm_percent=10), mig_instance=1)
    assert g.mig_memory_used_bytes(0) == 5
    assert g.processes_on(1) == (SimProcess(pid=2, memory_bytes=7, sm_percent=10),)
    clock.advance(2.0)
    assert g.truth.active_joules_by_pid == pytest.approx({1: 384.0, 2: 128.0})
    with pytest.raises(ValueError, match="removed MIG instances"):
        g.set_mig_instances([])


# --- Threads, the demo ---------------------------------------------------------------


def test_concurrent_readers_and_writers(clock: FakeClock) -> None:
    node = build_demo_node(clock)
    nvml = SimulatedNvml(node)
    nvml.nvmlInit()
    workload = DemoWorkload(node)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                for i in range(nvml.nvmlDeviceGetCount()):
                    h = nvml.nvmlDeviceGetHandleByIndex(i)
                    nvml.nvmlDeviceGetPowerUsage(h)
                    nvml.nvmlDeviceGetTotalEnergyConsumption(h)
                    nvml.nvmlDeviceGetComputeRunningProcesses(h)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    for _ in range(300):
        with node.lock:
            clock.advance(0.5)
        workload.advance(clock.monotonic())
    stop.set()
    for thread in readers:
        thread.join()
    assert errors == []
    for g in node.gpus:
        assert_truth_adds_up(g)


def test_demo_node_has_three_h100s_with_labelled_processes(clock: FakeClock) -> None:
    node = build_demo_node(clock)
    workload = DemoWorkload(node)
    nvml = SimulatedNvml(node)
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetCount() == 3
    names = {
        nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(3)
    }
    assert names == {"NVIDIA H100 80GB HBM3"}
    assert [len(g.processes) for g in node.gpus] == [1, 2, 1]
    for g in node.gpus:
        for p in g.processes:
            assert all((p.command, p.container, p.pod, p.namespace))
    assert set(workload.loads()) == {job.name for job in workload.jobs}
    h = nvml.nvmlDeviceGetHandleByIndex(1)
    assert {p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(h)} == {
        workload.pid_of("tgi-mistral-7b"),
        workload.pid_of("sglang-qwen2.5-7b"),
    }
    clock.advance(1.0)
    workload.advance(clock.monotonic())
    assert {s.pid for s in nvml.nvmlDeviceGetProcessUtilization(h, 0)} == {
        workload.pid_of("tgi-mistral-7b"),
        workload.pid_of("sglang-qwen2.5-7b"),
    }


def test_demo_processes_restart_with_new_pids(clock: FakeClock) -> None:
    node = build_demo_node(clock)
    workload = DemoWorkload(node)
    first_engine = workload.pid_of("sglang-qwen2.5-7b")
    first_training = workload.pid_of("finetune-lora-llama-8b")
    seen_stopped: set[str] = set()
    for _ in range(400):
        clock.advance(1.0)
        workload.advance(clock.monotonic())
        seen_stopped |= {n for n, load in workload.loads().items() if load == 0.0}
    assert {"sglang-qwen2.5-7b", "finetune-lora-llama-8b"} <= seen_stopped
    assert workload.pid_of("sglang-qwen2.5-7b") not in (None, first_engine)
    assert workload.pid_of("finetune-lora-llama-8b") not in (None, first_training)
    assert workload.pid_of("vllm-llama-3.1-8b") == node.gpus[0].processes[0].pid


def test_demo_power_times_time_tracks_energy_at_1_hz(clock: FakeClock) -> None:
    """Over every 20 s window of ten minutes, sampled once a second."""
    node = build_demo_node(clock)
    workload = DemoWorkload(node)
    nvml = SimulatedNvml(node)
    nvml.nvmlInit()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(3)]
    power: list[list[int]] = [[] for _ in handles]
    energy: list[list[int]] = [[] for _ in handles]
    for _ in range(600):
        for i, h in enumerate(handles):
            power[i].append(nvml.nvmlDeviceGetPowerUsage(h))
            energy[i].append(nvml.nvmlDeviceGetTotalEnergyConsumption(h))
        for _ in range(10):
            clock.advance(0.1)
            workload.advance(clock.monotonic())
    for i in range(len(handles)):
        p, e = power[i], energy[i]
        for a in range(len(p) - 20):
            counted = e[a + 20] - e[a]
            rectangles = sum(p[a + 1 : a + 21])
            trapezoids = sum((p[k] + p[k + 1]) / 2 for k in range(a, a + 20))
            assert rectangles == pytest.approx(counted, rel=0.01), (i, a)
            assert trapezoids == pytest.approx(counted, rel=0.01), (i, a)
        assert_truth_adds_up(node.gpus[i])
