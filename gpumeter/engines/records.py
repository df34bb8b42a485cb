"""Immutable records of what inference servers report, as they report it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ENGINE_KINDS", "EngineReading", "ModelReading"]

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
