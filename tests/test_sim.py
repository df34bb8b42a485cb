"""The simulated node and NVML, driven by a clock the tests control.

Only what is particular to the simulation lives here: the physical model, exact
energy and sample times, ground truth, run-time faults and the demo. What the fake
C driver must do alike is in ``test_nvml_behaviour.py``.
"""

from __future__ import annotations

import threading
from typing import Any

import pynvml
import pytest

from gpumeter.sim import (
    DemoWorkload,
    Scenario,
    ScenarioGpu,
    ScenarioProcess,
    SimGpu,
    SimMigInstance,
    SimNode,
    SimProcess,
    SimulatedNvml,
    build_demo_node,
)
from tests.fake_clock import WALL_START, FakeClock

UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"
MIG_UUID0 = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
MIG_UUID1 = "MIG-ffffffff-0000-1111-2222-333333333333"


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


# --- Library lifecycle and faults ----------------------------------------------


def test_faults_can_be_set_and_cleared_at_run_time(clock: FakeClock) -> None:
    nvml = started(clock, gpu(UUID0, errors={"nvmlDeviceGetPowerUsage": 3}), gpu(UUID1))
    h0 = nvml.nvmlDeviceGetHandleByIndex(0)
    h1 = nvml.nvmlDeviceGetHandleByIndex(1)
    nvml.node.gpus[0].clear_error("nvmlDeviceGetPowerUsage")
    assert nvml.nvmlDeviceGetPowerUsage(h0) == 70_000
    nvml.node.gpus[1].set_error("nvmlDeviceGetName", 999)
    with pytest.raises(pynvml.NVMLError_Unknown):
        nvml.nvmlDeviceGetName(h1)
    nvml.node.gpus[0].set_lost(True)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetName(h0)
    nvml.node.gpus[0].set_lost(False)
    assert nvml.nvmlDeviceGetName(h0) == "NVIDIA H100 80GB HBM3"


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
    # A scenario's power is held, not averaged, past the 1-s window too.
    clock.advance(3.75)
    assert nvml.nvmlDeviceGetPowerUsage(h) == 312_000
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 5_000 + 1_248_000


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


# --- Per-process utilization -------------------------------------------------------


def busy_and_idle() -> tuple[ScenarioProcess, ...]:
    return (
        ScenarioProcess(pid=21, memory_bytes=1, sm_percent=40, memory_percent=10),
        ScenarioProcess(pid=22, memory_bytes=1, memory_percent=5),
        ScenarioProcess(pid=23, memory_bytes=1),  # idle: produces no samples
    )


def test_samples_are_stamped_on_exact_period_ticks(clock: FakeClock) -> None:
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


def test_a_scenario_with_a_uuid_twice_is_refused(clock: FakeClock) -> None:
    # On purpose, unlike the C fake: the simulation matches GPUs by UUID for its
    # ground truth, so twins would share one history.
    with pytest.raises(ValueError, match="twice"):
        SimNode.from_scenario(Scenario(gpus=(gpu(UUID0), gpu(UUID0))), clock)


# --- MIG ---------------------------------------------------------------------------


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
