"""``gpumeter demo``: the real daemon on a simulated node, with a live table."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shlex
import sys
import uuid
from collections.abc import Iterable
from typing import TextIO

from gpumeter.clock import Clock, SystemClock
from gpumeter.config import Settings
from gpumeter.daemon import Daemon
from gpumeter.processes import ProcessInfo
from gpumeter.sim import (
    DemoWorkload,
    SimNode,
    SimProcess,
    SimulatedNvml,
    build_demo_node,
)
from gpumeter.snapshot import NodeSnapshot

__all__ = ["Demo", "SimProcessLookup"]

_WORKLOAD_PERIOD_S = 0.25
_TABLE_PERIOD_S = 2.0
_GIB = 2**30
_GPU_ROW = "{:<4} {:<24} {:>8} {:>12} {:>7} {:>8}"
_PROCESS_ROW = "{:<4} {:>7} {:<16} {:>6} {:>8}"


class SimProcessLookup:
    """Resolves the simulated node's PIDs as ``/proc`` would resolve real ones."""

    def __init__(self, node: SimNode) -> None:
        self._node = node

    def lookup(self, pid: int) -> ProcessInfo | None:
        """The simulated process's identity, or None if it is gone."""
        for gpu in self._node.gpus:
            for process in gpu.processes:
                if process.pid == pid:
                    return _process_info(process)
        return None

    def forget_except(self, live_pids: Iterable[int]) -> None:
        """Nothing is cached."""


def _process_info(process: SimProcess) -> ProcessInfo:
    argv = tuple(shlex.split(process.command))
    container_id = (
        hashlib.sha256(process.container.encode()).hexdigest()
        if process.container
        else None
    )
    pod_uid = (
        str(uuid.uuid5(uuid.NAMESPACE_URL, f"{process.namespace}/{process.pod}"))
        if process.pod
        else None
    )
    return ProcessInfo(
        pid=process.pid,
        ppid=1,
        start_ticks=process.pid,
        command=(argv[0].rsplit("/", 1)[-1] if argv else "")[:15],
        cmdline=argv,
        uid=1000,
        user="inference",
        container_id=container_id,
        container_runtime="containerd" if container_id else None,
        pod_uid=pod_uid,
        systemd_unit=None,
        cgroup_path="",
    )


class Demo:
    """A simulated node of three H100s, a workload, and the daemon reading them.

    Args:
        settings: the daemon's settings (the listen address above all).
        clock: the clock for the simulation and the daemon.
        out: where the live table goes.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        out: TextIO | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._out = out or sys.stdout
        self.node = build_demo_node(self._clock)
        self.workload = DemoWorkload(self.node)
        self.daemon = Daemon(
            settings,
            nvml=SimulatedNvml(self.node),
            clock=self._clock,
            processes=SimProcessLookup(self.node),
            jobs=[("workload", _WORKLOAD_PERIOD_S, self._advance)],
        )

    def _advance(self) -> None:
        self.workload.advance(self._clock.monotonic())

    async def show(self, stop: asyncio.Event) -> None:
        """Prints the table every two seconds until ``stop`` is set."""
        clear = self._out.isatty()
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), _TABLE_PERIOD_S)
            snapshot = self.daemon.snapshot()
            if not snapshot.gpus:
                continue
            if clear:
                self._out.write("\x1b[H\x1b[2J")
            self._out.write(self.table(snapshot))
            self._out.flush()

    def table(self, snapshot: NodeSnapshot) -> str:
        """Renders one snapshot: a row per GPU, then a row per process."""
        host = self.daemon.settings.listen.rsplit(":", 1)[0]
        lines = [
            "gpumeter demo: a simulated node; metrics on "
            f"http://{host}:{self.daemon.server.port}/metrics",
            "",
            _GPU_ROW.format("GPU", "name", "power W", "energy kJ", "util %", "mem GiB"),
        ]
        for s in snapshot.gpus:
            lines.append(
                _GPU_ROW.format(
                    s.device.label,
                    s.device.name[:24],
                    _number(s.power_watts, 1),
                    _number(s.energy_joules, 1, scale=1e-3),
                    _number(s.utilization_ratio, 0, scale=100),
                    _number(s.memory_used_bytes, 1, scale=1 / _GIB),
                )
            )
        lines += ["", _PROCESS_ROW.format("GPU", "pid", "command", "SM %", "mem GiB")]
        for s in snapshot.gpus:
            for p in s.processes:
                info = snapshot.processes.get(p.pid)
                lines.append(
                    _PROCESS_ROW.format(
                        s.device.label,
                        p.pid,
                        info.command if info else "?",
                        _number(p.sm_utilization_ratio, 0, scale=100),
                        _number(p.memory_bytes, 1, scale=1 / _GIB),
                    )
                )
        return "\n".join(lines) + "\n\n"


def _number(value: float | None, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:,.{digits}f}"
