"""The daemon: wires the sources, the snapshot and the exporter to a scheduler."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from gpumeter.clock import Clock, SystemClock
from gpumeter.config import Settings, parse_listen
from gpumeter.errors import ListenError
from gpumeter.export import MetricsServer, SnapshotCollector
from gpumeter.gpus import NvmlSource
from gpumeter.processes import ProcessInfo, ProcessResolver
from gpumeter.snapshot import NodeSnapshot

__all__ = ["Daemon", "ProcessLookup"]

logger = logging.getLogger(__name__)

# A tick that has not completed for this many periods makes /healthz fail.
_STALL_PERIODS = 5


class ProcessLookup(Protocol):
    """What the daemon needs to know of processes (``ProcessResolver`` or a fake)."""

    def lookup(self, pid: int) -> ProcessInfo | None:
        """Information on a live process, or None if it is gone."""
        ...

    def forget_except(self, live_pids: Iterable[int]) -> None:
        """Drops what is remembered of processes not in ``live_pids``."""
        ...


class Daemon:
    """One gpumeter agent: samples on fixed rates and serves the results.

    Args:
        settings: the effective configuration.
        nvml: a pynvml-like module; None loads the real pynvml.
        clock: the clock for intervals and stamps.
        processes: resolves PIDs; None reads ``settings.processes.proc_root``.
        registry: the Prometheus registry to serve; None makes a new one.
        jobs: extra (name, period in seconds, callable) jobs to schedule in the
            daemon's loop, such as a simulation's workload.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        nvml: Any = None,
        clock: Clock | None = None,
        processes: ProcessLookup | None = None,
        registry: CollectorRegistry | None = None,
        jobs: Iterable[tuple[str, float, Callable[[], None]]] = (),
    ) -> None:
        self.settings = settings
        self._clock = clock or SystemClock()
        self._gpus = NvmlSource(
            nvml,
            self._clock,
            retry_initial_s=settings.nvml.retry_initial_seconds,
            retry_max_s=settings.nvml.retry_max_seconds,
        )
        self._processes = processes or ProcessResolver(settings.processes.proc_root)
        self._snapshot = NodeSnapshot()
        self._started_monotonic = self._clock.monotonic()
        self._jobs = list(jobs)
        # NVML calls block and can hang on a failing GPU: one thread of their own
        # keeps them off the event loop that serves /metrics.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gpumeter-nvml")
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(self.snapshot))
        self.server = MetricsServer(self.registry, self.health)

    def snapshot(self) -> NodeSnapshot:
        """The latest consistent view of the node."""
        return self._snapshot

    def health(self) -> tuple[bool, Mapping[str, Any]]:
        """Healthy while ticks keep completing; NVML being down is reported only."""
        snap = self._snapshot
        now = self._clock.monotonic()
        last = snap.tick_monotonic_s
        age = now - (last if last is not None else self._started_monotonic)
        period = self.settings.sampling.gpu_interval_seconds
        healthy = age <= _STALL_PERIODS * period + 5.0
        return healthy, {
            "nvml_up": snap.nvml_up,
            "gpus": len(snap.gpus),
            "last_tick_age_seconds": round(age, 3),
        }

    def tick(self) -> NodeSnapshot:
        """Samples every GPU and resolves their processes; publishes a snapshot."""
        samples = self._gpus.sample()
        pids = {p.pid for s in samples for p in s.processes}
        processes: dict[int, ProcessInfo] = {}
        for pid in pids:
            info = self._processes.lookup(pid)
            if info is not None:
                processes[pid] = info
        self._processes.forget_except(pids)
        snap = NodeSnapshot(
            gpus=samples,
            processes=processes,
            nvml_up=self._gpus.up,
            driver_version=self._gpus.driver_version,
            nvml_errors=dict(self._gpus.errors),
            tick_monotonic_s=self._clock.monotonic(),
        )
        self._snapshot = snap
        return snap

    async def run(self, stop: asyncio.Event) -> None:
        """Serves and samples until ``stop`` is set, then shuts down cleanly.

        Raises:
            ListenError: the listen address cannot be bound.
        """
        host, port = parse_listen(self.settings.listen)
        loop = asyncio.get_running_loop()
        try:
            await self.server.start(host, port)
        except OSError as exc:
            raise ListenError(
                f"cannot listen on {self.settings.listen}: {exc}"
            ) from exc
        scheduler = AsyncIOScheduler(event_loop=loop)
        try:
            # The first tick runs before the scheduler starts, so /metrics has data
            # from the first scrape on.
            await self._tick_in_executor()
            period = self.settings.sampling.gpu_interval_seconds
            scheduler.add_job(
                self._tick_in_executor,
                "interval",
                seconds=period,
                id="gpus",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(period * 2)),
            )
            for name, seconds, job in self._jobs:
                scheduler.add_job(job, "interval", seconds=seconds, id=name)
            scheduler.start()
            logger.info(
                "gpumeter running: GPU tick every %.3g s, %d GPU(s) seen",
                period,
                len(self._snapshot.gpus),
            )
            await stop.wait()
        finally:
            logger.info("gpumeter stopping")
            if scheduler.running:
                scheduler.shutdown(wait=False)
            await self.server.stop()
            await loop.run_in_executor(self._executor, self._gpus.close)
            self._executor.shutdown(wait=False)
            logger.info("gpumeter stopped")

    async def _tick_in_executor(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self.tick)
        except Exception:  # the daemon outlives any bug in one tick
            logger.exception("GPU tick failed")
