"""The exporter: families from a snapshot, the HTTP endpoint, promtool's verdict."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpumeter.accounting.books import BooksView, TokenPrice
from gpumeter.export import MetricsServer, SnapshotCollector
from gpumeter.gpus import GpuDevice, GpuSample, ProcessSample
from gpumeter.processes import ProcessInfo
from gpumeter.snapshot import NodeSnapshot
from tests.promtool import check_metrics

GPU0 = GpuDevice(label="0", uuid="GPU-aaaa", name="NVIDIA H100 80GB HBM3", index=0)
GPU1 = GpuDevice(label="1", uuid="GPU-bbbb", name="NVIDIA H100 80GB HBM3", index=1)
POD = "2c9f8a79-5391-454b-88cb-86190881cb96"


def _snapshot() -> NodeSnapshot:
    gpu0 = GpuSample(
        device=GPU0,
        monotonic_s=10.0,
        wall_time_s=1.7e9,
        up=True,
        power_watts=312.5,
        energy_joules=123456.789,
        utilization_ratio=0.87,
        memory_used_bytes=40 * 2**30,
        memory_total_bytes=80 * 2**30,
        temperature_celsius=61.0,
        power_limit_watts=700.0,
        processes=(
            ProcessSample(pid=4242, memory_bytes=30 * 2**30, sm_utilization_ratio=0.6),
            ProcessSample(pid=4343, memory_bytes=None, sm_utilization_ratio=None),
        ),
    )
    gpu1 = GpuSample(device=GPU1, monotonic_s=10.0, wall_time_s=1.7e9, up=False)
    info = ProcessInfo(
        pid=4242,
        ppid=1,
        start_ticks=99,
        command="python3",
        cmdline=("python3", "-m", "vllm.entrypoints.openai.api_server"),
        uid=0,
        user="root",
        container_id="a" * 64,
        container_runtime="containerd",
        pod_uid=POD,
        systemd_unit=None,
        cgroup_path="/kubepods/…",
    )
    return NodeSnapshot(
        gpus=(gpu0, gpu1),
        processes={4242: info},
        nvml_up=True,
        driver_version="550.54.15",
        nvml_errors={("1", "nvmlDeviceGetPowerUsage", "gpu_lost"): 3},
        tick_monotonic_s=10.0,
    )


def _scrape(snapshot: NodeSnapshot) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    return generate_latest(registry).decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_gpu_series_carry_base_units_and_down_gpus_only_say_so() -> None:
    samples = _samples(_scrape(_snapshot()))
    assert samples[("gpumeter_gpu_power_watts", (("gpu", "0"),))] == 312.5
    assert samples[("gpumeter_gpu_energy_joules_total", (("gpu", "0"),))] == 123456.789
    assert samples[("gpumeter_gpu_utilization_ratio", (("gpu", "0"),))] == 0.87
    assert samples[("gpumeter_gpu_memory_total_bytes", (("gpu", "0"),))] == 80 * 2**30
    assert samples[("gpumeter_gpu_up", (("gpu", "0"),))] == 1.0
    assert samples[("gpumeter_gpu_up", (("gpu", "1"),))] == 0.0
    assert ("gpumeter_gpu_power_watts", (("gpu", "1"),)) not in samples
    info = (
        ("driver", "550.54.15"),
        ("gpu", "1"),
        ("name", "NVIDIA H100 80GB HBM3"),
        ("uuid", "GPU-bbbb"),
    )
    assert samples[("gpumeter_gpu_info", info)] == 1.0
    assert samples[("gpumeter_nvml_up", ())] == 1.0
    error = (("call", "nvmlDeviceGetPowerUsage"), ("error", "gpu_lost"), ("gpu", "1"))
    assert samples[("gpumeter_nvml_errors_total", error)] == 3.0


def test_process_series_carry_who_the_process_is() -> None:
    samples = _samples(_scrape(_snapshot()))
    known = (
        ("command", "python3"),
        ("container", "a" * 12),
        ("gpu", "0"),
        ("namespace", ""),
        ("pid", "4242"),
        ("pod", POD),
    )
    assert samples[("gpumeter_process_gpu_memory_bytes", known)] == 30 * 2**30
    assert samples[("gpumeter_process_gpu_utilization_ratio", known)] == 0.6
    unknown = [k for k in samples if ("pid", "4343") in k[1]]
    assert unknown == []  # neither memory nor utilization is known for 4343


def test_vanished_processes_and_gpus_leave_no_series() -> None:
    snapshot = _snapshot()
    registry = CollectorRegistry(auto_describe=False)
    current = [snapshot]
    registry.register(SnapshotCollector(lambda: current[0]))
    assert 'pid="4242"' in generate_latest(registry).decode()
    current[0] = NodeSnapshot(gpus=(snapshot.gpus[1],), nvml_up=True)
    text = generate_latest(registry).decode()
    assert "4242" not in text
    assert 'gpu="0"' not in text


def test_promtool_finds_nothing_to_fix() -> None:
    # promtool flags what breaks the conventions, so a clean verdict means something.
    assert check_metrics("# TYPE up_total counter\nup_total 1\n") != []
    assert check_metrics(_scrape(_snapshot())) == []
    assert check_metrics(_scrape(NodeSnapshot())) == []


async def test_server_serves_metrics_and_health() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(_snapshot))
    healthy = [True]
    server = MetricsServer(registry, lambda: (healthy[0], {"gpus": 2}))
    await server.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                assert "gpumeter_gpu_power_watts" in await response.text()
            accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
            async with session.get(f"{base}/metrics", headers=accept) as response:
                text = await response.text()
                assert text.rstrip().endswith("# EOF")
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok", "gpus": 2}
            healthy[0] = False
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 503
    finally:
        await server.stop()


async def test_a_busy_port_raises_oserror() -> None:
    registry = CollectorRegistry(auto_describe=False)
    first = MetricsServer(registry, lambda: (True, {}))
    await first.start("127.0.0.1", 0)
    try:
        second = MetricsServer(registry, lambda: (True, {}))
        with pytest.raises(OSError, match=r"in use|address"):
            await second.start("127.0.0.1", first.port or 0)
    finally:
        await first.stop()
    await asyncio.sleep(0)


def test_books_are_exported_in_the_configured_currency() -> None:
    books = BooksView(
        currency="EUR",
        energy_joules={("vllm-a", "llama", "0"): 1234.5, ("idle", "", "1"): 10.0},
        cost={
            ("vllm-a", "llama", "energy"): 0.01,
            ("vllm-a", "llama", "hardware"): 0.2,
            ("idle", "", "fixed"): 0.003,
        },
        idle_cost={"1": 0.05},
        gpu_methods={"0": "counter", "1": "power"},
        gpu_basis={"0": "sm", "1": "none"},
        token_prices=(
            TokenPrice("vllm-a", "llama", "prompt", 1000.0, 0.05, 0.1),
            TokenPrice("vllm-a", "llama", "generation", 400.0, 0.5, 1.2),
        ),
    )
    snapshot = NodeSnapshot(books=books, idle_watts={"0": 71.5})
    text = _scrape(snapshot)
    samples = _samples(text)
    energy = (("gpu", "0"), ("model", "llama"), ("workload", "vllm-a"))
    assert samples[("gpumeter_workload_energy_joules_total", energy)] == 1234.5
    cost = (
        ("component", "hardware"),
        ("currency", "EUR"),
        ("model", "llama"),
        ("workload", "vllm-a"),
    )
    assert samples[("gpumeter_cost_total", cost)] == 0.2
    price = (
        ("currency", "EUR"),
        ("engine", "vllm-a"),
        ("model", "llama"),
        ("token_kind", "generation"),
    )
    assert samples[("gpumeter_cost_per_million_tokens", price)] == 0.5
    joules = (("engine", "vllm-a"), ("model", "llama"), ("token_kind", "prompt"))
    assert samples[("gpumeter_energy_per_token_joules", joules)] == 0.1
    assert samples[
        ("gpumeter_gpu_idle_cost_total", (("currency", "EUR"), ("gpu", "1")))
    ]
    method = ("gpumeter_gpu_energy_method_info", (("gpu", "1"), ("method", "power")))
    assert samples[method] == 1
    assert samples[("gpumeter_gpu_idle_power_watts", (("gpu", "0"),))] == 71.5
    assert check_metrics(text) == []
