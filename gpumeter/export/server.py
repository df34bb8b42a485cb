"""The HTTP endpoint: ``/metrics`` for Prometheus and ``/healthz`` for probes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["MetricsServer"]

logger = logging.getLogger(__name__)


class MetricsServer:
    """Serves a Prometheus registry and a health report over aiohttp.

    Args:
        registry: the registry whose collectors ``/metrics`` exposes.
        health: returns (healthy, details); ``/healthz`` answers 200 or 503 with
            the details as JSON.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], tuple[bool, Mapping[str, Any]]],
    ) -> None:
        self._registry = registry
        self._health = health
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        """The port actually bound (useful when asked for port 0)."""

    def application(self) -> web.Application:
        """The aiohttp application with both routes."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def start(self, host: str, port: int) -> None:
        """Binds and starts serving.

        Raises:
            OSError: the address cannot be bound.
        """
        runner = web.AppRunner(self.application(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1]) if runner.addresses else port
        logger.info("serving /metrics on %s:%s", host, self.port)

    async def stop(self) -> None:
        """Stops serving and closes open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        healthy, details = self._health()
        return web.json_response(
            {"status": "ok" if healthy else "unhealthy", **details},
            status=200 if healthy else 503,
        )
