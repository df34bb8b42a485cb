"""Misbehaving inference servers: the daemon keeps serving and counts each fault."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from gpumeter.clock import SystemClock
from gpumeter.config import EngineSettings, EngineTargetSettings, Settings
from gpumeter.daemon import Daemon
from gpumeter.engines.records import ModelTotals
from gpumeter.sim import Scenario, ScenarioGpu, SimulatedNvml
from tests.running import free_port, series

GOOD = """# HELP vllm:prompt_tokens_total Prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} %d
# HELP vllm:generation_tokens_total Generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="m"} %d
"""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _hang(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def _error(request: web.Request) -> web.StreamResponse:
    return web.Response(status=500, text="internal error")


async def _html(request: web.Request) -> web.StreamResponse:
    return web.Response(
        text="<html><body>Login</body></html>", content_type="text/html"
    )


async def _huge(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = 50 * 2**20
    await response.prepare(request)
    chunk = b"# padding\n" * 6554
    for _ in range(800):
        await response.write(chunk)
    return response


async def _halfway(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = 10_000
    await response.prepare(request)
    await response.write(b"vllm:prompt_tokens_total 1\n" * 18)
    assert request.transport is not None
    request.transport.close()
    return response


class Restarting:
    """A vLLM-like server whose counters go back to zero when told to."""

    def __init__(self) -> None:
        self.prompt, self.generation = 0, 0

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=GOOD % (self.prompt, self.generation))


@pytest.fixture
async def servers() -> AsyncIterator[tuple[dict[str, str], Restarting]]:
    restarting = Restarting()
    handlers: dict[str, Handler] = {
        "hangs": _hang,
        "errors": _error,
        "html": _html,
        "huge": _huge,
        "halfway": _halfway,
        "good": restarting.metrics,
    }
    runners, urls = [], {}
    for name, handler in handlers.items():
        app = web.Application()
        app.router.add_get("/metrics", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls[name] = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    urls["refused"] = f"http://127.0.0.1:{free_port()}/metrics"
    try:
        yield urls, restarting
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_every_fault_is_counted_and_the_daemon_keeps_serving(
    servers: tuple[dict[str, str], Restarting],
) -> None:
    urls, restarting = servers
    targets = tuple(
        EngineTargetSettings(url=url, name=name, kind="vllm")
        for name, url in urls.items()
    )
    settings = Settings(
        listen=f"127.0.0.1:{free_port()}",
        engines=EngineSettings(
            interval_seconds=0.5,
            discovery=False,
            timeout_seconds=0.5,
            connect_timeout_seconds=0.5,
            max_body_bytes=2**20,
            targets=targets,
        ),
    )
    scenario = Scenario(
        gpus=(ScenarioGpu(uuid="GPU-f0000000-0000-0000-0000-000000000000"),)
    )
    daemon = Daemon(settings, nvml=SimulatedNvml.from_scenario(scenario, SystemClock()))
    stop = asyncio.Event()
    running = asyncio.create_task(daemon.run(stop))
    expected = {
        "refused": "refused",
        "hangs": "timeout",
        "errors": "http_500",
        "html": "not_metrics",
        "huge": "too_large",
        "halfway": "truncated",
    }
    try:
        await _until(
            lambda: all(
                daemon.snapshot().scrape_errors.get(k) for k in expected.items()
            )
        )
        # First seen at zero (the baseline), then counting.
        await _until(lambda: _prompt(daemon) == 0)
        restarting.prompt, restarting.generation = 100, 40
        await _until(lambda: _prompt(daemon) == 100)
        restarting.prompt, restarting.generation = 130, 52
        await _until(lambda: _prompt(daemon) == 130)
        # The server restarts and counts 7 and 3 again from zero.
        restarting.prompt, restarting.generation = 7, 3
        await _until(lambda: _prompt(daemon) == 137)
        totals = _totals(daemon, "good")
        assert totals is not None
        assert totals.generation_tokens == 55

        async with aiohttp.ClientSession() as session:
            base = f"http://{settings.listen}"
            async with session.get(f"{base}/metrics") as response:
                scrape = series(await response.text())
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
        for name, reason in expected.items():
            key = (
                "gpumeter_scrape_errors_total",
                (("engine", name), ("reason", reason)),
            )
            assert scrape[key] >= 1
            assert (
                scrape[("gpumeter_engine_up", (("engine", name), ("kind", "vllm")))]
                == 0
            )
        assert (
            scrape[("gpumeter_engine_up", (("engine", "good"), ("kind", "vllm")))] == 1
        )
        assert not running.done()
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


def _totals(daemon: Daemon, engine: str) -> ModelTotals | None:
    for status in daemon.snapshot().engines:
        if status.target.name == engine and status.up:
            return status.totals.get("m")
    return None


def _prompt(daemon: Daemon) -> float | None:
    totals = _totals(daemon, "good")
    return None if totals is None else totals.prompt_tokens


async def _until(condition: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)
