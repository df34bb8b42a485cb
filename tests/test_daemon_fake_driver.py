"""``gpumeter run`` as a subprocess, with the fake C driver on LD_LIBRARY_PATH."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gpumeter.sim import Scenario, ScenarioGpu, ScenarioProcess
from tests.fake_nvml.conftest_plugin import FakeNvml
from tests.promtool import check_metrics
from tests.running import Gpumeter, Series, base_env, free_port, get, series, wait_for

pytestmark = pytest.mark.slow

GIB = 2**30
PROCESSES_PER_GPU = 16


def _scenario() -> Scenario:
    gpus = []
    for index in range(2):
        processes = tuple(
            ScenarioProcess(
                pid=200_000 + 100 * index + n,
                memory_bytes=(n + 1) * 256 * 2**20,
                sm_percent=(5 * n + index) % 101,
            )
            for n in range(PROCESSES_PER_GPU)
        )
        gpus.append(
            ScenarioGpu(
                uuid=f"GPU-{index}0000000-aaaa-bbbb-cccc-dddddddddddd",
                name="NVIDIA H200",
                power_mw=412_345 + index * 1000,
                energy_mj=987_654_321 + index,
                integrate_energy=False,
                gpu_util_percent=93 - index,
                memory_total_bytes=150_754_820_096,
                memory_used_bytes=(60 + index) * GIB,
                temperature_c=67 + index,
                power_limit_mw=700_000,
                processes=processes,
            )
        )
    return Scenario(gpus=tuple(gpus), driver_version="570.86.15")


@pytest.fixture
def daemon(
    fake_nvml: FakeNvml, tmp_path: Path
) -> Iterator[tuple[Gpumeter, str, FakeNvml]]:
    fake_nvml.load(_scenario())
    port = free_port()
    env = fake_nvml.env(base_env())
    env["GPUMETER_SAMPLING__GPU_INTERVAL_SECONDS"] = "0.2"
    env["GPUMETER_PROCESSES__PROC_ROOT"] = str(tmp_path / "no-proc")
    config = tmp_path / "gpumeter.toml"
    config.write_text('log_level = "info"\n')
    process = Gpumeter(
        ["run", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
        env,
        tmp_path,
    )
    try:
        yield process, f"http://127.0.0.1:{port}", fake_nvml
    finally:
        process.stop()


def _scrape(base: str) -> Series:
    status, body = get(f"{base}/metrics")
    assert status == 200
    return series(body)


def _value(scrape: Series, metric: str, **labels: str) -> float | None:
    return scrape.get((metric, tuple(sorted(labels.items()))))


def _process_utilization_settled(base: str) -> Series | None:
    # The first tick averages whatever the driver buffered; from the second on each
    # process's utilization is exactly its samples' value.
    scrape = _scrape(base)
    expected = {
        str(p.pid): p.sm_percent / 100 for g in _scenario().gpus for p in g.processes
    }
    seen = {
        dict(labels)["pid"]: value
        for (name, labels), value in scrape.items()
        if name == "gpumeter_process_gpu_utilization_ratio"
    }
    return scrape if seen == expected else None


def test_exports_exactly_the_scenario_in_base_units(
    daemon: tuple[Gpumeter, str, FakeNvml],
) -> None:
    process, base, _ = daemon
    scrape = wait_for(
        lambda: _process_utilization_settled(base), 15, "per-process utilization"
    )
    scenario = _scenario()
    for index, gpu in enumerate(scenario.gpus):
        label = str(index)
        assert _value(scrape, "gpumeter_gpu_up", gpu=label) == 1
        info = {"gpu": label, "uuid": gpu.uuid, "name": gpu.name, "driver": "570.86.15"}
        assert _value(scrape, "gpumeter_gpu_info", **info) == 1
        assert _value(scrape, "gpumeter_gpu_power_watts", gpu=label) == pytest.approx(
            gpu.power_mw / 1000, abs=1e-9
        )
        energy = _value(scrape, "gpumeter_gpu_energy_joules_total", gpu=label)
        assert energy == pytest.approx(gpu.energy_mj / 1000, abs=1e-9)
        utilization = _value(scrape, "gpumeter_gpu_utilization_ratio", gpu=label)
        assert utilization == pytest.approx(gpu.gpu_util_percent / 100, abs=1e-12)
        used = _value(scrape, "gpumeter_gpu_memory_used_bytes", gpu=label)
        assert used == gpu.memory_used_bytes
        total = _value(scrape, "gpumeter_gpu_memory_total_bytes", gpu=label)
        assert total == gpu.memory_total_bytes
        temperature = _value(scrape, "gpumeter_gpu_temperature_celsius", gpu=label)
        assert temperature == gpu.temperature_c
        limit = _value(scrape, "gpumeter_gpu_power_limit_watts", gpu=label)
        assert limit == pytest.approx(gpu.power_limit_mw / 1000, abs=1e-9)
        for p in gpu.processes:
            labels = {
                "gpu": label,
                "pid": str(p.pid),
                "command": "",
                "container": "",
                "pod": "",
                "namespace": "",
            }
            memory = _value(scrape, "gpumeter_process_gpu_memory_bytes", **labels)
            assert memory == p.memory_bytes
    processes = [k for k in scrape if k[0] == "gpumeter_process_gpu_memory_bytes"]
    assert len(processes) == 2 * PROCESSES_PER_GPU
    assert _value(scrape, "gpumeter_nvml_up") == 1
    assert not [k for k in scrape if k[0] == "gpumeter_nvml_errors_total"]
    assert "NVML initialized: driver 570.86.15, 2 GPU(s)" in process.log()


def test_a_lost_gpu_turns_only_its_up_to_zero(
    daemon: tuple[Gpumeter, str, FakeNvml],
) -> None:
    process, base, fake = daemon
    wait_for(lambda: _process_utilization_settled(base), 15, "the first ticks")
    scenario = _scenario()
    lost = replace(scenario.gpus[1], lost=True)
    fake.update(replace(scenario, gpus=(scenario.gpus[0], lost)))

    def gpu1_down() -> Series | None:
        scrape = _scrape(base)
        return scrape if _value(scrape, "gpumeter_gpu_up", gpu="1") == 0 else None

    scrape = wait_for(gpu1_down, 10, "gpu 1 to go down")
    assert _value(scrape, "gpumeter_gpu_up", gpu="0") == 1
    assert _value(scrape, "gpumeter_gpu_power_watts", gpu="0") == pytest.approx(412.345)
    assert _value(scrape, "gpumeter_gpu_power_watts", gpu="1") is None
    assert _value(scrape, "gpumeter_nvml_up") == 1
    pids = {
        dict(labels)["pid"]
        for name, labels in scrape
        if name == "gpumeter_process_gpu_memory_bytes"
    }
    assert pids == {str(p.pid) for p in scenario.gpus[0].processes}
    lost_calls = [
        labels
        for name, labels in scrape
        if name == "gpumeter_nvml_errors_total" and ("gpu", "1") in labels
    ]
    assert lost_calls
    assert all(("error", "gpu_lost") in labels for labels in lost_calls)
    status, _ = get(f"{base}/healthz")
    assert status == 200
    assert check_metrics(get(f"{base}/metrics")[1]) == []

    fake.update(scenario)

    def gpu1_back() -> Series | None:
        scrape = _scrape(base)
        return scrape if _value(scrape, "gpumeter_gpu_up", gpu="1") == 1 else None

    wait_for(gpu1_back, 10, "gpu 1 to come back")
    assert process.process.poll() is None
    log = process.log()
    assert log.count("is down") == 1
    assert process.stop() == 0
    assert "gpumeter stopped" in process.log()


def test_without_a_driver_it_serves_and_retries(
    fake_nvml: FakeNvml, tmp_path: Path
) -> None:
    scenario = _scenario()
    fake_nvml.load(replace(scenario, init_error=9))
    port = free_port()
    env = fake_nvml.env(base_env())
    env["GPUMETER_NVML__RETRY_INITIAL_SECONDS"] = "0.2"
    env["GPUMETER_NVML__RETRY_MAX_SECONDS"] = "0.4"
    env["GPUMETER_SAMPLING__GPU_INTERVAL_SECONDS"] = "0.2"
    process = Gpumeter(["run", "--listen", f"127.0.0.1:{port}"], env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        scrape = wait_for(lambda: _scrape(base), 10, "the first scrape")
        assert _value(scrape, "gpumeter_nvml_up") == 0
        assert not [k for k in scrape if k[0] == "gpumeter_gpu_up"]
        assert check_metrics(get(f"{base}/metrics")[1]) == []
        wait_for(lambda: "NVML unavailable" in process.log() or None, 5, "the error")

        fake_nvml.update(scenario)

        def up() -> Series | None:
            scrape = _scrape(base)
            return scrape if _value(scrape, "gpumeter_nvml_up") == 1 else None

        scrape = wait_for(up, 10, "NVML to come up")
        assert _value(scrape, "gpumeter_gpu_up", gpu="1") == 1
    finally:
        assert process.stop() == 0
    log = process.log()
    # One line for the outage, not one per attempt.
    assert log.count("NVML unavailable") == 1
    assert "NVML is back" in log
