"""Immutable records of what inference servers report, as they report it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = [
    "ENGINE_KINDS",
    "EngineReading",
    "EngineStatus",
    "EngineTarget",
    "ModelReading",
    "ModelTotals",
]

ENGINE_KINDS = ("vllm", "tgi", "sglang", "llamacpp", "nim")
"""The dialects gpumeter understands; anything else is ``unknown``."""


@dataclass(frozen=True, slots=True)
class ModelReading:
    """One model's figures on one engine, cumulative since the engine started.

    Counters are the engine's own totals (summed over its data-parallel ranks);
    a field is None when this engine or version does not report it.

    Attributes:
        model: the served model name (vLLM's ``model_name``, TGI's ``model_id``,
            llama.cpp's alias or model path).
        prompt_tokens: input tokens, cached prompt tokens included.
        generation_tokens: output tokens.
        requests: finished requests, whatever the reason they finished.
        requests_running: requests in the running batch now (a gauge).
        requests_waiting: requests queued now (a gauge).
        prefill_seconds: time spent in prefill, in seconds, summed over requests.
        decode_seconds: time spent in decode, in seconds, summed over requests.
    """

    model: str
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    requests: float | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None
    prefill_seconds: float | None = None
    decode_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class EngineReading:
    """One scrape of one engine, understood.

    Attributes:
        kind: the dialect (one of :data:`ENGINE_KINDS`).
        models: a reading per model the engine serves.
        started_at: when the engine's counters started, in Unix seconds, where the
            exposition says (``process_start_time_seconds``, vLLM's ``_created``
            samples); a change means the counters restarted from zero.
    """

    kind: str
    models: tuple[ModelReading, ...]
    started_at: float | None = None


@dataclass(frozen=True, slots=True)
class ModelTotals:
    """What gpumeter has counted for one model on one engine since it started.

    A field is None when the engine does not report that figure.

    Attributes:
        prompt_tokens: input tokens.
        generation_tokens: output tokens.
        requests: finished requests.
        prefill_seconds: prefill time, in seconds.
        decode_seconds: decode time, in seconds.
    """

    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    requests: float | None = None
    prefill_seconds: float | None = None
    decode_seconds: float | None = None


@dataclass(frozen=True)
class EngineTarget:
    """An inference server to read.

    Attributes:
        name: the ``engine`` label: the configured name, else ``host:port``.
        base_url: scheme, host and port, such as ``http://127.0.0.1:8000``.
        metrics_path: the exposition's path; None to find it from the dialect.
        kind: the dialect, when configured; None to detect it.
        server_pid: the listening process, when discovered.
        pids: the GPU processes the server owns, when discovered.
        started_at: the server process's start, in Unix seconds, when known.
    """

    name: str
    base_url: str
    metrics_path: str | None = None
    kind: str | None = None
    server_pid: int | None = None
    pids: frozenset[int] = frozenset()
    started_at: float | None = None

    @classmethod
    def from_url(
        cls, url: str, name: str | None = None, kind: str | None = None
    ) -> EngineTarget:
        """A target from a URL, with or without the metrics path.

        Raises:
            ValueError: the URL has no http(s) scheme or no host.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http://HOST:PORT[/PATH], got {url!r}")
        base = f"{parts.scheme}://{parts.netloc}"
        path = parts.path if parts.path not in ("", "/") else None
        if parts.query:
            path = f"{path or ''}?{parts.query}"
        return cls(
            name=name or parts.netloc, base_url=base, metrics_path=path, kind=kind
        )


@dataclass(frozen=True)
class EngineStatus:
    """What is known of one engine after a scrape.

    Attributes:
        target: the engine.
        up: the last scrape succeeded and was understood.
        kind: the dialect, once detected.
        reason: why the last scrape failed, when it did.
        reading: the last reading understood.
        totals: gpumeter's totals per model since it started watching.
    """

    target: EngineTarget
    up: bool
    kind: str | None = None
    reason: str | None = None
    reading: EngineReading | None = None
    totals: Mapping[str, ModelTotals] = field(default_factory=dict)
