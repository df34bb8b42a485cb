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

from gpumeter.accounting.books import TokenPrice
from gpumeter.clock import Clock, SystemClock
from gpumeter.config import Settings
from gpumeter.daemon import Daemon
from gpumeter.engines.records import EngineTarget
from gpumeter.processes import ProcessInfo
from gpumeter.sim import (
    DemoWorkload,
    SimNode,
    SimProcess,
    SimulatedNvml,
    build_demo_node,
)
from gpumeter.sim.engines import SimEngines
from gpumeter.snapshot import NodeSnapshot

__all__ = ["Demo", "SimProcessLookup"]

_WORKLOAD_PERIOD_S = 0.25
_TABLE_PERIOD_S = 2.0
_GIB = 2**30
_GPU_ROW = "{:<4} {:<24} {:>8} {:>12} {:>7} {:>8}"
_PROCESS_ROW = "{:<4} {:>7} {:<16} {:>6} {:>8}"
_ENGINE_ROW = "{:<18} {:>9} {:>9} {:>7} {:>7} {:>10} {:>9} {:>9}"


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
        self.engines = SimEngines(self.workload, self._clock)
        settings = settings.model_copy(
            update={
                "engines": settings.engines.model_copy(
                    # The simulated PIDs have no /proc entries to discover from.
                    update={"discovery": False, "interval_seconds": 1.0}
                )
            }
        )
        self._previous_counts: dict[tuple[str, str], tuple[float, float, float]] = {}
        self._rates_at: float | None = None
        self.daemon = Daemon(
            settings,
            nvml=SimulatedNvml(self.node),
            clock=self._clock,
            processes=SimProcessLookup(self.node),
            jobs=[("workload", _WORKLOAD_PERIOD_S, self._advance)],
        )

    def _advance(self) -> None:
        now = self._clock.monotonic()
        # Tokens follow the same loads as power: advance both to the same moment.
        self.workload.advance(now)
        self.engines.advance(now)
        for name, truth in self.engines.truth().items():
            pids = frozenset() if truth.pid is None else frozenset({truth.pid})
            self.daemon.set_engine_pids(name, pids)

    async def run(self, stop: asyncio.Event) -> None:
        """Serves the simulated engines, runs the daemon and shows the table."""
        await self.engines.start()
        try:
            for name, server in self.engines.servers.items():
                kind = self.engines.engines[name].truth().engine
                self.daemon.add_engine_target(
                    EngineTarget.from_url(server.url, name=name, kind=kind)
                )
            await asyncio.gather(self.daemon.run(stop), self.show(stop))
        finally:
            await self.engines.stop()

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
        lines += ["", *self._engine_rows(snapshot)]
        return "\n".join(lines) + "\n\n"

    def _engine_rows(self, snapshot: NodeSnapshot) -> list[str]:
        """A row per engine and model: rates, power, and cost per token.

        Token rates and watts are since the previous table; joules per token and
        money per million tokens are gpumeter's, over its sliding window. The
        ``true J/tok`` column is the simulation's own figure since it started:
        the engine's processes' exact active energy plus their memory share of
        idle energy, over the tokens the engines really served.
        """
        now = self._clock.monotonic()
        elapsed = now - self._rates_at if self._rates_at is not None else None
        books = snapshot.books
        currency = books.currency if books is not None else ""
        rows = [
            _ENGINE_ROW.format(
                "engine",
                "in tok/s",
                "out tok/s",
                "watts",
                "J/tok",
                "true J/tok",
                f"{currency}/M in",
                f"{currency}/M out",
            )
        ]
        prices = {
            (p.engine, p.model, p.token_kind): p
            for p in (books.token_prices if books is not None else ())
        }
        counted: dict[tuple[str, str], tuple[float, float, float]] = {}
        for status in snapshot.engines:
            name = status.target.name
            for model, totals in sorted(status.totals.items()):
                joules = 0.0
                if books is not None:
                    joules = sum(
                        j
                        for (workload, m, _), j in books.energy_joules.items()
                        if workload == name and m == model
                    )
                counts = (
                    totals.prompt_tokens or 0.0,
                    totals.generation_tokens or 0.0,
                    joules,
                )
                before = self._previous_counts.get((name, model))
                counted[(name, model)] = counts
                rates: tuple[float | None, ...] = (None, None, None)
                if before is not None and elapsed:
                    rates = tuple(
                        (a - b) / elapsed for a, b in zip(counts, before, strict=True)
                    )
                every = prices.get((name, model, "all"))
                rows.append(
                    _ENGINE_ROW.format(
                        name,
                        _number(rates[0], 0),
                        _number(rates[1], 0),
                        _number(rates[2], 0),
                        _number(
                            None if every is None else every.energy_per_token_joules, 3
                        ),
                        _number(self._true_joules_per_token(name), 3),
                        _number(_price(prices, name, model, "prompt"), 4),
                        _number(_price(prices, name, model, "generation"), 4),
                    )
                )
        self._previous_counts, self._rates_at = counted, now
        return rows

    def _true_joules_per_token(self, engine: str) -> float | None:
        truth = self.engines.truth().get(engine)
        if truth is None or truth.pid is None:
            return None
        tokens = truth.since_start.prompt_tokens + truth.since_start.generation_tokens
        for gpu in self.node.gpus:
            resident = {p.pid: p.memory_bytes for p in gpu.processes}
            if truth.pid in resident and tokens:
                real = gpu.truth
                share = resident[truth.pid] / (sum(resident.values()) or 1)
                active = real.active_joules_by_pid.get(truth.pid, 0.0)
                return (active + real.idle_joules * share) / tokens
        return None


def _price(
    prices: dict[tuple[str, str, str], TokenPrice], engine: str, model: str, kind: str
) -> float | None:
    price = prices.get((engine, model, kind))
    return None if price is None else price.cost_per_million


def _number(value: float | None, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:,.{digits}f}"
