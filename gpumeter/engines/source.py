"""The engine source: finds inference servers, reads them, and keeps their books."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from gpumeter.clock import Clock, SystemClock
from gpumeter.engines.counters import EngineBooks
from gpumeter.engines.dialects import DIALECTS, Dialect, detect, dialect
from gpumeter.engines.discovery import ServerCandidate
from gpumeter.engines.exposition import Families
from gpumeter.engines.records import (
    EngineStatus,
    EngineTarget,
)
from gpumeter.engines.scrape import Scraper
from gpumeter.errors import ScrapeError

__all__ = ["EngineSource", "EngineStatus", "EngineTarget", "probe"]

logger = logging.getLogger(__name__)

# A discovered port that is not an inference server (a NCCL or ZMQ port of the
# same process) is not probed again for this long.
_NOT_AN_ENGINE_RETRY_S = 300.0
# How long an identity (TGI's /info, llama.cpp's /props) is trusted.
_IDENTITY_TTL_S = 600.0


class _Engine:
    """Mutable state of one target between scrapes."""

    def __init__(self, target: EngineTarget, books: EngineBooks) -> None:
        self.target = target
        self.dialect: Dialect | None = dialect(target.kind) if target.kind else None
        self.metrics_path = target.metrics_path
        self.identity: Any = None
        self.identity_read_at = float("-inf")
        self.books = books
        self.status = EngineStatus(target=target, up=False, kind=target.kind)
        self.failures = 0


async def probe(
    scraper: Scraper,
    base_url: str,
    *,
    metrics_path: str | None = None,
    kind: str | None = None,
) -> tuple[Dialect, str, Families]:
    """Finds where an engine's metrics are and which dialect they speak.

    Args:
        scraper: the HTTP client.
        base_url: the server's scheme, host and port.
        metrics_path: the path to use; None tries each dialect's usual paths.
        kind: the dialect to assume; None detects it.

    Returns:
        The dialect, the metrics path, and the families just read.

    Raises:
        ScrapeError: nothing there could be read or recognized.
    """
    paths = [metrics_path] if metrics_path else _candidate_paths(kind)
    errors: list[ScrapeError] = []
    for path in paths:
        try:
            families = await scraper.families(base_url + path)
        except ScrapeError as exc:
            if exc.reason in ("refused", "timeout"):
                raise  # the server itself is not answering; other paths won't
            errors.append(exc)
            continue
        if kind is not None:
            return dialect(kind), path, families
        found = await _settle(scraper, base_url, detect(families))
        if found is not None:
            return found, path, families
        errors.append(
            ScrapeError(
                "unrecognized", f"{base_url}{path}: no inference server's metrics there"
            )
        )
    # An exposition that no dialect claims says more than a 404 elsewhere.
    errors.sort(key=lambda e: e.reason != "unrecognized")
    raise errors[0]


def _candidate_paths(kind: str | None) -> list[str]:
    dialects = [dialect(kind)] if kind else list(DIALECTS)
    paths: list[str] = []
    for d in dialects:
        for path in d.metrics_paths:
            if path not in paths:
                paths.append(path)
    return paths


async def _settle(
    scraper: Scraper, base_url: str, candidates: list[Dialect]
) -> Dialect | None:
    """Picks one dialect; several claimants are told apart by their own endpoints."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    for candidate in candidates:
        if candidate.confirm_path is None:
            continue
        try:
            body = await scraper.json(base_url + candidate.confirm_path)
        except ScrapeError:
            continue
        if candidate.confirms(body):
            return candidate
    return candidates[0]


class EngineSource:
    """Reads every known engine once per call of :meth:`scrape`.

    Configured targets are always read; discovered ones come and go with the GPU
    processes that own them. A failing engine is marked down with a reason and
    retried on every scrape; a change of state is logged once.

    Args:
        scraper: the HTTP client.
        targets: configured engines.
        clock: for identity expiry and the watch start.
    """

    def __init__(
        self,
        scraper: Scraper,
        targets: Iterable[EngineTarget] = (),
        clock: Clock | None = None,
    ) -> None:
        self._scraper = scraper
        self._clock = clock or SystemClock()
        self._watch_start = self._clock.time()
        # Books outlive the server process: a server that comes back under the
        # same name (a restart, a new PID) carries on its totals.
        self._books: dict[str, EngineBooks] = {}
        self._configured = {t.name: _Engine(t, self._books_of(t.name)) for t in targets}
        self._discovered: dict[tuple[int, str, int], _Engine] = {}
        self._not_engines: dict[tuple[int, str, int], float] = {}
        self.errors: Counter[tuple[str, str]] = Counter()
        """Failed scrapes, by (engine, reason)."""

    def set_pids(self, name: str, pids: frozenset[int]) -> None:
        """Tells which GPU processes a configured engine owns now."""
        engine = self._configured.get(name)
        if engine is not None:
            engine.target = _with_pids(engine.target, pids)
            engine.status = _replace_target(engine.status, engine.target)

    def _books_of(self, name: str) -> EngineBooks:
        books = self._books.get(name)
        if books is None:
            books = self._books[name] = EngineBooks(self._watch_start)
        return books

    @property
    def engines(self) -> tuple[EngineStatus, ...]:
        """The status of every engine, configured first."""
        return tuple(e.status for e in self._all())

    def _all(self) -> list[_Engine]:
        return [*self._configured.values(), *self._discovered.values()]

    async def scrape(self) -> tuple[EngineStatus, ...]:
        """Reads every engine concurrently (the scraper bounds concurrency)."""
        await asyncio.gather(*(self._scrape_one(e) for e in self._all()))
        return self.engines

    async def adopt(
        self, candidates: Iterable[ServerCandidate], started_at: Mapping[int, float]
    ) -> None:
        """Brings discovered servers in, and lets go of those whose processes left.

        Args:
            candidates: listening processes that own GPU processes, as found now.
            started_at: start times of server processes, by PID, in Unix seconds.
        """
        now = self._clock.monotonic()
        configured = {
            _endpoint_of(e.target.base_url): e for e in self._configured.values()
        }
        by_server = {key[0]: key for key in self._discovered}
        alive: set[int] = set()
        new: list[ServerCandidate] = []
        for candidate in candidates:
            alive.add(candidate.server_pid)
            known = next(
                (configured[ep] for ep in candidate.endpoints if ep in configured), None
            )
            if known is not None:
                # A configured engine: discovery only tells which processes it owns.
                self.set_pids(known.target.name, candidate.gpu_pids)
            elif candidate.server_pid in by_server:
                engine = self._discovered[by_server[candidate.server_pid]]
                engine.target = _with_pids(engine.target, candidate.gpu_pids)
                engine.status = _replace_target(engine.status, engine.target)
            else:
                new.append(candidate)
        await asyncio.gather(
            *(self._discover(c, started_at.get(c.server_pid), now) for c in new)
        )
        for key in list(self._discovered):
            if key[0] not in alive:
                engine = self._discovered.pop(key)
                logger.info(
                    "engine %s is gone (server process %s exited)",
                    engine.target.name,
                    key[0],
                )
        for key in list(self._not_engines):
            if key[0] not in alive:
                del self._not_engines[key]

    async def _discover(
        self, candidate: ServerCandidate, started_at: float | None, now: float
    ) -> None:
        """Probes a new server's endpoints, best first, until one is an engine.

        One server is one engine, however many addresses it answers on: the
        endpoints are tried one after another, never at once.
        """
        for host, port in candidate.endpoints:
            key = (candidate.server_pid, host, port)
            if self._not_engines.get(key, float("-inf")) > now:
                continue
            if await self._try_endpoint(key, candidate, started_at):
                return
            self._not_engines[key] = now + _NOT_AN_ENGINE_RETRY_S

    async def _try_endpoint(
        self,
        key: tuple[int, str, int],
        candidate: ServerCandidate,
        started_at: float | None,
    ) -> bool:
        pid, host, port = key
        base_url = f"http://{_url_host(host)}:{port}"
        try:
            found, path, families = await probe(self._scraper, base_url)
        except ScrapeError as exc:
            logger.debug(
                "discovered %s (pid %s) is not an engine: %s", base_url, pid, exc
            )
            return False
        target = EngineTarget(
            name=f"{_url_host(host)}:{port}",
            base_url=base_url,
            metrics_path=path,
            kind=found.kind,
            server_pid=pid,
            pids=candidate.gpu_pids,
            started_at=started_at,
        )
        engine = _Engine(target, self._books_of(target.name))
        engine.dialect, engine.metrics_path = found, path
        self._discovered[key] = engine
        logger.info(
            "discovered %s engine %s (%s, pid %s) owning GPU processes %s",
            found.kind,
            target.name,
            candidate.command,
            pid,
            ", ".join(str(p) for p in sorted(candidate.gpu_pids)),
        )
        await self._read(engine, families)
        return True

    async def _scrape_one(self, engine: _Engine) -> None:
        target = engine.target
        try:
            if engine.dialect is None or engine.metrics_path is None:
                found, path, families = await probe(
                    self._scraper,
                    target.base_url,
                    metrics_path=target.metrics_path,
                    kind=target.kind,
                )
                engine.dialect, engine.metrics_path = found, path
            else:
                families = await self._scraper.families(
                    target.base_url + engine.metrics_path
                )
        except ScrapeError as exc:
            self._down(engine, exc)
            return
        await self._read(engine, families)

    async def _read(self, engine: _Engine, families: Families) -> None:
        assert engine.dialect is not None
        target = engine.target
        try:
            identity = await self._identity(engine)
            reading = engine.dialect.read(families, identity)
        except ScrapeError as exc:
            self._down(engine, exc)
            return
        except (ValueError, KeyError, TypeError) as exc:
            self._down(engine, ScrapeError("bad_response", f"{target.base_url}: {exc}"))
            return
        if engine.books.update(reading, target.started_at):
            logger.warning(
                "engine %s restarted: its counters began again from zero", target.name
            )
            engine.identity_read_at = float("-inf")
        if engine.failures:
            logger.info(
                "engine %s is back after %d failed scrape(s)",
                target.name,
                engine.failures,
            )
        elif not engine.status.up:
            logger.info("engine %s is up (%s)", target.name, reading.kind)
        engine.failures = 0
        engine.status = EngineStatus(
            target=target,
            up=True,
            kind=reading.kind,
            reading=reading,
            totals={m: engine.books.totals(m) for m in engine.books.models},
        )

    async def _identity(self, engine: _Engine) -> Any:
        assert engine.dialect is not None
        path = engine.dialect.identity_path
        if path is None:
            return None
        now = self._clock.monotonic()
        if now - engine.identity_read_at > _IDENTITY_TTL_S:
            engine.identity = await self._scraper.json(engine.target.base_url + path)
            engine.identity_read_at = now
        return engine.identity

    def _down(self, engine: _Engine, error: ScrapeError) -> None:
        name = engine.target.name
        self.errors[(name, error.reason)] += 1
        if engine.failures == 0:
            logger.warning("engine %s is down: %s", name, error)
        engine.failures += 1
        engine.status = EngineStatus(
            target=engine.target,
            up=False,
            kind=engine.status.kind,
            reason=error.reason,
            reading=engine.status.reading,
            totals=engine.status.totals,
        )


def _with_pids(target: EngineTarget, pids: frozenset[int]) -> EngineTarget:
    if target.pids == pids:
        return target
    return replace(target, pids=pids)


def _replace_target(status: EngineStatus, target: EngineTarget) -> EngineStatus:
    return status if status.target is target else replace(status, target=target)


def _endpoint_of(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if host == "localhost":
        host = "127.0.0.1"
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
