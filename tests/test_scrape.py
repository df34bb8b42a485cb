"""Scraper against real HTTP servers on 127.0.0.1, including misbehaving ones."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gpumeter.engines.scrape import METRICS_ACCEPT, Scraper
from gpumeter.errors import ScrapeError

EXPOSITION = """\
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="m"} 1234.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="m"} 567.0
"""

FIFTY_MB = 50 * 2**20
# Far below 50 MB, far above what a 1 MiB limit plus socket buffers let through.
STOPPED_EARLY_BYTES = 25 * 2**20
# A generous ceiling on any single scrape; the limits under test are well below.
WALL_LIMIT_S = 10.0

RawHandler = Callable[["RawConnection"], Awaitable[None]]


class RawConnection:
    """One accepted connection of a raw server, with the request already read."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stop: asyncio.Event,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.stop = stop
        self.request = b""

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def hang(self) -> None:
        """Holds the connection open until the test tears the server down."""
        await self.stop.wait()


class RawServer:
    """An asyncio TCP server that answers each request with a scripted handler."""

    def __init__(self, handler: RawHandler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stop = asyncio.Event()
        self.done = asyncio.Event()
        self.bytes_sent = 0
        self.last_request = b""
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/metrics"

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = RawConnection(reader, writer, self.stop)
        try:
            connection.request = await reader.readuntil(b"\r\n\r\n")
            self.last_request = connection.request
            await self._handler(connection)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.done.set()
            self._tasks.discard(task)

    async def close(self) -> None:
        self.stop.set()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: RawHandler) -> RawServer:
        server = RawServer(handler)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def web_server() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def app_returning(
    body: bytes | str, *, status: int = 200, content_type: str = "text/plain"
) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        payload = body.encode() if isinstance(body, str) else body
        return web.Response(body=payload, status=status, content_type=content_type)

    app = web.Application()
    app.router.add_get("/{path:.*}", handle)
    return app


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def failure(scrape: Awaitable[Any]) -> ScrapeError:
    """Awaits a scrape that must fail, within the wall limit, and returns the error."""
    with pytest.raises(ScrapeError) as caught:
        await asyncio.wait_for(scrape, WALL_LIMIT_S)
    return caught.value


def assert_well_formed(error: ScrapeError, url: str, *, chained: bool = True) -> None:
    message = str(error)
    assert message.startswith(f"{url}: ")
    assert "\n" not in message
    if chained:
        assert error.__cause__ is not None


def response_head(*lines: str) -> bytes:
    return ("HTTP/1.1 200 OK\r\n" + "".join(f"{line}\r\n" for line in lines)).encode()


async def stream_until_stopped(connection: RawConnection, server: RawServer) -> None:
    """Sends 64 KiB pieces of exposition-like text until 50 MB or a failed write."""
    piece = b"x 1\n" * (2**14)
    while server.bytes_sent < FIFTY_MB and not connection.stop.is_set():
        await connection.send(piece)
        server.bytes_sent += len(piece)


# --- good responses ---------------------------------------------------------


async def test_families_parses_exposition_and_asks_for_plain_text(
    session: aiohttp.ClientSession,
    web_server: Callable[[web.Application], Awaitable[str]],
) -> None:
    accepts: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        accepts.append(request.headers.get("Accept", ""))
        return web.Response(text=EXPOSITION, content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    base = await web_server(app)

    families = await Scraper(session).families(f"{base}/metrics")

    assert accepts == ["text/plain;version=0.0.4"]
    assert accepts[0] == METRICS_ACCEPT
    assert set(families) >= {"vllm_prompt_tokens", "vllm_generation_tokens"}
    [sample] = [
        s for s in families["vllm_prompt_tokens"].samples if s.name.endswith("_total")
    ]
    assert sample.value == 1234.0
    assert sample.labels == {"model_name": "m"}


async def test_text_sends_the_accept_header_it_is_given(
    session: aiohttp.ClientSession,
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
) -> None:
    async def handle(connection: RawConnection) -> None:
        await connection.send(response_head("Content-Length: 2", "") + b"ok")

    server = await raw_server(handle)

    text = await Scraper(session).text(server.url, accept="text/html")

    assert text == "ok"
    assert b"\r\naccept: text/html\r\n" in server.last_request.lower()


async def test_body_exactly_at_the_limit_is_accepted(
    session: aiohttp.ClientSession,
    web_server: Callable[[web.Application], Awaitable[str]],
) -> None:
    base = await web_server(app_returning(b"a 1\n" * 250))

    text = await Scraper(session, max_body_bytes=1000).text(f"{base}/metrics")

    assert len(text) == 1000


async def test_connection_is_reused_after_a_complete_read(
    session: aiohttp.ClientSession,
    web_server: Callable[[web.Application], Awaitable[str]],
) -> None:
    peers: set[Any] = set()

    async def handle(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(text=EXPOSITION)

    app = web.Application()
    app.router.add_get("/metrics", handle)
    base = await web_server(app)
    scraper = Scraper(session)

    for _ in range(3):
        await scraper.families(f"{base}/metrics")

    assert len(peers) == 1


async def test_json_parses_a_document(
    session: aiohttp.ClientSession,
    web_server: Callable[[web.Application], Awaitable[str]],
) -> None:
    document = {"model_path": "/models/q4.gguf", "total_slots": 4}
    base = await web_server(
        app_returning(json.dumps(document), content_type="application/json")
    )

    assert await Scraper(session).json(f"{base}/props") == document


# --- the server cannot be reached or does not answer ------------------------


async def test_refused_when_nothing_listens(session: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{unused_port()}/metrics"

    error = await failure(Scraper(session).families(url))

    assert error.reason == "refused"
    assert_well_formed(error, url)


async def test_timeout_when_the_connection_is_never_accepted(
    session: aiohttp.ClientSession,
) -> None:
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # Fill the accept queue; further handshakes go unanswered.
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        url = f"http://127.0.0.1:{port}/metrics"
        scraper = Scraper(session, connect_timeout_s=0.3, total_timeout_s=1.0)

        error = await failure(scraper.families(url))

    assert error.reason == "timeout"
    assert_well_formed(error, url)
    if sys.platform == "linux":
        assert "no connection within 0.3 s" in str(error)


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/metrics"])
async def test_unusable_url_is_refused(
    session: aiohttp.ClientSession, url: str
) -> None:
    error = await failure(Scraper(session).families(url))

    assert error.reason == "refused"
    assert_well_formed(error, url)


async def test_timeout_when_the_server_never_answers(
    session: aiohttp.ClientSession,
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
) -> None:
    server = await raw_server(RawConnection.hang)
    scraper = Scraper(session, total_timeout_s=0.5)

    started = time.monotonic()
    error = await failure(scraper.families(server.url))

    assert error.reason == "timeout"
    assert "0.5 s" in str(error)
    assert_well_formed(error, server.url)
    assert time.monotonic() - started < WALL_LIMIT_S


async def test_timeout_when_the_body_stalls_after_the_headers(
    session: aiohttp.ClientSession,
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
) -> None:
    async def handle(connection: RawConnection) -> None:
        await connection.send(response_head("Content-Length: 1000", "") + b"a 1\n")
        await connection.hang()

    server = await raw_server(handle)

    error = await failure(Scraper(session, total_timeout_s=0.5).families(server.url))

    assert error.reason == "timeout"
    assert "body" in str(error)
    assert_well_formed(error, server.url)


async def test_timeout_when_the_body_trickles_forever(
    session: aiohttp.ClientSession,
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
) -> None:
    async def handle(connection: RawConnection) -> None:
        await connection.send(response_head("Transfer-Encoding: chunked", ""))
        while not connection.stop.is_set():
            await connection.send(b"1\r\na\r\n")
            await asyncio.sleep(0.02)

    server = await raw_server(handle)

    error = await failure(Scraper(session, total_timeout_s=0.5).families(server.url))

    assert error.reason == "timeout"
    assert_well_formed(error, server.url)


# --- the server answers with something else ----------------------------------


@pytest.mark.parametrize("status", [404, 500, 501])
async def test_http_error_status(
    session: aiohttp.ClientSession,
    web_server: Callable[[web.Application], Awaitable[str]],
    status: int,
) -> None:
    base = await web_server(app_returning("no", status=status))
    url = f"{base}/metrics"

    error = await failure(Scraper(session).families(url))

    assert error.reason == f"http_{status}"
    assert f"HTTP {status}" in str(error)
    assert_well_formed(error, url, chained=False)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("<!doctype html><html><body>Welcome</body></html>", "text/html"),
        (json.dumps(EXPOSITION), "application/json"),
        (json.dumps({"object": "list", "data": []}), "application/json"),
        ("this is not\nan exposition at all\n", "text/plain"),
    ],
    ids=["html", "json-quoted-exposition", "json-object", "prose"],
)
async def test_not_metrics(
    session: aiohttp.ClientSession,
    web_server: Callable[[web.Application], Awaitable[str]],
    body: str,
    content_type: str,
) -> None:
    base = await web_server(app_returning(body, content_type=content_type))
    url = f"{base}/metrics"

    error = await failure(Scraper(session).families(url))

    assert error.reason == "not_metrics"
    assert_well_formed(error, url)


async def test_undecodable_body_is_not_metrics(
    session: aiohttp.ClientSession,
    web_server: Callable[[web.Application], Awaitable[str]],
) -> None:
    base = await web_server(app_returning(b"a 1\n\xff\xfe\x00garbage\n"))
    url = f"{base}/metrics"

    error = await failure(Scraper(session).text(url))

    assert error.reason == "not_metrics"
    assert_well_formed(error, url)


@pytest.mark.parametrize(
    "body", [b"<html>nope</html>", b'{"truncated": ', b"\xff\xfe"], ids=repr
)
async def test_json_rejects_a_body_that_is_not_json(
    session: aiohttp.ClientSession,
    web_server: Callable[[web.Application], Awaitable[str]],
    body: bytes,
) -> None:
    base = await web_server(app_returning(body, content_type="application/json"))
    url = f"{base}/props"

    error = await failure(Scraper(session).json(url))

    assert error.reason == "bad_response"
    assert_well_formed(error, url)


async def test_malformed_status_line_is_a_bad_response(
    session: aiohttp.ClientSession,
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
) -> None:
    async def handle(connection: RawConnection) -> None:
        await connection.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    server = await raw_server(handle)

    error = await failure(Scraper(session).families(server.url))

    assert error.reason == "bad_response"
    assert_well_formed(error, server.url)


# --- oversized bodies ---------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_fifty_megabytes_are_abandoned_early(
    session: aiohttp.ClientSession,
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
    framing: str,
) -> None:
    server: RawServer

    async def handle(connection: RawConnection) -> None:
        if framing == "content-length":
            await connection.send(response_head(f"Content-Length: {FIFTY_MB}", ""))
            await stream_until_stopped(connection, server)
            return
        await connection.send(response_head("Transfer-Encoding: chunked", ""))
        piece = b"x 1\n" * (2**14)
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        while server.bytes_sent < FIFTY_MB and not connection.stop.is_set():
            await connection.send(frame)
            server.bytes_sent += len(piece)

    server = await raw_server(handle)
    scraper = Scraper(session, max_body_bytes=2**20)

    error = await failure(scraper.families(server.url))

    assert error.reason == "too_large"
    assert_well_formed(error, server.url, chained=False)
    # The server's writes fail once the scraper has hung up.
    await asyncio.wait_for(server.done.wait(), WALL_LIMIT_S)
    assert server.bytes_sent < STOPPED_EARLY_BYTES


async def test_announced_length_over_the_default_limit_is_refused_unread(
    session: aiohttp.ClientSession,
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
) -> None:
    server: RawServer

    async def handle(connection: RawConnection) -> None:
        await connection.send(response_head(f"Content-Length: {FIFTY_MB}", ""))
        await stream_until_stopped(connection, server)

    server = await raw_server(handle)

    error = await failure(Scraper(session).families(server.url))

    assert error.reason == "too_large"
    assert str(FIFTY_MB) in str(error)
    await asyncio.wait_for(server.done.wait(), WALL_LIMIT_S)
    assert server.bytes_sent < STOPPED_EARLY_BYTES


async def test_one_byte_over_the_limit_is_too_large(
    session: aiohttp.ClientSession,
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
) -> None:
    async def handle(connection: RawConnection) -> None:
        body = b"a" * 1001
        frame = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        await connection.send(response_head("Transfer-Encoding: chunked", "") + frame)

    server = await raw_server(handle)

    error = await failure(Scraper(session, max_body_bytes=1000).text(server.url))

    assert error.reason == "too_large"


# --- broken framing -------------------------------------------------------------


async def test_body_cut_short_of_its_content_length_is_truncated(
    session: aiohttp.ClientSession,
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
) -> None:
    async def handle(connection: RawConnection) -> None:
        await connection.send(response_head("Content-Length: 10000", "") + b"a" * 500)

    server = await raw_server(handle)

    error = await failure(Scraper(session).families(server.url))

    assert error.reason == "truncated"
    assert_well_formed(error, server.url)


@pytest.mark.parametrize(
    "chunks",
    [
        b"100\r\nonly a few bytes of the chunk",
        b"4\r\na 1\n\r\n",
        b"4\r\na 1\n\r\n4\r\n",
    ],
    ids=["closed-mid-chunk", "no-last-chunk", "closed-after-chunk-size"],
)
async def test_broken_chunked_encoding_is_truncated(
    session: aiohttp.ClientSession,
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
    chunks: bytes,
) -> None:
    async def handle(connection: RawConnection) -> None:
        await connection.send(response_head("Transfer-Encoding: chunked", ""))
        # Apart from the headers, so the fault is met while reading the body.
        await asyncio.sleep(0.05)
        await connection.send(chunks)

    server = await raw_server(handle)

    error = await failure(Scraper(session).families(server.url))

    assert error.reason == "truncated"
    assert_well_formed(error, server.url)


async def test_garbage_chunk_size_fails_within_the_time_limit(
    session: aiohttp.ClientSession,
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
) -> None:
    async def handle(connection: RawConnection) -> None:
        await connection.send(response_head("Transfer-Encoding: chunked", ""))
        await asyncio.sleep(0.05)
        await connection.send(b"zz\r\nnot a hex size\r\n0\r\n\r\n")

    server = await raw_server(handle)
    scraper = Scraper(session, total_timeout_s=0.5)

    error = await failure(scraper.families(server.url))

    # aiohttp's pure-Python parser reports the bad size at once; its C parser
    # leaves the body read waiting, so only the time limit ends it.
    assert error.reason in {"truncated", "timeout"}
    assert_well_formed(error, server.url)


async def test_connection_closed_before_any_response_is_truncated(
    session: aiohttp.ClientSession,
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
) -> None:
    async def handle(connection: RawConnection) -> None:
        return

    server = await raw_server(handle)

    error = await failure(Scraper(session).families(server.url))

    assert error.reason == "truncated"
    assert "before a response" in str(error)
    assert_well_formed(error, server.url)


# --- concurrency and construction -----------------------------------------------


async def test_concurrency_is_bounded(
    session: aiohttp.ClientSession,
    web_server: Callable[[web.Application], Awaitable[str]],
) -> None:
    in_flight = 0
    most_in_flight = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        try:
            await asyncio.sleep(0.02)
        finally:
            in_flight -= 1
        return web.Response(text=EXPOSITION)

    app = web.Application()
    app.router.add_get("/metrics", handle)
    base = await web_server(app)
    scraper = Scraper(session, concurrency=3)

    results = await asyncio.wait_for(
        asyncio.gather(*(scraper.families(f"{base}/metrics") for _ in range(20))),
        WALL_LIMIT_S,
    )

    assert len(results) == 20
    assert all("vllm_prompt_tokens" in families for families in results)
    assert 1 <= most_in_flight <= 3


@pytest.mark.parametrize(
    "limits",
    [
        {"connect_timeout_s": 0},
        {"total_timeout_s": -1.0},
        {"max_body_bytes": 0},
        {"concurrency": 0},
    ],
)
async def test_limits_must_be_positive(
    session: aiohttp.ClientSession, limits: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=next(iter(limits))):
        Scraper(session, **limits)
