"""The GPU source over both fakes: the C driver under pynvml, and the simulation."""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pynvml
import pytest

from gpumeter.clock import SystemClock
from gpumeter.errors import NvmlUnavailable
from gpumeter.gpus import GpuSample, NvmlSource, load_pynvml
from gpumeter.sim import (
    Scenario,
    ScenarioGpu,
    ScenarioMigInstance,
    ScenarioProcess,
    SimulatedNvml,
)
from tests.fake_nvml.conftest_plugin import FakeNvml

GIB = 2**30


@dataclass
class Backend:
    """An NVML module plus a way to change the machine behind it."""

    name: str
    nvml: Any
    update: Callable[[Scenario], None]


@pytest.fixture(params=["fake", "sim"])
def backend_for(
    request: pytest.FixtureRequest,
) -> Callable[[Scenario], Backend]:
    """Returns a factory: scenario in, backend serving it out."""

    def make(scenario: Scenario) -> Backend:
        if request.param == "fake":
            fake: FakeNvml = request.getfixturevalue("fake_nvml")
            fake.load(scenario)
            return Backend("fake", pynvml, fake.update)
        sim = SimulatedNvml.from_scenario(scenario, SystemClock())
        return Backend("sim", sim, sim.node.load)

    return make


def _gpu(index: int, **fields: Any) -> ScenarioGpu:
    values: dict[str, Any] = {
        "uuid": f"GPU-{index:08d}-1111-2222-3333-444444444444",
        "power_mw": 250_500 + index,
        "energy_mj": 9_000_123 + index,
        "integrate_energy": False,
        "gpu_util_percent": 80 + index,
        "memory_used_bytes": (10 + index) * GIB,
        "temperature_c": 50 + index,
        "power_limit_mw": 650_000,
    }
    values.update(fields)
    return ScenarioGpu(**values)


def _by_label(samples: tuple[GpuSample, ...]) -> dict[str, GpuSample]:
    return {s.device.label: s for s in samples}


def _sample_after_a_period(source: NvmlSource) -> dict[str, GpuSample]:
    # Process-utilization samples arrive every 100 ms; give the driver time to take
    # one since the previous read.
    time.sleep(0.15)
    return _by_label(source.sample())


def test_values_arrive_in_base_units(
    backend_for: Callable[[Scenario], Backend],
) -> None:
    processes = (
        ScenarioProcess(pid=101, memory_bytes=3 * GIB, sm_percent=40),
        ScenarioProcess(pid=102, memory_bytes=5 * GIB, sm_percent=0),
    )
    backend = backend_for(Scenario(gpus=(_gpu(0, processes=processes), _gpu(1))))
    source = NvmlSource(backend.nvml)
    source.sample()
    samples = _sample_after_a_period(source)

    gpu0 = samples["0"]
    assert gpu0.up
    assert gpu0.device.uuid == "GPU-00000000-1111-2222-3333-444444444444"
    assert gpu0.device.name == "NVIDIA H100 80GB HBM3"
    assert gpu0.power_watts == pytest.approx(250.5)
    assert gpu0.energy_joules == pytest.approx(9000.123)
    assert gpu0.utilization_ratio == pytest.approx(0.80)
    assert gpu0.memory_used_bytes == 10 * GIB
    assert gpu0.memory_total_bytes == 85_520_809_984
    assert gpu0.temperature_celsius == 50
    assert gpu0.power_limit_watts == pytest.approx(650.0)
    assert [(p.pid, p.memory_bytes) for p in gpu0.processes] == [
        (101, 3 * GIB),
        (102, 5 * GIB),
    ]
    # 102 ran no kernels, so the driver has no sample of it: utilization 0.
    utilization = {p.pid: p.sm_utilization_ratio for p in gpu0.processes}
    assert utilization == {101: pytest.approx(0.40), 102: 0.0}
    assert samples["1"].power_watts == pytest.approx(250.501)
    assert source.up
    assert source.driver_version == "550.54.15"
    assert not source.errors


def test_missing_capabilities_drop_their_fields_only(
    backend_for: Callable[[Scenario], Backend],
) -> None:
    errors = {"nvmlDeviceGetTotalEnergyConsumption": 3, "nvmlDeviceGetTemperature": 3}
    backend = backend_for(Scenario(gpus=(_gpu(0, errors=errors),)))
    source = NvmlSource(backend.nvml)
    (sample,) = source.sample()
    assert sample.energy_joules is None
    assert sample.temperature_celsius is None
    assert sample.power_watts == pytest.approx(250.5)
    caps = source.capabilities(sample.device.uuid)
    assert caps is not None
    assert not caps.energy_counter
    assert caps.power
    # Probing found them missing; nothing failed, so nothing is counted.
    assert not source.errors


def test_a_lost_gpu_is_down_alone_and_comes_back(
    backend_for: Callable[[Scenario], Backend],
) -> None:
    scenario = Scenario(gpus=(_gpu(0), _gpu(1)))
    backend = backend_for(scenario)
    source = NvmlSource(backend.nvml)
    assert all(s.up for s in source.sample())

    lost = replace(
        scenario, gpus=(scenario.gpus[0], replace(scenario.gpus[1], lost=True))
    )
    backend.update(lost)
    samples = _by_label(source.sample())
    assert samples["0"].up
    assert samples["0"].power_watts == pytest.approx(250.5)
    assert not samples["1"].up
    assert samples["1"].power_watts is None
    assert source.up
    assert any(gpu == "1" and error == "gpu_lost" for gpu, _, error in source.errors)

    backend.update(scenario)
    samples = _by_label(source.sample())
    assert samples["1"].up
    assert samples["1"].power_watts == pytest.approx(250.501)


def test_a_failing_call_costs_only_its_field_and_is_counted(
    backend_for: Callable[[Scenario], Backend],
) -> None:
    scenario = Scenario(gpus=(_gpu(0),))
    backend = backend_for(scenario)
    source = NvmlSource(backend.nvml)
    source.sample()
    broken = replace(scenario.gpus[0], errors={"nvmlDeviceGetPowerUsage": 999})
    backend.update(replace(scenario, gpus=(broken,)))
    (sample,) = source.sample()
    (sample,) = source.sample()
    assert sample.up
    assert sample.power_watts is None
    assert sample.energy_joules == pytest.approx(9000.123)
    assert source.errors[("0", "nvmlDeviceGetPowerUsage", "unknown")] == 2


def test_no_permission_for_processes_keeps_the_rest(
    backend_for: Callable[[Scenario], Backend],
) -> None:
    gpu = _gpu(
        0,
        processes=(ScenarioProcess(pid=7, memory_bytes=GIB),),
        errors={"nvmlDeviceGetComputeRunningProcesses_v3": 4},
    )
    backend = backend_for(Scenario(gpus=(gpu,)))
    source = NvmlSource(backend.nvml)
    (sample,) = source.sample()
    assert sample.up
    assert sample.processes == ()
    assert sample.power_watts == pytest.approx(250.5)
    assert source.errors[("0", "nvmlDeviceGetComputeRunningProcesses", "no_permission")]


def test_an_old_driver_without_v3_falls_back_to_v2(
    backend_for: Callable[[Scenario], Backend],
) -> None:
    gpu = _gpu(0, processes=(ScenarioProcess(pid=7, memory_bytes=GIB),))
    missing = frozenset({"nvmlDeviceGetComputeRunningProcesses_v3"})
    backend = backend_for(Scenario(gpus=(gpu,), missing_functions=missing))
    source = NvmlSource(backend.nvml)
    (sample,) = source.sample()
    (sample,) = source.sample()
    assert [(p.pid, p.memory_bytes) for p in sample.processes] == [(7, GIB)]
    assert not source.errors


def test_processes_starting_between_the_two_calls(
    backend_for: Callable[[Scenario], Backend],
) -> None:
    one = (ScenarioProcess(pid=7, memory_bytes=GIB),)
    # Within pynvml's headroom (2n + 5) the newcomers are simply listed.
    backend = backend_for(Scenario(gpus=(_gpu(0, processes=one),), process_growth=3))
    source = NvmlSource(backend.nvml)
    (sample,) = source.sample()
    assert len(sample.processes) == 4
    # Past it every attempt fails: the list is empty for this tick, and counted.
    backend.update(Scenario(gpus=(_gpu(0, processes=one),), process_growth=50))
    (sample,) = source.sample()
    assert sample.processes == ()
    key = ("0", "nvmlDeviceGetComputeRunningProcesses", "insufficient_size")
    assert source.errors[key] == 1


def test_no_driver_is_retried_with_backoff(
    backend_for: Callable[[Scenario], Backend],
) -> None:
    scenario = Scenario(gpus=(_gpu(0),))
    backend = backend_for(replace(scenario, init_error=9))
    source = NvmlSource(backend.nvml, retry_initial_s=0.05, retry_max_s=0.05)
    assert source.sample() == ()
    assert not source.up
    assert source.errors[("", "nvmlInit", "driver_not_loaded")] == 1
    # Within the backoff nothing is tried again.
    assert source.sample() == ()
    assert source.errors[("", "nvmlInit", "driver_not_loaded")] == 1
    backend.update(scenario)
    time.sleep(0.06)
    (sample,) = source.sample()
    assert source.up
    assert sample.power_watts == pytest.approx(250.5)


def test_mig_instances_are_devices_of_their_own(
    backend_for: Callable[[Scenario], Backend],
) -> None:
    instances = (
        ScenarioMigInstance(
            gpu_instance_id=1,
            compute_instance_id=0,
            uuid="MIG-11111111-2222-3333-4444-555555555555",
            name="NVIDIA H100 80GB HBM3 MIG 3g.40gb",
            memory_total_bytes=40 * GIB,
            memory_used_bytes=12 * GIB,
            processes=(ScenarioProcess(pid=900, memory_bytes=11 * GIB),),
        ),
        ScenarioMigInstance(
            gpu_instance_id=2,
            compute_instance_id=0,
            uuid="MIG-66666666-7777-8888-9999-000000000000",
            name="NVIDIA H100 80GB HBM3 MIG 3g.40gb",
            memory_total_bytes=40 * GIB,
            memory_used_bytes=0,
        ),
    )
    backend = backend_for(Scenario(gpus=(_gpu(0, mig_instances=instances),)))
    source = NvmlSource(backend.nvml)
    samples = _by_label(source.sample())
    assert set(samples) == {"0", "0/gi1/ci0", "0/gi2/ci0"}
    board = samples["0"]
    assert board.power_watts == pytest.approx(250.5)
    assert board.energy_joules == pytest.approx(9000.123)
    first = samples["0/gi1/ci0"]
    assert first.device.uuid == instances[0].uuid
    assert first.device.parent_uuid == board.device.uuid
    assert first.memory_total_bytes == 40 * GIB
    assert first.memory_used_bytes == 12 * GIB
    assert first.power_watts is None
    assert [
        (p.pid, p.memory_bytes, p.sm_utilization_ratio) for p in first.processes
    ] == [(900, 11 * GIB, None)]
    assert samples["0/gi2/ci0"].processes == ()


def test_a_driver_reload_shows_as_a_counter_reset(
    backend_for: Callable[[Scenario], Backend],
) -> None:
    scenario = Scenario(gpus=(_gpu(0),))
    backend = backend_for(scenario)
    source = NvmlSource(backend.nvml)
    (before,) = source.sample()
    backend.update(replace(scenario, gpus=(replace(scenario.gpus[0], energy_mj=5),)))
    (after,) = source.sample()
    assert before.energy_joules == pytest.approx(9000.123)
    assert after.energy_joules == pytest.approx(0.005)


def test_the_deprecated_pynvml_package_is_named_with_its_fix(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    versions = {"nvidia-ml-py": "13.615.71", "pynvml": "11.5.0"}

    def version(name: str) -> str:
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert load_pynvml() is pynvml
    (record,) = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert "11.5.0" in record.getMessage()
    assert "pip uninstall -y pynvml" in record.getMessage()

    del versions["nvidia-ml-py"]
    with pytest.raises(NvmlUnavailable, match="nvidia-ml-py is not installed"):
        load_pynvml()
