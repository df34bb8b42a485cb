"""The daemon: wires the sources, the snapshot and the exporter to a scheduler."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Protocol

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from gpumeter.accounting.attribution import Attributor, IdleBaseline
from gpumeter.accounting.books import Books
from gpumeter.accounting.pricing import Pricing
from gpumeter.clock import Clock, SystemClock
from gpumeter.config import Settings, parse_listen
from gpumeter.engines.discovery import ServerCandidate, ServerFinder
from gpumeter.engines.records import EngineStatus, EngineTarget
from gpumeter.engines.scrape import Scraper
from gpumeter.engines.source import EngineSource
from gpumeter.errors import ListenError
from gpumeter.export import MetricsServer, SnapshotCollector
from gpumeter.gpus import GpuSample, NvmlSource
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
        engine_targets: engines to read besides the configured ones.
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
        engine_targets: Iterable[EngineTarget] = (),
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
        self._engine_targets = [
            EngineTarget.from_url(t.url, name=t.name, kind=t.kind)
            for t in settings.engines.targets
        ]
        self._engine_targets.extend(engine_targets)
        self._engines: EngineSource | None = None
        self._engine_statuses: tuple[EngineStatus, ...] = ()
        self._finder = (
            ServerFinder(proc_root=settings.processes.proc_root)
            if settings.engines.discovery
            else None
        )
        self._start_times = ProcessResolver(settings.processes.proc_root)
        attribution = settings.attribution
        self._idle = IdleBaseline(attribution.idle_watts)
        self._attributor = Attributor(self._idle, attribution.idle_policy)
        # The books are only touched from the NVML thread; readers get copies.
        self._books = Books(
            Pricing(settings.pricing),
            window_s=attribution.window_seconds,
            prefill_weight=attribution.prefill_weight,
        )
        # NVML calls block and can hang on a failing GPU: one thread of their own
        # keeps them off the event loop that serves /metrics.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gpumeter-nvml")
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(self.snapshot))
        self.server = MetricsServer(self.registry, self.health)

    def add_engine_target(self, target: EngineTarget) -> None:
        """Adds an engine to read; only before :meth:`run`."""
        if self._engines is not None:
            raise RuntimeError("engines are fixed once the daemon runs")
        self._engine_targets.append(target)

    def set_engine_pids(self, name: str, pids: frozenset[int]) -> None:
        """Tells which GPU processes a configured engine owns now."""
        if self._engines is not None:
            self._engines.set_pids(name, pids)

    def snapshot(self) -> NodeSnapshot:
        """The latest view of the node: the last GPU tick and the last engine tick."""
        engines = self._engines
        if engines is None:
            return self._snapshot
        return replace(
            self._snapshot,
            engines=engines.engines,
            scrape_errors=dict(engines.errors),
        )

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
        intervals = self._attributor.update(samples)
        engines = self._engine_statuses
        self._books.book_intervals(intervals, processes, engines)
        snap = NodeSnapshot(
            gpus=samples,
            processes=processes,
            nvml_up=self._gpus.up,
            driver_version=self._gpus.driver_version,
            nvml_errors=dict(self._gpus.errors),
            tick_monotonic_s=self._clock.monotonic(),
            books=self._books.view(self._clock.time()),
            idle_watts=self._idle_watts(samples),
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
        engines = self.settings.engines
        session = aiohttp.ClientSession()
        self._engines = EngineSource(
            Scraper(
                session,
                connect_timeout_s=engines.connect_timeout_seconds,
                total_timeout_s=engines.timeout_seconds,
                max_body_bytes=engines.max_body_bytes,
                concurrency=engines.concurrency,
            ),
            self._engine_targets,
            self._clock,
        )
        try:
            # The first tick runs before the scheduler starts, so /metrics has data
            # from the first scrape on.
            await self._tick_in_executor()
            period = self.settings.sampling.gpu_interval_seconds
            _every(scheduler, "gpus", period, self._tick_in_executor)
            if self._engine_targets or self._finder is not None:
                _every(
                    scheduler,
                    "engines",
                    self.settings.engines.interval_seconds,
                    self._engine_tick,
                    first=datetime.now(timezone.utc),
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
            await session.close()
            await loop.run_in_executor(self._executor, self._gpus.close)
            self._executor.shutdown(wait=False)
            logger.info("gpumeter stopped")

    def _idle_watts(self, samples: Iterable[GpuSample]) -> dict[str, float]:
        watts: dict[str, float] = {}
        for sample in samples:
            device = sample.device
            if device.parent_uuid is None:
                value = self._idle.watts(device.uuid, device.label)
                if value is not None:
                    watts[device.label] = value
        return watts

    async def _engine_tick(self) -> None:
        """Discovers engines among the GPU processes' ancestors, then reads them all."""
        engines = self._engines
        if engines is None:
            return
        try:
            if self._finder is not None:
                pids = {p.pid for s in self._snapshot.gpus for p in s.processes}
                loop = asyncio.get_running_loop()
                candidates, started = await loop.run_in_executor(
                    self._executor, self._discover, pids
                )
                await engines.adopt(candidates, started)
            statuses = await engines.scrape()
            # Published whole for the NVML thread, which books against it.
            self._engine_statuses = statuses
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._books.book_tokens, statuses, self._clock.time()
            )
        except Exception:  # the daemon outlives any bug in one tick
            logger.exception("engine tick failed")

    def _discover(
        self, pids: set[int]
    ) -> tuple[list[ServerCandidate], dict[int, float]]:
        assert self._finder is not None
        candidates = self._finder.find(pids)
        started: dict[int, float] = {}
        for candidate in candidates:
            info = self._start_times.lookup(candidate.server_pid)
            start = None if info is None else self._start_times.started_at(info)
            if start is not None:
                started[candidate.server_pid] = start
        self._start_times.forget_except(started)
        return candidates, started

    async def _tick_in_executor(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self.tick)
        except Exception:  # the daemon outlives any bug in one tick
            logger.exception("GPU tick failed")


def _every(
    scheduler: AsyncIOScheduler,
    name: str,
    seconds: float,
    job: Callable[[], Awaitable[None]],
    first: datetime | None = None,
) -> None:
    """Runs a tick at a fixed rate; a late run is merged, never queued behind.

    The first run is one period after the start, or at ``first`` when given.
    """
    # apscheduler reads an explicit next_run_time=None as "paused": pass it only
    # when there is a time to pass.
    extra: dict[str, Any] = {} if first is None else {"next_run_time": first}
    scheduler.add_job(
        job,
        "interval",
        seconds=seconds,
        id=name,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(seconds * 2)),
        **extra,
    )
