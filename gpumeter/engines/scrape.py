"""Bounded HTTP reads of inference servers' endpoints, failures as ScrapeError."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import aiohttp
from aiohttp.http_exceptions import (
    ContentEncodingError,
    HttpProcessingError,
    PayloadEncodingError,
)
from prometheus_client.metrics_core import Metric

from gpumeter.engines.exposition import parse_exposition
from gpumeter.errors import ScrapeError

logger = logging.getLogger(__name__)

__all__ = ["METRICS_ACCEPT", "Scraper"]

METRICS_ACCEPT = "text/plain;version=0.0.4"
"""The Accept header for ``/metrics``: asks for the classic text format, because
prometheus_client answers an OpenMetrics Accept header with OpenMetrics."""

_READ_CHUNK_BYTES = 64 * 2**10
_MAX_DETAIL_CHARS = 200

# Everything aiohttp and the socket layer raise while a request is in flight; the
# HTTP parser's own errors escape unwrapped from some body reads.
_TRANSPORT_ERRORS = (
    aiohttp.ClientError,
    HttpProcessingError,
    asyncio.TimeoutError,
    OSError,
)


class Scraper:
    """HTTP GETs against inference servers, bounded in time, size and concurrency.

    Every failure, whatever its cause, comes out as a :class:`ScrapeError` whose
    ``reason`` is one of ``refused``, ``timeout``, ``http_<status>``,
    ``too_large``, ``truncated``, ``not_metrics`` or ``bad_response``, and whose
    message is one line naming the URL. The session is the caller's: the scraper
    never closes it.

    Args:
        session: the shared HTTP session to send requests through.
        connect_timeout_s: the longest wait for a TCP connection, in seconds.
        total_timeout_s: the longest a request may take from connecting to the
            last byte of the body, in seconds. Time spent waiting for a free
            slot (see ``concurrency``) is not counted.
        max_body_bytes: the largest body accepted, counted after any content
            decoding; a larger one is abandoned as soon as the limit is passed.
        concurrency: the most requests in flight at once through this scraper.

    Raises:
        ValueError: a limit is not positive.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        connect_timeout_s: float = 2.0,
        total_timeout_s: float = 5.0,
        max_body_bytes: int = 16 * 2**20,
        concurrency: int = 8,
    ) -> None:
        limits = {
            "connect_timeout_s": connect_timeout_s,
            "total_timeout_s": total_timeout_s,
            "max_body_bytes": max_body_bytes,
            "concurrency": concurrency,
        }
        for name, value in limits.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self._session = session
        self._connect_timeout_s = connect_timeout_s
        self._total_timeout_s = total_timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=total_timeout_s, connect=connect_timeout_s
        )
        self._max_body_bytes = max_body_bytes
        self._slots = asyncio.Semaphore(concurrency)

    async def text(self, url: str, *, accept: str = METRICS_ACCEPT) -> str:
        """Fetches a URL and decodes its body as UTF-8.

        Args:
            url: the absolute ``http://`` URL to GET.
            accept: the Accept header to send.

        Returns:
            The body, decoded.

        Raises:
            ScrapeError: the request failed, or the body is not UTF-8
                (``not_metrics``).
        """
        body = await self._get(url, accept)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _failed(
                "not_metrics", url, f"body is not UTF-8 text (bad byte at {exc.start})"
            ) from exc

    async def json(self, url: str) -> Any:
        """Fetches a URL and parses its body as JSON.

        Args:
            url: the absolute ``http://`` URL to GET.

        Returns:
            The parsed document.

        Raises:
            ScrapeError: the request failed, or the body is not JSON
                (``bad_response``).
        """
        body = await self._get(url, "application/json")
        try:
            return json.loads(body)
        except ValueError as exc:
            # Undecodable bytes raise UnicodeDecodeError, itself a ValueError.
            raise _failed("bad_response", url, f"body is not JSON: {exc}") from exc

    async def families(self, url: str) -> dict[str, Metric]:
        """Fetches a ``/metrics`` URL and parses the Prometheus text exposition.

        Args:
            url: the absolute ``http://`` URL of the exposition.

        Returns:
            Metric families by normalized name, as :func:`parse_exposition` files
            them.

        Raises:
            ScrapeError: the request failed, or the body is not an exposition
                (``not_metrics``: HTML, JSON, a quoted string, garbage).
        """
        text = await self.text(url)
        try:
            return parse_exposition(text)
        except ValueError as exc:
            raise _failed("not_metrics", url, str(exc)) from exc

    async def _get(self, url: str, accept: str) -> bytes:
        """GETs a URL within this scraper's limits and returns the raw body."""
        async with self._slots:
            try:
                response = await self._session.get(
                    url, headers={"Accept": accept}, timeout=self._timeout
                )
            except _TRANSPORT_ERRORS as exc:
                raise self._translate(url, exc, body_started=False) from exc

            try:
                body = await self._read_body(url, response)
            except _TRANSPORT_ERRORS as exc:
                response.close()
                raise self._translate(url, exc, body_started=True) from exc
            except BaseException:
                # A refused status, an oversized body or a cancellation: the
                # connection may hold unread bytes, so it is not reused.
                response.close()
                raise
            response.release()
            return body

    async def _read_body(self, url: str, response: aiohttp.ClientResponse) -> bytes:
        """Checks the status and reads the body, stopping at the size limit."""
        if not 200 <= response.status < 300:
            status = f"HTTP {response.status} {response.reason or ''}".rstrip()
            raise _failed(f"http_{response.status}", url, status)

        limit = self._max_body_bytes
        announced = response.content_length
        if announced is not None and announced > limit:
            raise _failed(
                "too_large", url, f"body of {announced} bytes exceeds {limit} bytes"
            )

        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_READ_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise _failed(
                    "too_large", url, f"body exceeds {limit} bytes, stopped reading"
                )
            chunks.append(chunk)
        logger.debug("GET %s: HTTP %d, %d bytes", url, response.status, size)
        return b"".join(chunks)

    def _translate(
        self, url: str, exc: BaseException, *, body_started: bool
    ) -> ScrapeError:
        """Names what went wrong in a request that raised ``exc``."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return _failed(
                "timeout", url, f"no connection within {self._connect_timeout_s} s"
            )
        if isinstance(exc, asyncio.TimeoutError):
            waiting_for = "the body" if body_started else "the response headers"
            return _failed(
                "timeout",
                url,
                f"timed out after {self._total_timeout_s} s waiting for {waiting_for}",
            )
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return _failed("refused", url, f"cannot resolve host: {_os_detail(exc)}")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return _failed("refused", url, f"cannot connect: {_os_detail(exc)}")
        if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
            return _failed("refused", url, "not a valid http:// URL")
        if _caused_by(exc, ContentEncodingError):
            return _failed(
                "bad_response", url, f"body cannot be decoded: {_detail(exc)}"
            )
        if isinstance(exc, aiohttp.ClientPayloadError) or _caused_by(
            exc, PayloadEncodingError
        ):
            return _failed("truncated", url, f"body cut short: {_detail(exc)}")
        if isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
            lost = (
                "before the body was complete" if body_started else "before a response"
            )
            return _failed("truncated", url, f"connection lost {lost}: {_detail(exc)}")
        return _failed("bad_response", url, f"malformed HTTP response: {_detail(exc)}")


def _failed(reason: str, url: str, what: str) -> ScrapeError:
    """A ScrapeError whose one-line message names the URL and what happened."""
    logger.debug("GET %s failed (%s): %s", url, reason, what)
    return ScrapeError(reason, f"{url}: {_one_line(what)}")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` or any exception it was raised from is a ``kind``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__
    return False


def _detail(exc: BaseException) -> str:
    """What the HTTP parser or the exception itself says went wrong."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, HttpProcessingError) and seen.message:
            return seen.message
        seen = seen.__cause__
    if isinstance(exc, aiohttp.ClientResponseError) and exc.message:
        return exc.message
    return str(exc) or type(exc).__name__


def _os_detail(exc: aiohttp.ClientConnectorError) -> str:
    """The operating system's words for a failed connection ("Connection refused")."""
    os_error = exc.os_error
    if os_error.errno is not None and os_error.errno > 0:
        return os.strerror(os_error.errno)
    return os_error.strerror or _detail(exc)


def _one_line(text: str) -> str:
    """Collapses whitespace and shortens text so a message stays on one line."""
    flat = " ".join(text.split())
    if len(flat) > _MAX_DETAIL_CHARS:
        return flat[: _MAX_DETAIL_CHARS - 1] + "…"
    return flat
