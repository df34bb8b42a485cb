"""``gpumeter demo`` end to end: served metrics, and energy that matches power."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from gpumeter.config import Settings
from gpumeter.demo import Demo
from gpumeter.sim.demo_node import DEMO_GPU_UUIDS
from tests.promtool import check_metrics
from tests.running import (
    Gpumeter,
    Series,
    base_env,
    free_port,
    get,
    series,
    wait_for,
)

DURATION_S = 20.0


@pytest.mark.slow
def test_demo_energy_grows_by_power_times_time(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = Gpumeter(
        ["demo", "--duration", str(DURATION_S), "--listen", f"127.0.0.1:{port}"],
        base_env(),
        tmp_path,
    )
    ticks: list[tuple[dict[str, float], dict[str, float], dict[str, float]]] = []
    ended = False
    try:
        wait_for(lambda: get(f"{base}/metrics")[0] == 200 or None, 10, "the demo")
        exposition = get(f"{base}/metrics")[1]
        assert check_metrics(exposition) == []
        # Scrape five times per tick so that no tick is missed; keep one reading
        # of each tick, told apart by its time stamp.
        while process.process.poll() is None:
            try:
                exposition = get(f"{base}/metrics")[1]
                scrape = series(exposition)
            except OSError:
                ended = True  # the demo's time is up
                break
            power, energy, stamp = (
                _by_gpu(scrape, "gpumeter_gpu_power_watts"),
                _by_gpu(scrape, "gpumeter_gpu_energy_joules_total"),
                _by_gpu(scrape, "gpumeter_gpu_last_sample_timestamp_seconds"),
            )
            if stamp and (not ticks or stamp != ticks[-1][2]):
                ticks.append((power, energy, stamp))
            time.sleep(0.2)
    finally:
        # A demo that ended by itself must exit 0 without being told to.
        status = process.stop(signal_first=not ended)
    assert status == 0, process.log()
    # By the end every family is populated, cost per token included.
    assert "gpumeter_cost_per_million_tokens{" in exposition
    assert "gpumeter_tokens_total{" in exposition
    assert check_metrics(exposition) == []
    assert len(ticks) >= DURATION_S - 5
    assert set(ticks[0][0]) == set(ticks[0][1]) == {"0", "1", "2"}
    for gpu in ("0", "1", "2"):
        measured_j = ticks[-1][1][gpu] - ticks[0][1][gpu]
        # NVML's power is the average over the last second, so each tick's
        # reading stands for the interval before it (about a second; the exact
        # length comes from the sample's own time stamp).
        estimated_j = sum(
            now[0][gpu] * (now[2][gpu] - before[2][gpu])
            for before, now in itertools.pairwise(ticks)
        )
        assert measured_j > 0
        assert estimated_j == pytest.approx(measured_j, rel=0.01), gpu


def _by_gpu(scrape: Series, metric: str) -> dict[str, float]:
    return {dict(k[1])["gpu"]: v for k, v in scrape.items() if k[0] == metric}


def test_demo_table_names_every_gpu_and_process() -> None:
    demo = Demo(Settings(listen="127.0.0.1:0"))
    snapshot = demo.daemon.tick()
    table = demo.table(snapshot)
    assert table.count("NVIDIA H100 80GB HBM3") == len(DEMO_GPU_UUIDS)
    pids = [p.pid for s in snapshot.gpus for p in s.processes]
    assert pids
    for pid in pids:
        assert f" {pid} " in table
    assert {s.device.uuid for s in snapshot.gpus} == set(DEMO_GPU_UUIDS)
