"""Simulated vLLM and TGI servers for the demo, with exact token ground truth.

Each inference job of a :class:`~gpumeter.sim.demo_node.DemoWorkload` gets a token
model, a :class:`SimEngine`. Its requests come one after another from a seeded
stream (:func:`request_stream`) and are worked through at a rate proportional to
the job's SM share, the very number that drives its GPU process and therefore its
power::

    d(progress)/dt = generation_tokens_per_s * sm_percent / 100

``progress`` is measured in generation tokens and integrated exactly, in rational
arithmetic, over the piecewise-constant load, as the simulated GPUs integrate
energy. Request ``k`` owns the progress interval ``(C_k, C_k + g_k]`` where
``C_k`` is the sum of the generation lengths before it: its prompt is prefilled
when progress first passes ``C_k`` and it finishes when progress reaches
``C_k + g_k``. So, at any moment of a run:

* prompt tokens = the prompts of the requests started so far;
* generation tokens = ``floor(progress)``;
* finished requests = those whose interval progress has passed.

Latencies, queue depth and batch size are derived from the load with Little's law
(requests running = generation tokens per second * inter-token latency) and only
shape the histograms and gauges, never the token counts.

:class:`SimVllmServer` and :class:`SimTgiServer` serve these counts over HTTP in
the two servers' own dialects: vLLM V1 through ``prometheus_client`` exactly as
vLLM does (``_total`` counters, ``_created`` samples, labels ``model_name`` and
``engine``), TGI as its Rust exporter writes it (no model label, tokens only as
histogram sums, integers without ``.0``, series created lazily). A server whose
engine process is gone drops every connection unanswered until the process comes
back as a new run with its counters at zero. SGLang jobs get a token model but no
server: its dialect is not simulated.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import json
import logging
import math
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from gpumeter.clock import Clock
from gpumeter.sim.demo_node import DemoJob, DemoWorkload

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_PROFILES",
    "EngineObserver",
    "EngineTruth",
    "RequestTiming",
    "SimEngine",
    "SimEngines",
    "SimRequest",
    "SimTgiServer",
    "SimVllmServer",
    "FINISH_REASONS",
    "TGI_VERSION",
    "TokenCounts",
    "TokenProfile",
    "VLLM_VERSION",
    "default_profile",
    "request_stream",
    "rust_float",
]

VLLM_VERSION = "0.12.0"
"""The vLLM release whose V1 metrics :class:`SimVllmServer` serves."""

TGI_VERSION = "3.3.6"
"""The TGI release whose router metrics :class:`SimTgiServer` serves."""

FINISH_REASONS = ("stop", "length", "abort", "error")
"""vLLM's finish reasons; V1 creates a ``request_success`` series for each."""

_go_float: Callable[[float], str] = floatToGoString


@dataclass(frozen=True)
class TokenProfile:
    """How one model's traffic looks on one engine.

    Attributes:
        generation_tokens_per_s: generation throughput at full load (100 % SM), in
            tokens per second; an integer so that progress stays rational.
        prompt_tokens_median: median prompt length, in tokens.
        prompt_tokens_spread: sigma of the log-normal prompt length
            (dimensionless).
        generation_tokens_median: median length of a reply that stops by itself,
            in tokens.
        generation_tokens_spread: sigma of the log-normal reply length
            (dimensionless).
        max_tokens: the ``max_tokens`` every request asks for, in tokens.
        length_share: share of requests that run into ``max_tokens``, in [0, 1].
        abort_share: share of requests the client cancels, in [0, 1].
        prefix_cache_hit_share: share of each prompt found in the prefix cache,
            in [0, 1].
        prefill_tokens_per_s: prefill speed of one request on an idle engine, in
            tokens per second.
        inter_token_latency_idle_s: time between two tokens of a request on an
            idle engine, in seconds.
        inter_token_latency_full_s: the same at full load, in seconds.
        max_input_tokens: the longest prompt accepted, in tokens.
        max_model_len: the context length (prompt plus reply), in tokens.
        kv_cache_tokens: KV-cache capacity, in tokens.
    """

    generation_tokens_per_s: int
    prompt_tokens_median: int
    prompt_tokens_spread: float
    generation_tokens_median: int
    generation_tokens_spread: float
    max_tokens: int
    length_share: float
    abort_share: float
    prefix_cache_hit_share: float
    prefill_tokens_per_s: float
    inter_token_latency_idle_s: float
    inter_token_latency_full_s: float
    max_input_tokens: int
    max_model_len: int
    kv_cache_tokens: int

    def inter_token_latency_s(self, load: float) -> float:
        """Time between two tokens of one request at a load in [0, 1], in seconds."""
        idle, full = self.inter_token_latency_idle_s, self.inter_token_latency_full_s
        return idle + (full - idle) * load


DEMO_PROFILES: Mapping[str, TokenProfile] = {
    "meta-llama/Llama-3.1-8B-Instruct": TokenProfile(
        generation_tokens_per_s=2400,
        prompt_tokens_median=600,
        prompt_tokens_spread=0.8,
        generation_tokens_median=180,
        generation_tokens_spread=0.7,
        max_tokens=1024,
        length_share=0.12,
        abort_share=0.02,
        prefix_cache_hit_share=0.3,
        prefill_tokens_per_s=20_000.0,
        inter_token_latency_idle_s=0.010,
        inter_token_latency_full_s=0.030,
        max_input_tokens=130_048,
        max_model_len=131_072,
        kv_cache_tokens=466_032,
    ),
    "mistralai/Mistral-7B-Instruct-v0.3": TokenProfile(
        generation_tokens_per_s=2000,
        prompt_tokens_median=450,
        prompt_tokens_spread=0.7,
        generation_tokens_median=220,
        generation_tokens_spread=0.6,
        max_tokens=1024,
        length_share=0.10,
        abort_share=0.0,
        prefix_cache_hit_share=0.2,
        prefill_tokens_per_s=18_000.0,
        inter_token_latency_idle_s=0.012,
        inter_token_latency_full_s=0.035,
        max_input_tokens=32_767,
        max_model_len=32_768,
        kv_cache_tokens=180_000,
    ),
    "Qwen/Qwen2.5-7B-Instruct": TokenProfile(
        generation_tokens_per_s=2200,
        prompt_tokens_median=500,
        prompt_tokens_spread=0.75,
        generation_tokens_median=200,
        generation_tokens_spread=0.65,
        max_tokens=1024,
        length_share=0.08,
        abort_share=0.01,
        prefix_cache_hit_share=0.4,
        prefill_tokens_per_s=19_000.0,
        inter_token_latency_idle_s=0.011,
        inter_token_latency_full_s=0.032,
        max_input_tokens=31_744,
        max_model_len=32_768,
        kv_cache_tokens=200_000,
    ),
}
"""Token profiles of the demo's models, by model ID."""


def default_profile(engine: str) -> TokenProfile:
    """A profile for a model that :data:`DEMO_PROFILES` does not list.

    Args:
        engine: the engine kind; TGI gets a profile without client aborts, which
            its metrics could not show as finished requests.

    Returns:
        A 7-8B model's profile on one H100.
    """
    base = DEMO_PROFILES["mistralai/Mistral-7B-Instruct-v0.3"]
    if engine == "tgi":
        return base
    return DEMO_PROFILES["meta-llama/Llama-3.1-8B-Instruct"]


@dataclass(frozen=True)
class SimRequest:
    """One request of a simulated engine.

    Attributes:
        prompt_tokens: prompt length, in tokens.
        generation_tokens: tokens generated before it finished, in tokens.
        max_tokens: the request's ``max_tokens`` parameter, in tokens.
        finish_reason: ``stop``, ``length`` or ``abort``.
    """

    prompt_tokens: int
    generation_tokens: int
    max_tokens: int
    finish_reason: str


def _log_normal(rng: random.Random, median: int, spread: float) -> int:
    return round(rng.lognormvariate(math.log(median), spread))


def request_stream(profile: TokenProfile, seed: str) -> Iterator[SimRequest]:
    """The endless, reproducible sequence of requests of one engine run.

    Args:
        profile: the model's traffic.
        seed: any string; the same seed gives the same requests on every
            platform and Python version that keeps ``random``'s string seeding.

    Yields:
        Requests, in the order the engine serves them.
    """
    rng = random.Random(seed)
    max_tokens = profile.max_tokens
    while True:
        prompt = _log_normal(
            rng, profile.prompt_tokens_median, profile.prompt_tokens_spread
        )
        prompt = min(max(prompt, 1), profile.max_input_tokens)
        roll = rng.random()
        if roll < profile.abort_share:
            reason, generated = "abort", rng.randint(1, max_tokens)
        elif roll < profile.abort_share + profile.length_share:
            reason, generated = "length", max_tokens
        else:
            generated = _log_normal(
                rng, profile.generation_tokens_median, profile.generation_tokens_spread
            )
            reason, generated = "stop", min(max(generated, 1), max_tokens - 1)
        yield SimRequest(prompt, generated, max_tokens, reason)


@dataclass(frozen=True)
class RequestTiming:
    """How long one request spent in each phase, as its server reports it.

    Attributes:
        queue_s: waiting before its prefill, in seconds.
        prefill_s: prefill, in seconds.
        decode_s: decoding after the first token, in seconds.
        inter_token_latency_s: time between two of its tokens, in seconds.
    """

    queue_s: float
    prefill_s: float
    decode_s: float
    inter_token_latency_s: float

    @property
    def time_to_first_token_s(self) -> float:
        """Queue plus prefill, in seconds."""
        return self.queue_s + self.prefill_s

    @property
    def e2e_s(self) -> float:
        """Arrival to last token, in seconds."""
        return self.queue_s + self.prefill_s + self.decode_s


@dataclass(frozen=True)
class TokenCounts:
    """Cumulative counts of an engine, exact.

    Attributes:
        prompt_tokens: prompt tokens prefilled, in tokens; what vLLM's
            ``prompt_tokens_total`` and TGI's ``tgi_request_input_length_sum``
            show.
        generation_tokens: tokens generated, including those of requests still
            decoding, in tokens; what vLLM's ``generation_tokens_total`` shows.
        started_requests: requests whose prefill was done, a count (TGI's
            ``tgi_request_count``).
        finished_requests: requests finished for any reason, a count (the sum of
            vLLM's ``request_success_total``, TGI's ``tgi_request_success``).
        finished_prompt_tokens: prompt tokens of the finished requests, in tokens
            (vLLM's ``request_prompt_tokens_sum``).
        finished_generation_tokens: tokens generated by the finished requests, in
            tokens (vLLM's ``request_generation_tokens_sum``, TGI's
            ``tgi_request_generated_tokens_sum``).
    """

    prompt_tokens: int = 0
    generation_tokens: int = 0
    started_requests: int = 0
    finished_requests: int = 0
    finished_prompt_tokens: int = 0
    finished_generation_tokens: int = 0

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(
            self.prompt_tokens + other.prompt_tokens,
            self.generation_tokens + other.generation_tokens,
            self.started_requests + other.started_requests,
            self.finished_requests + other.finished_requests,
            self.finished_prompt_tokens + other.finished_prompt_tokens,
            self.finished_generation_tokens + other.finished_generation_tokens,
        )


@dataclass(frozen=True)
class EngineTruth:
    """What a simulated engine really did, for tests and the demo's table.

    Attributes:
        name: the demo job's name.
        engine: the engine kind (``vllm``, ``tgi``, ``sglang``).
        model: the model it serves, as its server names it.
        pid: PID of its current process; None while the process is gone.
        runs: processes it has had so far, a count (1 until its first restart).
        since_start: counts over every run since the simulation began.
        this_run: counts of the current (or last) run, which is what its server's
            counters hold.
    """

    name: str
    engine: str
    model: str
    pid: int | None
    runs: int
    since_start: TokenCounts
    this_run: TokenCounts


class EngineObserver(Protocol):
    """Receives the events of a :class:`SimEngine`, under the engine's lock."""

    def run_started(self, wall_time_s: float) -> None:
        """A new process started, at a wall-clock time in seconds since the epoch."""

    def request_started(self, request: SimRequest, timing: RequestTiming) -> None:
        """A request was admitted and prefilled."""

    def request_finished(self, request: SimRequest, timing: RequestTiming) -> None:
        """A request finished."""

    def decode_steps(self, steps: int, batch_size: int, step_s: float) -> None:
        """The engine ran ``steps`` decode steps of ``batch_size`` requests each.

        Each step took ``step_s`` seconds and yielded one token per request.
        """


class _Run:
    """The state of one process of an engine: its progress and counters."""

    def __init__(
        self, pid: int, wall_time_s: float, requests: Iterator[SimRequest]
    ) -> None:
        self.pid = pid
        self.wall_time_s = wall_time_s
        self.progress = Fraction(0)
        self.requests = requests
        self.current = next(requests)
        self.current_offset = 0
        self.current_started = False
        self.decode_steps = Fraction(0)
        self.decode_steps_told = 0
        self.prompt_tokens = 0
        self.started_requests = 0
        self.finished_requests = 0
        self.finished_prompt_tokens = 0
        self.finished_generation_tokens = 0

    def counts(self) -> TokenCounts:
        return TokenCounts(
            prompt_tokens=self.prompt_tokens,
            generation_tokens=math.floor(self.progress),
            started_requests=self.started_requests,
            finished_requests=self.finished_requests,
            finished_prompt_tokens=self.finished_prompt_tokens,
            finished_generation_tokens=self.finished_generation_tokens,
        )


class SimEngine:
    """The token model of one inference job; see the module docstring.

    Every method holds :attr:`lock`; :meth:`truth` and :meth:`catch_up` first
    integrate up to the clock's present with the load last set, as the simulated
    GPUs do on every read, so readers never need to tick the engine.

    Args:
        job: the demo job it models.
        profile: its model's traffic.
        clock: the simulation's clock (``monotonic`` for integration, ``time`` for
            the run's start stamps).

    Attributes:
        job: the demo job it models.
        profile: its model's traffic.
        clock: the simulation's clock.
        lock: held by every change and read; servers hold it while they render.
    """

    def __init__(self, job: DemoJob, profile: TokenProfile, clock: Clock) -> None:
        self.job = job
        self.profile = profile
        self.clock = clock
        self.lock = threading.RLock()
        self._last_t = Fraction(clock.monotonic())
        self._sm_percent = 0
        self._run: _Run | None = None
        self._last_run: _Run | None = None
        self._runs = 0
        self._before_this_run = TokenCounts()
        self._observers: list[EngineObserver] = []

    @property
    def up(self) -> bool:
        """Whether its process exists (its server answers)."""
        with self.lock:
            return self._run is not None

    @property
    def sm_percent(self) -> int:
        """The SM share that drives it now, in percent."""
        with self.lock:
            return self._sm_percent

    def attach(self, observer: EngineObserver) -> None:
        """Adds an observer of its events; only before its first run.

        Raises:
            RuntimeError: the engine has already run, so the observer would miss
                events.
        """
        with self.lock:
            if self._runs:
                raise RuntimeError("observers must attach before the first run")
            self._observers.append(observer)

    def update(self, now: float, pid: int | None, load: float) -> None:
        """Integrates up to ``now``, then takes the job's process and load at ``now``.

        Args:
            now: monotonic time in seconds, on the simulation's clock.
            pid: the job's current PID, None while its process is gone; a PID other
                than the current run's starts a new run, counters at zero.
            load: the job's load in [0, 1], as the workload applies it.
        """
        with self.lock:
            self._integrate_to(Fraction(now))
            current = self._run.pid if self._run is not None else None
            if pid != current:
                if self._run is not None:
                    self._before_this_run += self._run.counts()
                    logger.debug(
                        "simulated %s %s stopped (pid %d)",
                        self.job.engine,
                        self.job.name,
                        self._run.pid,
                    )
                    self._run = None
                if pid is not None:
                    self._start_run(pid)
            self._sm_percent = 0 if pid is None else round(100 * load)

    def catch_up(self) -> None:
        """Integrates up to the clock's present with the load last set."""
        with self.lock:
            self._integrate_to(Fraction(self.clock.monotonic()))

    def truth(self) -> EngineTruth:
        """The exact counts at the clock's present."""
        with self.lock:
            self.catch_up()
            run = self._run or self._last_run
            this_run = run.counts() if run is not None else TokenCounts()
            since_start = self._before_this_run
            if self._run is not None:
                since_start += this_run
            return EngineTruth(
                name=self.job.name,
                engine=self.job.engine,
                model=self.job.model,
                pid=self._run.pid if self._run is not None else None,
                runs=self._runs,
                since_start=since_start,
                this_run=this_run,
            )

    def run_counts(self) -> TokenCounts:
        """Counts of the current run as last integrated (zeros while down)."""
        with self.lock:
            return self._run.counts() if self._run is not None else TokenCounts()

    def run_started_s(self) -> float:
        """Wall-clock start of the current (or last) run, in seconds since the epoch."""
        with self.lock:
            run = self._run or self._last_run
            return run.wall_time_s if run is not None else self.clock.time()

    def load(self) -> float:
        """The load now driving it, in [0, 1]: its SM share."""
        with self.lock:
            return self._sm_percent / 100

    def running_requests(self) -> int:
        """Requests in the running batch: throughput times inter-token latency."""
        load = self.load()
        rate = self.profile.generation_tokens_per_s * load
        return round(rate * self.profile.inter_token_latency_s(load))

    def waiting_requests(self) -> int:
        """Requests queued: none below 75 % load, then up to the running batch."""
        return round(self.running_requests() * max(0.0, self.load() - 0.75) * 4)

    def kv_cache_usage(self) -> float:
        """Share of the KV cache the running batch holds, in [0, 1]."""
        profile = self.profile
        per_request = (
            profile.prompt_tokens_median + profile.generation_tokens_median / 2
        )
        used = self.running_requests() * per_request
        return min(1.0, used / profile.kv_cache_tokens)

    # The model

    def _start_run(self, pid: int) -> None:
        wall = self.clock.time()
        seed = f"{self.job.name}/{pid}"
        run = _Run(pid, wall, request_stream(self.profile, seed))
        self._run = self._last_run = run
        self._runs += 1
        for observer in self._observers:
            observer.run_started(wall)
        logger.debug(
            "simulated %s %s started (pid %d)", self.job.engine, self.job.name, pid
        )

    def _timing(self, request: SimRequest) -> RequestTiming:
        load = self.load()
        inter_token_s = self.profile.inter_token_latency_s(load)
        request_rate = (
            self.profile.generation_tokens_per_s
            * load
            / self.profile.generation_tokens_median
        )
        waiting = self.waiting_requests()
        queue_s = 0.002 + (waiting / request_rate if request_rate > 0 else 0.0)
        prefill_s = request.prompt_tokens / self.profile.prefill_tokens_per_s
        return RequestTiming(
            queue_s=queue_s,
            prefill_s=prefill_s * (1.0 + load),
            decode_s=max(0, request.generation_tokens - 1) * inter_token_s,
            inter_token_latency_s=inter_token_s,
        )

    def _integrate_to(self, now: Fraction) -> None:
        dt = now - self._last_t
        if dt <= 0:
            return
        self._last_t = now
        run = self._run
        if run is None or self._sm_percent == 0:
            return
        rate = self.profile.generation_tokens_per_s * Fraction(self._sm_percent, 100)
        self._progress_to(run, run.progress + rate * dt)

    def _progress_to(self, run: _Run, progress: Fraction) -> None:
        previous = run.progress
        while True:
            request = run.current
            if not run.current_started:
                if progress <= run.current_offset:
                    break
                run.current_started = True
                run.started_requests += 1
                run.prompt_tokens += request.prompt_tokens
                timing = self._timing(request)
                for observer in self._observers:
                    observer.request_started(request, timing)
            end = run.current_offset + request.generation_tokens
            if progress < end:
                break
            run.finished_requests += 1
            run.finished_prompt_tokens += request.prompt_tokens
            run.finished_generation_tokens += request.generation_tokens
            timing = self._timing(request)
            for observer in self._observers:
                observer.request_finished(request, timing)
            run.current_offset = end
            run.current = next(run.requests)
            run.current_started = False
        run.progress = progress

        # Batched decode: one step yields one token for each running request.
        batch_size = max(1, self.running_requests())
        run.decode_steps += (progress - previous) / batch_size
        steps = math.floor(run.decode_steps) - run.decode_steps_told
        if steps > 0:
            run.decode_steps_told += steps
            step_s = self.profile.inter_token_latency_s(self.load())
            for observer in self._observers:
                observer.decode_steps(steps, batch_size, step_s)


class _Histogram:
    """Bucket counts, sum and count of one histogram series."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * len(self.bounds)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        if times <= 0:
            return
        index = bisect.bisect_left(self.bounds, value)
        if index < len(self._counts):
            self._counts[index] += times
        self.count += times
        self.sum += value * times

    def cumulative(self) -> list[int]:
        """Cumulative counts, one per bound (``+Inf`` is :attr:`count`)."""
        total, out = 0, []
        for count in self._counts:
            total += count
            out.append(total)
        return out


def _one_two_five(max_value: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, … up to ``max_value``, as vLLM buckets token counts."""
    bounds: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_value:
                return bounds
            bounds.append(float(mantissa * scale))
        scale *= 10


# vLLM

_VLLM_TTFT_BOUNDS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
    5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_VLLM_TOKEN_LATENCY_BOUNDS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
_VLLM_REQUEST_LATENCY_BOUNDS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
_VLLM_N_BOUNDS = (1.0, 2.0, 5.0, 10.0, 20.0)
_VLLM_STEP_BOUNDS = (
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
    8192.0, 16384.0,
)  # fmt: skip
_VLLM_BLOCK_SIZE = 16

# Histogram families of the V1 logger, in registration order: name, help text,
# kind of bounds.
_VLLM_HISTOGRAMS = (
    ("request_prompt_tokens", "Prompt length of finished requests.", "tokens"),
    ("request_generation_tokens", "Reply length of finished requests.", "tokens"),
    ("iteration_tokens_total", "Tokens per engine step.", "step"),
    (
        "request_max_num_generation_tokens",
        "Largest number of tokens a finished request could generate.",
        "tokens",
    ),
    ("request_params_n", "The n parameter of finished requests.", "n"),
    ("request_params_max_tokens", "The max_tokens parameter of requests.", "tokens"),
    ("time_to_first_token_seconds", "Seconds from arrival to first token.", "ttft"),
    ("inter_token_latency_seconds", "Seconds between two tokens.", "token"),
    (
        "request_time_per_output_token_seconds",
        "Mean seconds per generated token, per request.",
        "token",
    ),
    ("e2e_request_latency_seconds", "Seconds from arrival to finish.", "request"),
    ("request_queue_time_seconds", "Seconds a request waited.", "request"),
    ("request_inference_time_seconds", "Seconds a request ran.", "request"),
    ("request_prefill_time_seconds", "Seconds a request spent in prefill.", "request"),
    ("request_decode_time_seconds", "Seconds a request spent decoding.", "request"),
)


class _VllmMetrics:
    """The series of vLLM's V1 Prometheus logger for one engine index."""

    def __init__(self, profile: TokenProfile) -> None:
        token_bounds = _one_two_five(profile.max_model_len)
        self._bounds: dict[str, Sequence[float]] = {
            "tokens": token_bounds,
            "n": _VLLM_N_BOUNDS,
            "step": _VLLM_STEP_BOUNDS,
            "ttft": _VLLM_TTFT_BOUNDS,
            "token": _VLLM_TOKEN_LATENCY_BOUNDS,
            "request": _VLLM_REQUEST_LATENCY_BOUNDS,
        }
        self._hit_share = profile.prefix_cache_hit_share
        self.run_started(0.0)

    def run_started(self, wall_time_s: float) -> None:
        self.created_s = wall_time_s
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.finished_by_reason = dict.fromkeys(FINISH_REASONS, 0)
        self.histograms = {
            name: _Histogram(self._bounds[kind]) for name, _, kind in _VLLM_HISTOGRAMS
        }

    def request_started(self, request: SimRequest, timing: RequestTiming) -> None:
        self.prefix_cache_queries += request.prompt_tokens
        # Whole KV blocks of the prompt's cached share.
        cached = int(request.prompt_tokens * self._hit_share)
        self.prefix_cache_hits += cached - cached % _VLLM_BLOCK_SIZE
        self.histograms["iteration_tokens_total"].observe(request.prompt_tokens)
        self.histograms["time_to_first_token_seconds"].observe(
            timing.time_to_first_token_s
        )

    def request_finished(self, request: SimRequest, timing: RequestTiming) -> None:
        self.finished_by_reason[request.finish_reason] += 1
        generated = request.generation_tokens
        observe = {
            "request_prompt_tokens": request.prompt_tokens,
            "request_generation_tokens": generated,
            "request_max_num_generation_tokens": request.max_tokens,
            "request_params_n": 1,
            "request_params_max_tokens": request.max_tokens,
            "request_time_per_output_token_seconds": timing.decode_s
            / max(1, generated - 1),
            "e2e_request_latency_seconds": timing.e2e_s,
            "request_queue_time_seconds": timing.queue_s,
            "request_inference_time_seconds": timing.prefill_s + timing.decode_s,
            "request_prefill_time_seconds": timing.prefill_s,
            "request_decode_time_seconds": timing.decode_s,
        }
        for name, value in observe.items():
            self.histograms[name].observe(value)
        self.histograms["inter_token_latency_seconds"].observe(
            timing.inter_token_latency_s, generated - 1
        )

    def decode_steps(self, steps: int, batch_size: int, step_s: float) -> None:
        self.histograms["iteration_tokens_total"].observe(batch_size, steps)


class _VllmCollector:
    """Builds vLLM's families at collect time, from the engine and its series."""

    def __init__(self, engine: SimEngine, metrics: _VllmMetrics) -> None:
        self._engine = engine
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        engine, metrics = self._engine, self._metrics
        labels = {"model_name": engine.job.model, "engine": "0"}
        names, values = list(labels), list(labels.values())
        created = metrics.created_s
        yield from _process_families(engine)

        for name, text, value in (
            ("num_requests_running", "Requests in the running batch.",
             engine.running_requests()),
            ("num_requests_waiting", "Requests waiting to run.",
             engine.waiting_requests()),
            ("kv_cache_usage_perc", "Share of the KV cache in use (1 = full).",
             engine.kv_cache_usage()),
        ):  # fmt: skip
            gauge = GaugeMetricFamily(f"vllm:{name}", text, labels=names)
            gauge.add_metric(values, float(value))
            yield gauge

        counts = engine.run_counts()
        for name, text, total in (
            ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
             metrics.prefix_cache_queries),
            ("prefix_cache_hits", "Prompt tokens found in the prefix cache.",
             metrics.prefix_cache_hits),
            ("num_preemptions", "Requests preempted so far.", 0),
            ("prompt_tokens", "Prompt tokens prefilled.", counts.prompt_tokens),
            ("generation_tokens", "Tokens generated.", counts.generation_tokens),
        ):  # fmt: skip
            counter = CounterMetricFamily(f"vllm:{name}", text, labels=names)
            counter.add_metric(values, float(total), created=created)
            yield counter

        success = CounterMetricFamily(
            "vllm:request_success",
            "Finished requests, by why they finished.",
            labels=[*names, "finished_reason"],
        )
        for reason, finished in metrics.finished_by_reason.items():
            success.add_metric([*values, reason], float(finished), created=created)
        yield success

        for name, text, _ in _VLLM_HISTOGRAMS:
            yield _vllm_histogram(
                f"vllm:{name}", text, labels, metrics.histograms[name], created
            )

        info_labels = {
            "block_size": str(_VLLM_BLOCK_SIZE),
            "cache_dtype": "auto",
            "enable_prefix_caching": "True",
            "engine": "0",
            "gpu_memory_utilization": "0.9",
            "num_gpu_blocks": str(engine.profile.kv_cache_tokens // _VLLM_BLOCK_SIZE),
        }
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "The engine's KV-cache configuration.",
            labels=list(info_labels),
        )
        info.add_metric(list(info_labels.values()), 1.0)
        yield info


def _vllm_histogram(
    name: str,
    text: str,
    labels: Mapping[str, str],
    histogram: _Histogram,
    created_s: float,
) -> Metric:
    family = Metric(name, text, "histogram")
    for bound, count in zip(histogram.bounds, histogram.cumulative(), strict=True):
        family.add_sample(
            f"{name}_bucket", {**labels, "le": _go_float(bound)}, float(count)
        )
    family.add_sample(
        f"{name}_bucket", {**labels, "le": "+Inf"}, float(histogram.count)
    )
    family.add_sample(f"{name}_count", dict(labels), float(histogram.count))
    family.add_sample(f"{name}_sum", dict(labels), histogram.sum)
    family.add_sample(f"{name}_created", dict(labels), created_s)
    return family


def _process_families(engine: SimEngine) -> Iterator[Metric]:
    """The Python and process families a single-process vLLM server exposes."""
    started = engine.run_started_s()
    uptime = max(0.0, engine.clock.time() - started)
    generations = ("0", "1", "2")
    for name, text, per_second in (
        ("python_gc_objects_collected", "Objects the collector freed.",
         (310.0, 42.0, 3.0)),
        ("python_gc_objects_uncollectable", "Objects the collector could not free.",
         (0.0, 0.0, 0.0)),
        ("python_gc_collections", "Collector runs.", (9.0, 0.8, 0.05)),
    ):  # fmt: skip
        family = CounterMetricFamily(name, text, labels=["generation"])
        for generation, rate in zip(generations, per_second, strict=True):
            family.add_metric([generation], float(math.floor(rate * uptime)))
        yield family
    python = GaugeMetricFamily(
        "python_info",
        "The Python interpreter.",
        labels=["implementation", "major", "minor", "patchlevel", "version"],
    )
    python.add_metric(["CPython", "3", "12", "11", "3.12.11"], 1.0)
    yield python
    for name, text, value in (
        ("process_virtual_memory_bytes", "Virtual memory, in bytes.",
         41_270_648_832.0),
        ("process_resident_memory_bytes", "Resident memory, in bytes.",
         6_843_756_544.0),
        ("process_start_time_seconds", "Process start, in seconds since the epoch.",
         float(started)),
    ):  # fmt: skip
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], value)
        yield gauge
    cpu = CounterMetricFamily("process_cpu_seconds", "CPU time used, in seconds.")
    cpu.add_metric([], round(uptime * 0.85, 2))
    yield cpu
    for name, text, value in (
        ("process_open_fds", "Open file descriptors.", 187.0),
        ("process_max_fds", "Most file descriptors it may open.", 1_048_576.0),
    ):
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], value)
        yield gauge


# TGI


def _tgi_duration_bounds() -> tuple[float, ...]:
    """35 geometric bounds, 0.1 ms grown by half, as the router multiplies them."""
    bounds, value = [], 0.0001
    for _ in range(35):
        value *= 1.5
        bounds.append(value)
    return tuple(bounds)


def _tgi_linear_bounds(max_value: int, count: int) -> tuple[float, ...]:
    step = max_value / float(count)
    return tuple(step * float(n + 1) for n in range(count))


def rust_float(value: float) -> str:
    """Formats a float as Rust's ``Display`` for ``f64`` does.

    The shortest digits that read back to the same float, never in exponent
    form, and no fraction part for whole numbers: ``2.0`` is ``2``, ``1e-05``
    is ``0.00001``.

    Args:
        value: any float.

    Returns:
        The text TGI's exporter writes for it.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


class _TgiMetrics:
    """The series TGI's router and v3 backend record, created as they first move."""

    def __init__(self, profile: TokenProfile) -> None:
        duration = _tgi_duration_bounds()
        self._bounds = {
            "input": _tgi_linear_bounds(profile.max_input_tokens, 100),
            "total": _tgi_linear_bounds(profile.max_model_len, 100),
            "batch": tuple(float(n + 1) for n in range(1024)),
            "duration": duration,
        }
        self.run_started(0.0)

    def run_started(self, wall_time_s: float) -> None:
        self.gauges_set = False
        self.counters: dict[str, dict[tuple[tuple[str, str], ...], int]] = {
            name: {} for name, _ in _TGI_COUNTERS
        }
        self.histograms: dict[str, dict[tuple[tuple[str, str], ...], _Histogram]] = {
            name: {} for name, _, _ in _TGI_HISTOGRAMS
        }

    def _count(self, name: str, labels: tuple[tuple[str, str], ...] = ()) -> None:
        self.counters[name][labels] = self.counters[name].get(labels, 0) + 1

    def _observe(
        self,
        name: str,
        value: float,
        labels: tuple[tuple[str, str], ...] = (),
        times: int = 1,
    ) -> None:
        series = self.histograms[name]
        if labels not in series:
            kind = next(kind for n, _, kind in _TGI_HISTOGRAMS if n == name)
            series[labels] = _Histogram(self._bounds[kind])
        series[labels].observe(value, times)

    def _observe_call(
        self, method: tuple[tuple[str, str], ...], seconds: float, times: int
    ) -> None:
        """One inference call's phases: forward, token decoding, filtering."""
        self._observe("tgi_batch_forward_duration", seconds * 0.9, method, times)
        self._observe("tgi_batch_decode_duration", seconds * 0.06, method, times)
        self._observe("tgi_batch_filter_duration", seconds * 0.03, method, times)
        self._observe("tgi_batch_inference_duration", seconds, method, times)

    def request_started(self, request: SimRequest, timing: RequestTiming) -> None:
        prefill = (("method", "prefill"),)
        first = not self.counters["tgi_request_count"]
        self._count("tgi_request_count")
        self._observe("tgi_request_input_length", request.prompt_tokens)
        self._observe("tgi_request_max_new_tokens", request.max_tokens)
        self._observe("tgi_batch_next_size", 1.0)
        self._count("tgi_batch_inference_count", prefill)
        self._observe_call(prefill, timing.prefill_s, 1)
        self._count("tgi_batch_inference_success", prefill)
        if not first:
            # It joined a batch that was already decoding.
            self._count("tgi_batch_concat", (("reason", "backpressure"),))
            self._observe("tgi_batch_concat_duration", 0.0002, (("method", "decode"),))
        self.gauges_set = True

    def request_finished(self, request: SimRequest, timing: RequestTiming) -> None:
        validation_s = 0.0002 + request.prompt_tokens * 2e-7
        inference_s = timing.prefill_s + timing.decode_s
        generated = request.generation_tokens
        self._count("tgi_request_success")
        self._observe(
            "tgi_request_duration", validation_s + timing.queue_s + inference_s
        )
        self._observe("tgi_request_validation_duration", validation_s)
        self._observe("tgi_request_queue_duration", timing.queue_s)
        self._observe("tgi_request_inference_duration", inference_s)
        self._observe(
            "tgi_request_mean_time_per_token_duration", inference_s / generated
        )
        self._observe("tgi_request_generated_tokens", generated)

    def decode_steps(self, steps: int, batch_size: int, step_s: float) -> None:
        decode = (("method", "decode"),)
        counts = self.counters
        for name in ("tgi_batch_inference_count", "tgi_batch_inference_success"):
            counts[name][decode] = counts[name].get(decode, 0) + steps
        self._observe_call(decode, step_s, steps)


# Families in the order the exporter writes them (counters, gauges, histograms);
# a help text of None is a family the router never describes.
_TGI_COUNTERS: tuple[tuple[str, str | None], ...] = (
    ("tgi_request_count", "Requests received"),
    ("tgi_request_success", "Requests that succeeded"),
    ("tgi_batch_inference_count", "Inference calls, by method (prefill or decode)"),
    ("tgi_batch_inference_success", "Inference calls that succeeded, by method"),
    ("tgi_batch_concat", None),
)
_TGI_GAUGES: tuple[tuple[str, str], ...] = (
    ("tgi_queue_size", "Requests in the queue"),
    ("tgi_batch_current_size", "Requests in the running batch"),
    ("tgi_batch_current_max_tokens", "Token budget of the running batch"),
)
_TGI_HISTOGRAMS: tuple[tuple[str, str | None, str], ...] = (
    ("tgi_request_input_length", "Prompt length per request, in tokens", "input"),
    ("tgi_request_max_new_tokens", "max_new_tokens per request", "total"),
    ("tgi_batch_next_size", "Size of each new batch", "batch"),
    ("tgi_batch_forward_duration", "Forward pass time, by method", "duration"),
    ("tgi_batch_decode_duration", "Token decoding time, by method", "duration"),
    ("tgi_batch_filter_duration", "Batch filtering time, by method", "duration"),
    ("tgi_batch_inference_duration", "Inference call time, by method", "duration"),
    ("tgi_batch_concat_duration", None, "duration"),
    ("tgi_request_validation_duration", "Validation time per request", "duration"),
    ("tgi_request_queue_duration", "Queue time per request", "duration"),
    ("tgi_request_inference_duration", "Inference time per request", "duration"),
    (
        "tgi_request_mean_time_per_token_duration",
        "Mean time per generated token, per request",
        "duration",
    ),
    ("tgi_request_duration", "Total time per request", "duration"),
    ("tgi_request_generated_tokens", "Generated tokens per request", "total"),
)


def _tgi_series(
    name: str,
    labels: tuple[tuple[str, str], ...],
    value: str,
    extra: tuple[str, str] | None = None,
) -> str:
    pairs = [f'{key}="{text}"' for key, text in labels]
    if extra is not None:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return f"{name}{{{','.join(pairs)}}} {value}\n" if pairs else f"{name} {value}\n"


def _tgi_header(name: str, help_text: str | None, kind: str) -> str:
    head = f"# HELP {name} {help_text}\n" if help_text is not None else ""
    return f"{head}# TYPE {name} {kind}\n"


def _render_tgi(engine: SimEngine, metrics: _TgiMetrics) -> str:
    """The text TGI's router answers on ``/metrics``: counters, gauges, histograms."""
    out: list[str] = []
    for name, help_text in _TGI_COUNTERS:
        series = metrics.counters[name]
        if not series:
            continue
        out.append(_tgi_header(name, help_text, "counter"))
        out.extend(_tgi_series(name, labels, str(v)) for labels, v in series.items())
        out.append("\n")

    if metrics.gauges_set:
        running = engine.running_requests()
        per_request = engine.profile.prompt_tokens_median + engine.profile.max_tokens
        for (name, help_text), value in zip(
            _TGI_GAUGES,
            (engine.waiting_requests(), running, running * per_request),
            strict=True,
        ):
            out.append(_tgi_header(name, help_text, "gauge"))
            out.append(_tgi_series(name, (), rust_float(float(value))))
            out.append("\n")

    for name, help_text, _ in _TGI_HISTOGRAMS:
        histograms = metrics.histograms[name]
        if not histograms:
            continue
        out.append(_tgi_header(name, help_text, "histogram"))
        for labels, histogram in histograms.items():
            bucket = f"{name}_bucket"
            for bound, count in zip(
                histogram.bounds, histogram.cumulative(), strict=True
            ):
                out.append(
                    _tgi_series(bucket, labels, str(count), ("le", rust_float(bound)))
                )
            out.append(
                _tgi_series(bucket, labels, str(histogram.count), ("le", "+Inf"))
            )
            out.append(_tgi_series(f"{name}_sum", labels, rust_float(histogram.sum)))
            out.append(_tgi_series(f"{name}_count", labels, str(histogram.count)))
        out.append("\n")
    return "".join(out)


# Servers


def _fake_sha(text: str) -> str:
    """A stable 40-digit hex string standing in for a Git or Hub revision."""
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


class _SimServer:
    """An aiohttp app on 127.0.0.1 that answers only while its engine is up."""

    def __init__(self, engine: SimEngine, host: str, port: int) -> None:
        self.engine = engine
        self._host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port bound.

        Raises:
            RuntimeError: the server is not started.
        """
        if self._port is None:
            raise RuntimeError("the simulated server is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        """Binds and starts serving.

        Raises:
            OSError: the address cannot be bound.
        """
        app = web.Application(middlewares=[self._drop_while_down])
        self._add_routes(app)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        logger.info(
            "simulated %s server for %s on %s",
            self.engine.job.engine,
            self.engine.job.model,
            self.url,
        )

    async def stop(self) -> None:
        """Stops serving and closes open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._port = None

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @web.middleware
    async def _drop_while_down(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if not self.engine.up:
            # Nothing listens for a dead process: close without answering.
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)
        return await handler(request)


class SimVllmServer(_SimServer):
    """vLLM's OpenAI-compatible server, as far as a metering agent sees it.

    Serves ``/metrics`` (V1 engine metrics through ``prometheus_client``, with
    content negotiation and gzip as vLLM's mounted app does), ``/version``,
    ``/v1/models`` and ``/health``.

    Args:
        engine: the token model it exposes; attaches to it, so create the server
            before the engine's first run.
        host: address to bind.
        port: port to bind; 0 takes any free port.
    """

    def __init__(
        self, engine: SimEngine, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(engine, host, port)
        self._metrics = _VllmMetrics(engine.profile)
        engine.attach(self._metrics)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_VllmCollector(engine, self._metrics))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The ``/metrics`` body and content type for an ``Accept`` header."""
        encoder, content_type = choose_encoder(accept)
        with self.engine.lock:
            self.engine.catch_up()
            return encoder(self._registry), content_type

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/metrics/", self._handle_metrics)
        app.router.add_get("/version", self._handle_version)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/health", self._handle_health)

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.render(request.headers.get("Accept", ""))
        headers = {"Content-Type": content_type}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def _handle_version(self, request: web.Request) -> web.Response:
        return _json({"version": VLLM_VERSION})

    async def _handle_models(self, request: web.Request) -> web.Response:
        model = self.engine.job.model
        created = int(self.engine.clock.time())
        card = {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": model,
            "parent": None,
            "max_model_len": self.engine.profile.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{_fake_sha(model)[:32]}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        return _json({"object": "list", "data": [card]})

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)


class SimTgiServer(_SimServer):
    """TGI's router (v3 backend), as far as a metering agent sees it.

    Serves ``/metrics`` in the Rust exporter's text, ``/info``, ``/v1/models`` and
    ``/health``.

    Args:
        engine: the token model it exposes; attaches to it, so create the server
            before the engine's first run.
        host: address to bind.
        port: port to bind; 0 takes any free port.

    Raises:
        ValueError: the engine's profile has client aborts; TGI would book them as
            failures, not in its token histograms.
    """

    def __init__(
        self, engine: SimEngine, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if engine.profile.abort_share:
            raise ValueError("a simulated TGI engine cannot have client aborts")
        super().__init__(engine, host, port)
        self._metrics = _TgiMetrics(engine.profile)
        engine.attach(self._metrics)

    def render(self) -> str:
        """The ``/metrics`` body."""
        with self.engine.lock:
            self.engine.catch_up()
            return _render_tgi(self.engine, self._metrics)

    def info(self) -> dict[str, object]:
        """The ``/info`` document, fields in the router's order."""
        model = self.engine.job.model
        sha = _fake_sha(f"text-generation-inference {TGI_VERSION}")
        return {
            "model_id": model,
            "model_sha": _fake_sha(model),
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": self.engine.profile.max_input_tokens,
            "max_total_tokens": self.engine.profile.max_model_len,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": TGI_VERSION,
            "sha": sha,
            "docker_label": f"sha-{sha[:7]}",
        }

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/info", self._handle_info)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/health", self._handle_health)

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.render(), content_type="text/plain", charset="utf-8"
        )

    async def _handle_info(self, request: web.Request) -> web.Response:
        return _json(self.info())

    async def _handle_models(self, request: web.Request) -> web.Response:
        model = self.engine.job.model
        card = {"id": model, "object": "model", "created": 0, "owned_by": model}
        return _json({"object": "list", "data": [card]})

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)


def _json(document: Mapping[str, object]) -> web.Response:
    """Compact JSON, as both servers write it."""
    text = json.dumps(document, separators=(",", ":"))
    return web.Response(text=text, content_type="application/json")


class SimEngines:
    """The demo's inference engines: a token model per job, a server where simulated.

    vLLM and TGI jobs get a :class:`SimVllmServer` or :class:`SimTgiServer`;
    SGLang jobs only a token model. Call :meth:`advance` right after the
    workload's own ``advance`` with the same time, so tokens follow exactly the
    loads the GPU processes got.

    Args:
        workload: the demo workload whose inference jobs to serve.
        clock: the simulation's clock, the node's.
        profiles: token profiles by model ID; None uses :data:`DEMO_PROFILES`;
            missing models get :func:`default_profile`.
        host: address every server binds.
        ports: port per job name; 0 or a missing name takes any free port.
    """

    def __init__(
        self,
        workload: DemoWorkload,
        clock: Clock,
        *,
        profiles: Mapping[str, TokenProfile] | None = None,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | None = None,
    ) -> None:
        self._workload = workload
        chosen = DEMO_PROFILES if profiles is None else profiles
        self._engines: dict[str, SimEngine] = {}
        self._servers: dict[str, SimVllmServer | SimTgiServer] = {}
        for job in workload.jobs:
            if not job.engine:
                continue
            profile = chosen.get(job.model) or default_profile(job.engine)
            engine = SimEngine(job, profile, clock)
            port = (ports or {}).get(job.name, 0)
            if job.engine == "vllm":
                self._servers[job.name] = SimVllmServer(engine, host, port)
            elif job.engine == "tgi":
                self._servers[job.name] = SimTgiServer(engine, host, port)
            self._engines[job.name] = engine
        self._sync(clock.monotonic())

    @property
    def engines(self) -> Mapping[str, SimEngine]:
        """Token models by job name."""
        return dict(self._engines)

    @property
    def servers(self) -> Mapping[str, SimVllmServer | SimTgiServer]:
        """Simulated servers by job name (no entry for SGLang jobs)."""
        return dict(self._servers)

    def advance(self, now: float) -> None:
        """Integrates tokens up to ``now``, then follows the workload's new state.

        Args:
            now: monotonic time in seconds, the time just given to
                ``DemoWorkload.advance``.
        """
        self._sync(now)

    def truth(self) -> dict[str, EngineTruth]:
        """Exact counts of every engine at the clock's present, by job name."""
        return {name: engine.truth() for name, engine in self._engines.items()}

    async def start(self) -> None:
        """Starts every server.

        Raises:
            OSError: a port cannot be bound; the servers started are stopped.
        """
        try:
            for server in self._servers.values():
                await server.start()
        except OSError:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stops every server."""
        for server in self._servers.values():
            await server.stop()

    def _sync(self, now: float) -> None:
        loads = self._workload.loads()
        for name, engine in self._engines.items():
            engine.update(now, self._workload.pid_of(name), loads.get(name, 0.0))
