"""On a machine with an NVIDIA GPU: the daemon's energy against the driver's counter.

Method. ``gpumeter run`` samples the real driver once a second. This script scrapes
it once a second while a matrix-product load (PyTorch, bf16) runs on GPU 0 for the
middle third of the window, idle before and after, and at each scrape also reads
NVML's total-energy counter itself. It reports, for GPU 0:

- the energy the daemon exported over the window against the counter read directly
  (they differ only by the up-to-one-tick lag at each end);
- one-second power times time, summed, against the counter's energy: how far integrating
  the exported power would be from the counter on this GPU;
- the daemon's own CPU time per second of wall time.

Usage: ``python3 bench/real_gpu_energy.py [--seconds 60]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pynvml
from prometheus_client.parser import text_string_to_metric_families

LOAD = """
import sys, time, torch
end = time.monotonic() + float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
while time.monotonic() < end:
    for _ in range(20):
        a = (a @ a).clamp_(-1, 1)
    torch.cuda.synchronize()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("gpu") == "0" and s.name in (
                "gpumeter_gpu_power_watts",
                "gpumeter_gpu_energy_joules_total",
            ):
                values[s.name] = s.value
    return values


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    """Runs the check and prints its report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    seconds = parser.parse_args().seconds
    port = _free_port()
    env = {**os.environ, "GPUMETER_SAMPLING__GPU_INTERVAL_SECONDS": "1"}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "gpumeter", "run", "--listen", f"127.0.0.1:{port}"],
        env=env,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    name = pynvml.nvmlDeviceGetName(handle)
    try:
        for _ in range(50):
            try:
                if "gpumeter_gpu_energy_joules_total" in _scrape(url):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        rows = []
        load = None
        start = time.monotonic()
        cpu_start = _cpu_seconds(daemon.pid)
        while (now := time.monotonic()) - start < seconds:
            if load is None and now - start >= seconds / 3:
                load = subprocess.Popen([sys.executable, "-c", LOAD, str(seconds / 3)])
            scraped = _scrape(url)
            counter_j = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3
            rows.append((now, scraped, counter_j))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        cpu_s = _cpu_seconds(daemon.pid) - cpu_start
        wall_s = rows[-1][0] - rows[0][0]
        if load is not None:
            load.wait(timeout=seconds)
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
        pynvml.nvmlShutdown()

    exported_j = (
        rows[-1][1]["gpumeter_gpu_energy_joules_total"]
        - rows[0][1]["gpumeter_gpu_energy_joules_total"]
    )
    counter_j = rows[-1][2] - rows[0][2]
    power_time_j = sum(
        row[1]["gpumeter_gpu_power_watts"] * (row[0] - before[0])
        for before, row in itertools.pairwise(rows)
    )
    report = {
        "gpu": name,
        "window_s": round(wall_s, 2),
        "scrapes": len(rows),
        "counter_energy_j": round(counter_j, 1),
        "exported_energy_j": round(exported_j, 1),
        "exported_vs_counter": round(exported_j / counter_j - 1, 5),
        "power_time_energy_j": round(power_time_j, 1),
        "power_time_vs_counter": round(power_time_j / counter_j - 1, 5),
        "daemon_cpu_fraction": round(cpu_s / wall_s, 5),
        "peak_power_w": max(r[1]["gpumeter_gpu_power_watts"] for r in rows),
        "idle_power_w": min(r[1]["gpumeter_gpu_power_watts"] for r in rows),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
