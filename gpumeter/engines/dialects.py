"""Each inference server's metric dialect, read into engine readings."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.samples import Sample

from gpumeter.engines.exposition import Families, normalize_name
from gpumeter.engines.records import EngineReading, ModelReading

logger = logging.getLogger(__name__)

__all__ = ["DIALECTS", "Dialect", "detect", "dialect"]

UNKNOWN_MODEL = "unknown"
"""The model name when neither the exposition nor the identity endpoint names it."""

_SAMPLE_SUFFIXES = ("_total", "_created", "_sum", "_count", "_bucket")

Labels = Mapping[str, str]
ModelOf = Callable[[Labels], str]


# --- finding samples ----------------------------------------------------------------


def _series(families: Families, *names: str) -> list[Sample]:
    """Every sample whose normalized name is exactly one of ``names``.

    The parser files a sample under its family, whose key depends on the ``# TYPE``
    line the server wrote: a typed counter loses ``_total``, a histogram keeps only
    its base name, an untyped sample keeps its own name. So each name is looked up
    under itself and under itself less one known suffix, and samples are then
    matched by their full name. Nothing is matched by prefix: ``vllm:prompt_tokens``
    must not pick up ``_created`` timestamps or the ``iteration_tokens_total``
    histogram.
    """
    found: list[Sample] = []
    for name in names:
        keys = {name} | {
            name.removesuffix(suffix)
            for suffix in _SAMPLE_SUFFIXES
            if name.endswith(suffix)
        }
        for key in sorted(keys):
            family = families.get(key)
            if family is None:
                continue
            found.extend(s for s in family.samples if normalize_name(s.name) == name)
    return found


def _present(families: Families, name: str) -> bool:
    """Whether the exposition declares ``name`` (samples or not).

    A family may be declared with ``# HELP``/``# TYPE`` and carry no sample yet
    (vLLM V0 before its first request), which still says who wrote it.
    """
    if _series(families, name):
        return True
    base = name
    for suffix in _SAMPLE_SUFFIXES:
        base = base.removesuffix(suffix)
    return name in families or base in families


def _smallest(samples: Iterable[Sample]) -> float | None:
    """The smallest finite value, or None when there is none."""
    values = [s.value for s in samples if math.isfinite(s.value)]
    return min(values) if values else None


def _per_model(
    samples: Iterable[Sample],
    model_of: ModelOf,
    ignored: frozenset[str],
    replicas: frozenset[str] = frozenset(),
) -> dict[str, float]:
    """Adds up samples per model.

    Samples are grouped by their labels, less the model labels (``ignored``) and
    the labels that only say which replica reported (``replicas``). Within a group
    the replicas repeat one figure, so the largest is kept; the groups are distinct
    work (engines, finish reasons, data-parallel ranks), so they are added.
    Samples that are not numbers (NaN) count as absent.

    Args:
        samples: the samples of one metric.
        model_of: the model a sample belongs to, from its labels.
        ignored: labels that name the model, left out of the grouping.
        replicas: labels whose values repeat the same figure.

    Returns:
        A total per model; a model with no finite sample is not in it.
    """
    groups: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for sample in samples:
        if math.isnan(sample.value):
            continue
        model = model_of(sample.labels)
        key = tuple(
            sorted(
                (label, value)
                for label, value in sample.labels.items()
                if label not in ignored and label not in replicas
            )
        )
        per_group = groups.setdefault(model, {})
        per_group[key] = max(per_group.get(key, -math.inf), sample.value)
    return {model: math.fsum(g.values()) for model, g in groups.items()}


def _with(labels: Mapping[str, str]) -> Callable[[Sample], bool]:
    """A filter keeping samples that carry all of ``labels``."""

    def keep(sample: Sample) -> bool:
        return all(sample.labels.get(k) == v for k, v in labels.items())

    return keep


def _add(*parts: dict[str, float]) -> dict[str, float]:
    """Per-model sums of several per-model figures (a model missing in one is 0)."""
    total: dict[str, float] = {}
    for part in parts:
        for model, value in part.items():
            total[model] = total.get(model, 0.0) + value
    return total


def _models(figures: Mapping[str, dict[str, float]]) -> tuple[ModelReading, ...]:
    """Assembles one reading per model named in any figure, sorted by name."""
    names = sorted({model for per_model in figures.values() for model in per_model})
    return tuple(
        ModelReading(
            model=name,
            **{field_: per_model.get(name) for field_, per_model in figures.items()},
        )
        for name in names
    )


def _process_start(families: Families) -> float | None:
    """``process_start_time_seconds``, where the server's client library exports it.

    Absent in prometheus_client's multiprocess mode (SGLang always, vLLM V0 and
    vLLM V1 with several API servers) and in servers not written in Python.
    """
    return _smallest(_series(families, "process_start_time_seconds"))


def _dict(body: Any) -> dict[str, Any] | None:
    """``body`` when it is a JSON object, else None."""
    return body if isinstance(body, dict) else None


# --- vLLM ---------------------------------------------------------------------------

_VLLM_MARKERS = (
    "vllm_prompt_tokens_total",
    "vllm_generation_tokens_total",
    "vllm_request_success_total",
    "vllm_num_requests_running",
    "vllm_num_requests_waiting",
    # Renamed in 0.9: gpu_cache_usage_perc is deprecated there and gone in 0.12.
    "vllm_gpu_cache_usage_perc",
    "vllm_kv_cache_usage_perc",
)
_VLLM_MODEL = frozenset({"model_name"})
# In prometheus_client multiprocess mode (vLLM V0, or V1 with several API servers)
# a gauge may carry the reporting process's pid: copies, not extra work.
_VLLM_GAUGE_REPLICAS = frozenset({"pid"})


def _vllm_model(labels: Labels) -> str:
    return labels.get("model_name") or UNKNOWN_MODEL


def _vllm_sum(families: Families, name: str) -> dict[str, float]:
    """A per-model sum over every other label.

    That is ``engine`` (data-parallel engine cores, V1 from 0.8),
    ``finished_reason`` and whatever else the server adds.
    """
    return _per_model(_series(families, name), _vllm_model, _VLLM_MODEL)


def _vllm_gauge(families: Families, name: str) -> dict[str, float]:
    return _per_model(
        _series(families, name), _vllm_model, _VLLM_MODEL, _VLLM_GAUGE_REPLICAS
    )


def _vllm_started_at(families: Families) -> float | None:
    # V1 leaves prometheus_client's `_created` samples on (V0 turned them off): the
    # time each counter was made, i.e. when this engine's counts began. The oldest
    # wins; a later scrape with a newer one means the counters restarted.
    created = _smallest(
        _series(
            families,
            "vllm_prompt_tokens_created",
            "vllm_generation_tokens_created",
            "vllm_request_success_created",
        )
    )
    return created if created is not None else _process_start(families)


def _read_vllm(families: Families, identity: Any | None = None) -> EngineReading:
    figures = {
        # Counted per engine step when prefill completes; includes prefix-cache hits.
        "prompt_tokens": _vllm_sum(families, "vllm_prompt_tokens_total"),
        "generation_tokens": _vllm_sum(families, "vllm_generation_tokens_total"),
        # Every finish reason, aborts included (V1 pre-creates each reason at 0; V0
        # shows only reasons seen so far).
        "requests": _vllm_sum(families, "vllm_request_success_total"),
        "requests_running": _vllm_gauge(families, "vllm_num_requests_running"),
        "requests_waiting": _vllm_gauge(families, "vllm_num_requests_waiting"),
        # Per-request phase histograms, from V0 0.6.4 and in every V1; absent in
        # older V0, so None there.
        "prefill_seconds": _vllm_sum(families, "vllm_request_prefill_time_seconds_sum"),
        "decode_seconds": _vllm_sum(families, "vllm_request_decode_time_seconds_sum"),
    }
    return EngineReading(
        kind="vllm", models=_models(figures), started_at=_vllm_started_at(families)
    )


def _confirms_vllm(body: Any) -> bool:
    # /version answers {"version": "0.4.3"}; TGI's /info also has "version", so a
    # body naming a model is not vLLM's.
    data = _dict(body)
    return (
        data is not None
        and isinstance(data.get("version"), str)
        and "model_id" not in data
        and "model_path" not in data
    )


# --- Hugging Face TGI ---------------------------------------------------------------

_TGI_MARKERS = (
    "tgi_request_count",
    "tgi_request_success",
    "tgi_request_input_length_sum",
    "tgi_request_generated_tokens_sum",
    "tgi_queue_size",
    "tgi_batch_current_size",
    "tgi_batch_inference_count",
)


def _tgi_model(identity: Any | None) -> ModelOf:
    data = _dict(identity)
    model = data.get("model_id") if data is not None else None
    name = model if isinstance(model, str) and model else UNKNOWN_MODEL
    # TGI puts no model label on any metric: one instance serves one model.
    return lambda labels: name


def _tgi_sum(
    families: Families,
    model_of: ModelOf,
    *names: str,
    where: Mapping[str, str] | None = None,
) -> dict[str, float]:
    samples = _series(families, *names)
    if where:
        samples = list(filter(_with(where), samples))
    return _per_model(samples, model_of, frozenset())


def _tgi_phase_seconds(
    families: Families, model_of: ModelOf, method: str
) -> dict[str, float]:
    # Router-side wall time of each prefill or decode batch call; the shards'
    # forward time is the fallback. Summed over batches, not requests.
    for name in ("tgi_batch_inference_duration_sum", "tgi_batch_forward_duration_sum"):
        seconds = _tgi_sum(families, model_of, name, where={"method": method})
        if seconds:
            return seconds
    return {}


def _read_tgi(families: Families, identity: Any | None = None) -> EngineReading:
    model_of = _tgi_model(identity)
    # The Rust exporter writes counters without `_total`; prometheus_client's parser
    # adds it to typed samples, an untyped scrape keeps the bare name.
    success = _tgi_sum(
        families, model_of, "tgi_request_success", "tgi_request_success_total"
    )
    # Created on the first failure only: absent next to a success counter means
    # none yet.
    failure = _tgi_sum(
        families, model_of, "tgi_request_failure", "tgi_request_failure_total"
    )
    figures = {
        # Tokens exist only as histogram sums: inputs observed at validation (so
        # including requests that fail later), outputs only on success.
        "prompt_tokens": _tgi_sum(families, model_of, "tgi_request_input_length_sum"),
        "generation_tokens": _tgi_sum(
            families, model_of, "tgi_request_generated_tokens_sum"
        ),
        # Finished requests: succeeded plus failed for any reason, validation
        # rejections included (they end a request too, though they use no GPU).
        "requests": _add(success, failure),
        "requests_running": _tgi_sum(families, model_of, "tgi_batch_current_size"),
        "requests_waiting": _tgi_sum(families, model_of, "tgi_queue_size"),
        "prefill_seconds": _tgi_phase_seconds(families, model_of, "prefill"),
        "decode_seconds": _tgi_phase_seconds(families, model_of, "decode"),
    }
    return EngineReading(
        kind="tgi", models=_models(figures), started_at=_process_start(families)
    )


def _confirms_tgi(body: Any) -> bool:
    # /info: model_id plus the router's token limits. TEI answers /info too, with
    # model_id but no max_total_tokens.
    data = _dict(body)
    return (
        data is not None
        and isinstance(data.get("model_id"), str)
        and "max_total_tokens" in data
    )


# --- SGLang -------------------------------------------------------------------------

_SGLANG_MARKERS = (
    "sglang_prompt_tokens_total",
    "sglang_generation_tokens_total",
    "sglang_num_requests_total",
    "sglang_num_running_reqs",
    "sglang_num_queue_reqs",
    "sglang_token_usage",
    # The first release (≈0.3.5) named these like vLLM.
    "sglang_num_requests_running",
    "sglang_num_requests_waiting",
)
# The model label is `model_name`; the first release (≈0.3.5) called it `name`.
_SGLANG_MODEL = frozenset({"model_name", "name"})
# Scheduler metrics carry the reporting rank (tp_rank, pp_rank, moe_ep_rank from
# 2025) and, in prometheus_client multiprocess mode, the process id: every rank of
# one tensor/pipeline group reports the same batch. dp_rank is not among them:
# data-parallel ranks run different requests, so they add.
_SGLANG_REPLICAS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank", "pid"})


def _sglang_model(labels: Labels) -> str:
    return labels.get("model_name") or labels.get("name") or UNKNOWN_MODEL


def _sglang(families: Families, *names: str) -> dict[str, float]:
    """The first of ``names`` the server reports, per model."""
    for name in names:
        figures = _per_model(
            _series(families, name), _sglang_model, _SGLANG_MODEL, _SGLANG_REPLICAS
        )
        if figures:
            return figures
    return {}


def _read_sglang(families: Families, identity: Any | None = None) -> EngineReading:
    figures = {
        # Counted once per finished request; includes prefix-cache hits.
        "prompt_tokens": _sglang(families, "sglang_prompt_tokens_total"),
        "generation_tokens": _sglang(families, "sglang_generation_tokens_total"),
        # Finished requests; before the counter existed the end-to-end latency
        # histogram observed each finished request once.
        "requests": _sglang(
            families,
            "sglang_num_requests_total",
            "sglang_e2e_request_latency_seconds_count",
        ),
        "requests_running": _sglang(
            families, "sglang_num_running_reqs", "sglang_num_requests_running"
        ),
        "requests_waiting": _sglang(
            families, "sglang_num_queue_reqs", "sglang_num_requests_waiting"
        ),
        # SGLang has no per-phase time that adds up; prefill/decode stay None.
        "prefill_seconds": {},
        "decode_seconds": {},
    }
    return EngineReading(
        kind="sglang", models=_models(figures), started_at=_process_start(families)
    )


def _confirms_sglang(body: Any) -> bool:
    # /get_server_info dumps the server arguments; llama.cpp's /props also has
    # model_path but no parallelism settings.
    data = _dict(body)
    return data is not None and "model_path" in data and "tp_size" in data


# --- llama.cpp ----------------------------------------------------------------------

_LLAMACPP_MARKERS = (
    "llamacpp_prompt_tokens_total",
    "llamacpp_tokens_predicted_total",
    "llamacpp_prompt_seconds_total",
    "llamacpp_tokens_predicted_seconds_total",
    "llamacpp_requests_processing",
    "llamacpp_requests_deferred",
)
# Upstream writes no labels; some builds add `model` to every sample.
_LLAMACPP_MODEL = frozenset({"model"})
_PATH_SEPARATORS = re.compile(r"[\\/]")


def _llamacpp_name(identity: Any | None) -> str:
    """The model name from ``/props``: the alias, else the model file's name."""
    data = _dict(identity)
    if data is None:
        return UNKNOWN_MODEL
    alias = data.get("model_alias")
    if isinstance(alias, str) and alias:
        return alias
    path = data.get("model_path")
    if isinstance(path, str) and path:
        # Windows builds report backslashed paths.
        return _PATH_SEPARATORS.split(path.rstrip("/\\"))[-1] or UNKNOWN_MODEL
    return UNKNOWN_MODEL


def _read_llamacpp(families: Families, identity: Any | None = None) -> EngineReading:
    name = _llamacpp_name(identity)

    def model_of(labels: Labels) -> str:
        return labels.get("model") or name

    def total(metric: str) -> dict[str, float]:
        return _per_model(_series(families, metric), model_of, _LLAMACPP_MODEL)

    # `prompt_tokens_total` never counts prompt tokens reused from the cache. Recent
    # builds (b11434, for one) also export `prompt_tokens_cached_total`, and prompt
    # tokens are the two together; older builds lack it, and their figure stays
    # computed-only.
    computed = total("llamacpp_prompt_tokens_total")
    cached = total("llamacpp_prompt_tokens_cached_total")
    prompt = {model: computed[model] + cached.get(model, 0.0) for model in computed}
    figures = {
        "prompt_tokens": prompt,
        "generation_tokens": total("llamacpp_tokens_predicted_total"),
        # llama-server counts no finished requests.
        "requests": {},
        "requests_running": total("llamacpp_requests_processing"),
        "requests_waiting": total("llamacpp_requests_deferred"),
        "prefill_seconds": total("llamacpp_prompt_seconds_total"),
        "decode_seconds": total("llamacpp_tokens_predicted_seconds_total"),
    }
    return EngineReading(
        kind="llamacpp", models=_models(figures), started_at=_process_start(families)
    )


def _confirms_llamacpp(body: Any) -> bool:
    data = _dict(body)
    return (
        data is not None
        and "default_generation_settings" in data
        and "total_slots" in data
    )


# --- NVIDIA NIM for LLMs ------------------------------------------------------------

# NIM 1.x writes vLLM's V0 set without the `vllm:` prefix, so these names are
# generic; a claim needs several of them and a `model_name` label.
_NIM_MARKERS = (
    "num_requests_running",
    "num_requests_waiting",
    "num_request_max",
    "prompt_tokens_total",
    "generation_tokens_total",
    "request_finish_total",
    "request_success_total",
    "request_failure_total",
)
_NIM_MODEL = frozenset({"model_name"})


def _claims_nim(families: Families) -> bool:
    present = [name for name in _NIM_MARKERS if _present(families, name)]
    if len(present) < 2:
        return False
    return any("model_name" in s.labels for s in _series(families, *present))


def _nim_sum(families: Families, name: str) -> dict[str, float]:
    return _per_model(_series(families, name), _vllm_model, _NIM_MODEL)


def _read_nim(families: Families, identity: Any | None = None) -> EngineReading:
    finished = _nim_sum(families, "request_finish_total")
    if not finished:
        finished = _add(
            _nim_sum(families, "request_success_total"),
            _nim_sum(families, "request_failure_total"),
        )
    figures = {
        "prompt_tokens": _nim_sum(families, "prompt_tokens_total"),
        "generation_tokens": _nim_sum(families, "generation_tokens_total"),
        # request_finish_total counts every finish reason; without it, successes
        # and failures together.
        "requests": finished,
        "requests_running": _nim_sum(families, "num_requests_running"),
        "requests_waiting": _nim_sum(families, "num_requests_waiting"),
        "prefill_seconds": _nim_sum(families, "request_prefill_time_seconds_sum"),
        "decode_seconds": _nim_sum(families, "request_decode_time_seconds_sum"),
    }
    return EngineReading(
        kind="nim", models=_models(figures), started_at=_process_start(families)
    )


def _confirms_nim(body: Any) -> bool:
    # /v1/version answers {"release": "1.0.0", "api": "1.0.0"}.
    data = _dict(body)
    return data is not None and "release" in data and "api" in data


# --- the dialects -------------------------------------------------------------------


@dataclass(frozen=True)
class Dialect:
    """One inference server's way of writing its metrics.

    Attributes:
        kind: the server (one of ``ENGINE_KINDS``).
        metrics_paths: where its exposition lives, most likely first.
        identity_path: a JSON endpoint that names the model when the metrics do
            not, or None.
        confirm_path: a JSON endpoint only this server has, to settle which server
            an ambiguous exposition comes from, or None.
        markers: normalized sample names only this server writes; the more of them
            an exposition has, the more surely it is this server's.
    """

    kind: str
    metrics_paths: tuple[str, ...]
    identity_path: str | None
    confirm_path: str | None
    markers: tuple[str, ...] = field(repr=False)
    reader: Callable[[Families, Any | None], EngineReading] = field(repr=False)
    confirm_rule: Callable[[Any], bool] = field(repr=False)
    claim_rule: Callable[[Families], bool] | None = field(default=None, repr=False)

    def score(self, families: Families) -> int:
        """How many of this dialect's marker names the exposition declares.

        Args:
            families: a parsed exposition.

        Returns:
            The count of markers present, 0 when none is.
        """
        return sum(1 for name in self.markers if _present(families, name))

    def claims(self, families: Families) -> bool:
        """Whether the exposition looks like this server's.

        Args:
            families: a parsed exposition.

        Returns:
            True when it declares this server's metric names.
        """
        if self.claim_rule is not None:
            return self.claim_rule(families)
        return self.score(families) > 0

    def confirms(self, body: Any) -> bool:
        """Whether a JSON body from ``confirm_path`` looks like this server's.

        Args:
            body: the decoded JSON (any type; non-objects never confirm).

        Returns:
            True when the body has this server's shape.
        """
        return self.confirm_rule(body)

    def read(self, families: Families, identity: Any | None = None) -> EngineReading:
        """Reads the engine's per-model figures from its exposition.

        A figure the exposition does not carry is None, never 0.

        Args:
            families: a parsed exposition this dialect claims.
            identity: the decoded JSON from ``identity_path``, when the dialect
                needs one to name its model; without it the model is "unknown".

        Returns:
            The engine reading, one model reading per model, sorted by name.
        """
        return self.reader(families, identity)


VLLM = Dialect(
    kind="vllm",
    metrics_paths=("/metrics",),
    identity_path=None,
    confirm_path="/version",
    markers=_VLLM_MARKERS,
    reader=_read_vllm,
    confirm_rule=_confirms_vllm,
)
TGI = Dialect(
    kind="tgi",
    metrics_paths=("/metrics",),
    identity_path="/info",
    confirm_path="/info",
    markers=_TGI_MARKERS,
    reader=_read_tgi,
    confirm_rule=_confirms_tgi,
)
SGLANG = Dialect(
    kind="sglang",
    metrics_paths=("/metrics",),
    identity_path=None,
    confirm_path="/get_server_info",
    markers=_SGLANG_MARKERS,
    reader=_read_sglang,
    confirm_rule=_confirms_sglang,
)
LLAMACPP = Dialect(
    kind="llamacpp",
    metrics_paths=("/metrics",),
    identity_path="/props",
    confirm_path="/props",
    markers=_LLAMACPP_MARKERS,
    reader=_read_llamacpp,
    confirm_rule=_confirms_llamacpp,
)
NIM = Dialect(
    kind="nim",
    # NIM 24.05 served /metrics; later releases serve /v1/metrics.
    metrics_paths=("/v1/metrics", "/metrics"),
    identity_path=None,
    confirm_path="/v1/version",
    markers=_NIM_MARKERS,
    reader=_read_nim,
    confirm_rule=_confirms_nim,
    claim_rule=_claims_nim,
)

DIALECTS: tuple[Dialect, ...] = (VLLM, TGI, SGLANG, LLAMACPP, NIM)
"""Every dialect gpumeter reads; on a tie in :func:`detect`, the earlier wins."""


def detect(families: Families) -> list[Dialect]:
    """The dialects that claim an exposition, most specific first.

    An exposition can carry two servers' names (a vLLM fork that also writes TGI's,
    a proxy merging servers); the dialect with more of its marker names present
    comes first, and the caller settles the rest with ``confirm_path``.

    Args:
        families: a parsed exposition.

    Returns:
        The claiming dialects, or an empty list when none claims it.
    """
    claimed = [d for d in DIALECTS if d.claims(families)]
    order = {d.kind: i for i, d in enumerate(DIALECTS)}
    claimed.sort(key=lambda d: (-d.score(families), order[d.kind]))
    if len(claimed) > 1:
        logger.debug(
            "exposition claimed by several dialects: %s",
            ", ".join(d.kind for d in claimed),
        )
    return claimed


def dialect(kind: str) -> Dialect:
    """The dialect of one server kind.

    Args:
        kind: one of ``ENGINE_KINDS``.

    Returns:
        That server's dialect.

    Raises:
        KeyError: no dialect has that kind.
    """
    for candidate in DIALECTS:
        if candidate.kind == kind:
            return candidate
    raise KeyError(kind)
