"""Engine source: adopting discovered servers, one engine per server, state changes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gpumeter.engines.discovery import ServerCandidate
from gpumeter.engines.records import EngineTarget
from gpumeter.engines.scrape import Scraper
from gpumeter.engines.source import EngineSource

VLLM = """# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 10
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="m"} 4
"""


class Server:
    """A local HTTP server that counts the requests it gets."""

    def __init__(self, body: str | None) -> None:
        self.body = body
        self.requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.body is None:
            return web.Response(status=404)
        return web.Response(text=self.body)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Server, Server, Server]]:
    engine, peer, twin = Server(VLLM), Server(None), Server(VLLM)
    for server in (engine, peer, twin):
        await server.start()
    yield engine, peer, twin
    for server in (engine, peer, twin):
        await server.stop()


def _candidate(pid: int, *ports: int) -> ServerCandidate:
    return ServerCandidate(
        server_pid=pid,
        gpu_pids=frozenset({pid + 1, pid + 2}),
        endpoints=tuple(("127.0.0.1", port) for port in ports),
        command="vllm",
        same_netns=True,
    )


async def test_a_server_is_one_engine_and_peer_ports_are_not_probed_again(
    servers: tuple[Server, Server, Server],
) -> None:
    engine, peer, twin = servers
    async with aiohttp.ClientSession() as session:
        source = EngineSource(Scraper(session))
        # The peer port comes first, the engine's second, and a second address
        # of the same server third: one engine, found on the first that answers.
        candidate = _candidate(100, peer.port, engine.port, twin.port)
        await source.adopt([candidate], {100: 1.0})
        (status,) = source.engines
        assert status.target.name == f"127.0.0.1:{engine.port}"
        assert status.target.pids == frozenset({101, 102})
        assert status.kind == "vllm"
        assert twin.requests == 0
        probed = peer.requests
        assert probed > 0

        await source.adopt([candidate], {100: 1.0})
        await source.scrape()
        assert peer.requests == probed  # remembered as no engine
        assert len(source.engines) == 1

        await source.adopt([], {})
        assert source.engines == ()


async def test_a_configured_engine_only_learns_its_processes(
    servers: tuple[Server, Server, Server],
) -> None:
    engine, _, _ = servers
    target = EngineTarget.from_url(f"http://localhost:{engine.port}", name="main")
    async with aiohttp.ClientSession() as session:
        source = EngineSource(Scraper(session), [target])
        await source.adopt([_candidate(200, engine.port)], {})
        (status,) = source.engines
        assert status.target.name == "main"
        assert status.target.pids == frozenset({201, 202})
        await source.scrape()
        assert source.engines[0].up
