"""Dialect detection and reading, against expositions recorded from real servers.

Every expected figure below was worked out by hand from the recorded file named next
to it (tests/data/expositions, provenance in SOURCES.md), not by running the code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from gpumeter.engines.dialects import DIALECTS, Dialect, detect, dialect
from gpumeter.engines.exposition import Families, parse_exposition
from gpumeter.engines.records import ENGINE_KINDS, EngineReading, ModelReading

DATA = Path(__file__).parent / "data" / "expositions"


def text(name: str) -> str:
    return (DATA / name).read_text()


def families(name: str) -> Families:
    return parse_exposition(text(name))


def body(name: str) -> Any:
    return json.loads(text(name))


def assert_reading(actual: EngineReading, expected: EngineReading) -> None:
    """Compares readings exactly in shape; floats to the last bits, None as None."""
    assert actual.kind == expected.kind
    if expected.started_at is None:
        assert actual.started_at is None
    else:
        assert actual.started_at == pytest.approx(expected.started_at, rel=1e-15)
    assert [m.model for m in actual.models] == [m.model for m in expected.models]
    for got, want in zip(actual.models, expected.models, strict=True):
        for f in dataclasses.fields(ModelReading):
            g, w = getattr(got, f.name), getattr(want, f.name)
            if w is None or isinstance(w, str):
                assert g == w, f"{want.model}.{f.name}"
            else:
                assert g == pytest.approx(w, rel=1e-12), f"{want.model}.{f.name}"


# Each recorded exposition: the dialect that must come first, the identity body it is
# read with, and the reading worked out by hand from the file.
CASES: list[tuple[str, str, str | None, EngineReading]] = [
    (
        # V0: model_name only, no engine label, no _created; one request finished
        # "length"; no prefill/decode histograms yet in 0.4.3.
        "vllm-0.4.3-v0-datadog.txt",
        "vllm",
        None,
        EngineReading(
            kind="vllm",
            models=(
                ModelReading(
                    model="facebook/opt-125m",
                    prompt_tokens=5.0,
                    generation_tokens=7.0,
                    requests=1.0,
                    requests_running=0.0,
                    requests_waiting=0.0,
                ),
            ),
            started_at=1.7181405583e09,  # process_start_time_seconds
        ),
    ),
    (
        # V1 before 0.9: gpu_cache_usage_perc only. requests = 40 stop + 2 length
        # + 1 abort; started_at = the oldest _created (prompt_tokens_created).
        "vllm-0.8-v1-constructed.txt",
        "vllm",
        None,
        EngineReading(
            kind="vllm",
            models=(
                ModelReading(
                    model="meta-llama/Llama-3.1-8B-Instruct",
                    prompt_tokens=13386.0,
                    generation_tokens=5512.0,
                    requests=43.0,
                    requests_running=1.0,
                    requests_waiting=0.0,
                    prefill_seconds=2.203459999999999,
                    decode_seconds=68.9,
                ),
            ),
            started_at=1.7454002038816972e09,
        ),
    ),
    (
        # V1 0.9-0.11: both KV-cache names; requests = 39 + 5 + 1.
        "vllm-0.10-v1-constructed.txt",
        "vllm",
        None,
        EngineReading(
            kind="vllm",
            models=(
                ModelReading(
                    model="Qwen/Qwen2.5-7B-Instruct",
                    prompt_tokens=13535.0,
                    generation_tokens=6315.0,
                    requests=45.0,
                    requests_running=1.0,
                    requests_waiting=0.0,
                    prefill_seconds=2.2538499999999995,
                    decode_seconds=78.9375,
                ),
            ),
            started_at=1.754905388512897e09,
        ),
    ),
    (
        # V1 after 0.11, data parallel: engine 0 + engine 1 for every figure.
        # prompt 11790 + 16771, generation 5500 + 7659,
        # requests (35 + 4 + 1) + (52 + 4 + 1), running 1 + 2, waiting 0 + 1,
        # prefill 1.9769000000000003 + 2.813810000000001, decode 68.75 + 95.7375;
        # started_at = engine 0's prompt_tokens_created, the oldest of all.
        "vllm-0.12-v1-dp2-constructed.txt",
        "vllm",
        None,
        EngineReading(
            kind="vllm",
            models=(
                ModelReading(
                    model="Qwen/Qwen3-8B",
                    prompt_tokens=28561.0,
                    generation_tokens=13159.0,
                    requests=97.0,
                    requests_running=3.0,
                    requests_waiting=1.0,
                    prefill_seconds=4.79071,
                    decode_seconds=164.4875,
                ),
            ),
            started_at=1.7658711392210183e09,
        ),
    ),
    (
        # TGI: tokens from histogram sums (662 in, 3423 out); requests = 109
        # successes + 2 validation failures; phases from tgi_batch_inference_duration.
        "tgi-datadog.txt",
        "tgi",
        "tgi-info-constructed.json",
        EngineReading(
            kind="tgi",
            models=(
                ModelReading(
                    model="bigscience/blomm-560m",
                    prompt_tokens=662.0,
                    generation_tokens=3423.0,
                    requests=111.0,
                    requests_running=0.0,
                    requests_waiting=0.0,
                    prefill_seconds=1.3892931830000002,
                    decode_seconds=90.32630366600002,
                ),
            ),
        ),
    ),
    (
        # SGLang's first release: model under `name`; no request counter, so the
        # e2e latency histogram's count (2104); vLLM-like gauge names.
        "sglang-0.3-name-label-docs.txt",
        "sglang",
        None,
        EngineReading(
            kind="sglang",
            models=(
                ModelReading(
                    model="google/gemma-2-9b-it",
                    prompt_tokens=506780.0,
                    generation_tokens=424549.0,
                    requests=2104.0,
                    requests_running=0.0,
                    requests_waiting=0.0,
                ),
            ),
        ),
    ),
    (
        # model_name label; func_latency_seconds{name="generate_request"} is a
        # function name and must not become a model. requests = e2e count 11228.
        "sglang-model_name-docs.txt",
        "sglang",
        None,
        EngineReading(
            kind="sglang",
            models=(
                ModelReading(
                    model="meta-llama/Llama-3.1-8B-Instruct",
                    prompt_tokens=8.128902e06,
                    generation_tokens=7.557572e06,
                    requests=11228.0,
                    requests_running=162.0,
                    requests_waiting=2826.0,
                ),
            ),
        ),
    ),
    (
        # tp_rank labels; num_requests_total present.
        "sglang-0.5.10-datadog.txt",
        "sglang",
        None,
        EngineReading(
            kind="sglang",
            models=(
                ModelReading(
                    model="facebook/opt-125m",
                    prompt_tokens=5.0,
                    generation_tokens=32.0,
                    requests=1.0,
                    requests_running=0.0,
                    requests_waiting=0.0,
                ),
            ),
        ),
    ),
    (
        # Current llama-server: prompt = 55 computed + 18 reused from the cache;
        # model from /props model_alias.
        "llamacpp-b11434-cached.txt",
        "llamacpp",
        "llamacpp-b11434-props.json",
        EngineReading(
            kind="llamacpp",
            models=(
                ModelReading(
                    model="gemma-3-270m-it",
                    prompt_tokens=73.0,
                    generation_tokens=64.0,
                    requests=None,
                    requests_running=0.0,
                    requests_waiting=0.0,
                    prefill_seconds=0.374529,
                    decode_seconds=1.76483,
                ),
            ),
        ),
    ),
    (
        # Older metric set, no cached-token counter; model from the basename of
        # model_path (no alias in this /props).
        "llamacpp-ik_llama-pr695.txt",
        "llamacpp",
        "llamacpp-props-readme.json",
        EngineReading(
            kind="llamacpp",
            models=(
                ModelReading(
                    model="Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf",
                    prompt_tokens=6886.0,
                    generation_tokens=3469.0,
                    requests=None,
                    requests_running=0.0,
                    requests_waiting=0.0,
                    prefill_seconds=2903.63,
                    decode_seconds=3544.27,
                ),
            ),
        ),
    ),
    (
        # NIM: unprefixed names; requests = request_finish_total (5 "length").
        "nim-llama-3.1-8b-datadog.txt",
        "nim",
        None,
        EngineReading(
            kind="nim",
            models=(
                ModelReading(
                    model="meta/llama-3.1-8b-instruct",
                    prompt_tokens=109.0,
                    generation_tokens=174.0,
                    requests=5.0,
                    requests_running=1.0,
                    requests_waiting=0.0,
                ),
            ),
            started_at=1.7303128549e09,
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "kind", "identity", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_recorded_exposition_is_detected_and_read(
    name: str, kind: str, identity: str | None, expected: EngineReading
) -> None:
    found = detect(families(name))
    assert [d.kind for d in found][:1] == [kind]
    reading = found[0].read(families(name), body(identity) if identity else None)
    assert_reading(reading, expected)


def test_every_recorded_exposition_has_a_case_and_a_source() -> None:
    recorded = {p.name for p in DATA.glob("*.txt")}
    assert recorded == {c[0] for c in CASES}
    sources = text("SOURCES.md")
    for path in DATA.iterdir():
        if path.name != "SOURCES.md":
            assert f"`{path.name}`" in sources, path.name


def test_each_recorded_exposition_is_claimed_by_one_dialect_only() -> None:
    for name, kind, _, _ in CASES:
        assert [d.kind for d in detect(families(name))] == [kind], name


# --- vLLM renames, _created, data parallel -------------------------------------------


def test_vllm_created_samples_are_timestamps_not_tokens() -> None:
    # The V1 files carry vllm:prompt_tokens_created ≈ 1.7e9 next to the counter.
    fams = families("vllm-0.8-v1-constructed.txt")
    assert "vllm_prompt_tokens_created" in fams
    (model,) = dialect("vllm").read(fams).models
    assert model.prompt_tokens == 13386.0


def test_vllm_created_alone_is_no_token_count() -> None:
    fams = parse_exposition(
        "# TYPE vllm:prompt_tokens_created gauge\n"
        'vllm:prompt_tokens_created{engine="0",model_name="m"} 1.79e+09\n'
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
    )
    reading = dialect("vllm").read(fams)
    (model,) = reading.models
    assert model.prompt_tokens is None
    assert model.requests_running == 2.0
    assert reading.started_at == 1.79e09


def test_vllm_without_created_falls_back_to_process_start() -> None:
    # V0 disabled _created samples; its process start is the only clock.
    reading = dialect("vllm").read(families("vllm-0.4.3-v0-datadog.txt"))
    assert reading.started_at == 1.7181405583e09


def test_vllm_iteration_tokens_histogram_is_not_a_token_counter() -> None:
    fams = parse_exposition(
        "# TYPE vllm:iteration_tokens_total histogram\n"
        'vllm:iteration_tokens_total_sum{engine="0",model_name="m"} 1103.0\n'
        'vllm:iteration_tokens_total_count{engine="0",model_name="m"} 994.0\n'
        'vllm:num_requests_running{engine="0",model_name="m"} 0.0\n'
    )
    (model,) = dialect("vllm").read(fams).models
    assert model.prompt_tokens is None
    assert model.generation_tokens is None


def test_vllm_after_renames_has_only_the_new_names() -> None:
    fams = families("vllm-0.12-v1-dp2-constructed.txt")
    assert "vllm_gpu_cache_usage_perc" not in fams
    assert "vllm_time_per_output_token_seconds" not in fams
    assert "vllm_inter_token_latency_seconds" in fams
    assert "vllm_kv_cache_usage_perc" in fams
    old = families("vllm-0.8-v1-constructed.txt")
    assert "vllm_kv_cache_usage_perc" not in old
    assert "vllm_gpu_prefix_cache_queries" in old


def test_vllm_engines_of_one_model_add_up() -> None:
    fams = families("vllm-0.12-v1-dp2-constructed.txt")
    engines = {s.labels["engine"] for s in fams["vllm_prompt_tokens"].samples}
    assert engines == {"0", "1"}
    (model,) = dialect("vllm").read(fams).models
    assert model.prompt_tokens == 11790.0 + 16771.0


def test_vllm_underscore_spelling_reads_the_same() -> None:
    colon = text("vllm-0.12-v1-dp2-constructed.txt")
    underscore = colon.replace("vllm:", "vllm_")
    assert "vllm:" not in underscore
    a = dialect("vllm").read(parse_exposition(colon))
    b = dialect("vllm").read(parse_exposition(underscore))
    assert a == b
    assert [d.kind for d in detect(parse_exposition(underscore))] == ["vllm"]


def test_vllm_models_are_read_separately() -> None:
    fams = parse_exposition(
        "# TYPE vllm:prompt_tokens_total counter\n"
        'vllm:prompt_tokens_total{engine="0",model_name="a"} 10.0\n'
        'vllm:prompt_tokens_total{engine="0",model_name="b"} 20.0\n'
        "# TYPE vllm:generation_tokens_total counter\n"
        'vllm:generation_tokens_total{engine="0",model_name="a"} 1.0\n'
    )
    a, b = dialect("vllm").read(fams).models
    assert (a.model, a.prompt_tokens, a.generation_tokens) == ("a", 10.0, 1.0)
    # b has no generation series: absent, not zero.
    assert (b.model, b.prompt_tokens, b.generation_tokens) == ("b", 20.0, None)


def test_vllm_gauges_repeated_per_process_are_not_added() -> None:
    fams = parse_exposition(
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="m",pid="101"} 4.0\n'
        'vllm:num_requests_running{model_name="m",pid="102"} 4.0\n'
    )
    (model,) = dialect("vllm").read(fams).models
    assert model.requests_running == 4.0


def test_counters_without_total_are_not_vllm_counters() -> None:
    # Some simulators write vLLM names with counters lacking `_total`; matching
    # exact names means they are not read as tokens.
    fams = parse_exposition(
        'vllm:prompt_tokens{model_name="m"} 100\n'
        'vllm:num_requests_running{model_name="m"} 1\n'
    )
    (model,) = dialect("vllm").read(fams).models
    assert model.prompt_tokens is None
    assert model.requests_running == 1.0


# --- TGI ------------------------------------------------------------------------------


def test_tgi_without_identity_names_the_model_unknown() -> None:
    (model,) = dialect("tgi").read(families("tgi-datadog.txt")).models
    assert model.model == "unknown"
    assert model.prompt_tokens == 662.0


def test_tgi_has_no_model_label() -> None:
    fams = families("tgi-datadog.txt")
    labels = {k for fam in fams.values() for s in fam.samples for k in s.labels}
    assert labels.isdisjoint({"model", "model_name", "model_id"})


def test_tgi_falls_back_to_forward_duration() -> None:
    lines = text("tgi-datadog.txt").splitlines(keepends=True)
    kept = "".join(line for line in lines if "tgi_batch_inference_duration" not in line)
    (model,) = dialect("tgi").read(parse_exposition(kept)).models
    assert model.prefill_seconds == 1.246376687
    assert model.decode_seconds == 89.03133092599998


def test_tgi_untyped_counter_keeps_its_bare_name() -> None:
    # Without # TYPE lines the parser does not add `_total` to TGI's counters.
    fams = parse_exposition("tgi_request_success 7\ntgi_queue_size 2\n")
    (model,) = dialect("tgi").read(fams, {"model_id": "x"}).models
    assert (model.requests, model.requests_waiting) == (7.0, 2.0)


# --- SGLang ---------------------------------------------------------------------------

# A synthetic multi-rank exposition in SGLang's label shape: two data-parallel ranks of
# two tensor-parallel ranks each; gauges from each scheduler process (pid), counters
# from the tokenizer manager.
SGLANG_RANKS = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{dp_rank="0",engine_type="unified",model_name="m",pid="910",pp_rank="0",tp_rank="0"} 3.0
sglang:num_running_reqs{dp_rank="0",engine_type="unified",model_name="m",pid="911",pp_rank="0",tp_rank="1"} 3.0
sglang:num_running_reqs{dp_rank="1",engine_type="unified",model_name="m",pid="912",pp_rank="0",tp_rank="2"} 2.0
sglang:num_running_reqs{dp_rank="1",engine_type="unified",model_name="m",pid="913",pp_rank="0",tp_rank="3"} 2.0
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="m"} 100.0
"""  # noqa: E501


def test_sglang_repeated_tp_ranks_count_once_and_dp_ranks_add() -> None:
    (model,) = dialect("sglang").read(parse_exposition(SGLANG_RANKS)).models
    assert model.requests_running == 3.0 + 2.0
    assert model.prompt_tokens == 100.0
    assert model.requests_waiting is None


def test_sglang_name_and_model_name_labels_name_the_same_thing() -> None:
    old = dialect("sglang").read(families("sglang-0.3-name-label-docs.txt"))
    new = dialect("sglang").read(families("sglang-model_name-docs.txt"))
    assert [m.model for m in old.models] == ["google/gemma-2-9b-it"]
    assert [m.model for m in new.models] == ["meta-llama/Llama-3.1-8B-Instruct"]


def test_sglang_underscore_re_export_is_sglang() -> None:
    # SGLang behind gRPC re-exports with underscores and a worker_addr label.
    fams = parse_exposition(
        "# TYPE sglang_generation_tokens_total counter\n"
        'sglang_generation_tokens_total{model_name="m",tp_rank="0",'
        'worker_addr="grpc://127.0.0.1:8001"} 55\n'
    )
    assert [d.kind for d in detect(fams)] == ["sglang"]
    (model,) = dialect("sglang").read(fams).models
    assert model.generation_tokens == 55.0


# --- llama.cpp ------------------------------------------------------------------------


def test_llamacpp_cached_tokens_are_added_to_prompt_tokens() -> None:
    fams = families("llamacpp-b11434-cached.txt")
    assert "llamacpp_prompt_tokens_cached" in fams
    (model,) = dialect("llamacpp").read(fams).models
    assert model.prompt_tokens == 55.0 + 18.0
    assert model.model == "unknown"  # no /props given


def test_llamacpp_exponent_formatted_counters() -> None:
    # llama-server prints doubles with six significant digits: 1.04858e+06.
    fams = parse_exposition(
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        "llamacpp:prompt_tokens_total 21584\n"
        "# TYPE llamacpp:prompt_tokens_cached_total counter\n"
        "llamacpp:prompt_tokens_cached_total 1.04858e+06\n"
    )
    (model,) = dialect("llamacpp").read(fams).models
    assert model.prompt_tokens == 21584.0 + 1048580.0


def test_llamacpp_model_from_a_windows_path() -> None:
    props = {"model_path": "C:\\models\\Qwen3-8B-Q5_K_M.gguf", "total_slots": 4}
    fams = families("llamacpp-ik_llama-pr695.txt")
    (model,) = dialect("llamacpp").read(fams, props).models
    assert model.model == "Qwen3-8B-Q5_K_M.gguf"


def test_llamacpp_nan_gauges_are_absent() -> None:
    fams = parse_exposition(
        "llamacpp:prompt_tokens_total 5\nllamacpp:requests_processing NaN\n"
    )
    (model,) = dialect("llamacpp").read(fams).models
    assert model.prompt_tokens == 5.0
    assert model.requests_running is None


# --- detection: ambiguity and other exporters -----------------------------------------


def test_a_vllm_fork_that_also_writes_tgi_names_is_vllm_first() -> None:
    # A vLLM build with a TGI-compatible adapter writes both sets; the dialect with
    # more of its names present comes first, and the confirm endpoints settle it.
    fams = parse_exposition(
        text("vllm-0.4.3-v0-datadog.txt")
        + "# TYPE tgi_request_success counter\ntgi_request_success 3\n"
        + "# TYPE tgi_queue_size gauge\ntgi_queue_size 0\n"
    )
    assert [d.kind for d in detect(fams)] == ["vllm", "tgi"]
    version = body("vllm-0.4.3-version-datadog.json")
    assert dialect("vllm").confirms(version)
    assert not dialect("tgi").confirms(version)


NODE_EXPORTER = """\
# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 2.27862e+06
node_cpu_seconds_total{cpu="0",mode="user"} 50123.45
# HELP node_memory_MemAvailable_bytes Memory information field MemAvailable_bytes.
# TYPE node_memory_MemAvailable_bytes gauge
node_memory_MemAvailable_bytes 1.23456789e+10
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.71e+09
# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 8
"""


def test_another_exporter_is_claimed_by_no_dialect() -> None:
    assert detect(parse_exposition(NODE_EXPORTER)) == []


def test_a_re_exported_vllm_prefix_is_not_vllm() -> None:
    # Ray Serve re-exports vLLM's metrics as ray_vllm:*; names are matched whole.
    fams = parse_exposition(
        "# TYPE ray_vllm:prompt_tokens_total counter\n"
        'ray_vllm:prompt_tokens_total{WorkerId="6ad5",model_name="m"} 58.0\n'
        "# TYPE ray_vllm:num_requests_running gauge\n"
        'ray_vllm:num_requests_running{WorkerId="6ad5",model_name="m"} 0.0\n'
    )
    assert detect(fams) == []


def test_generic_unprefixed_names_without_a_model_label_are_not_nim() -> None:
    fams = parse_exposition(
        "# TYPE prompt_tokens_total counter\nprompt_tokens_total 5\n"
        "# TYPE generation_tokens_total counter\ngeneration_tokens_total 7\n"
    )
    assert detect(fams) == []


def test_declared_families_without_samples_still_say_who_wrote_them() -> None:
    # vLLM V0 in multiprocess mode before its first request: HELP/TYPE only.
    fams = parse_exposition(
        "# HELP vllm:num_requests_running Number of requests currently running.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
    )
    found = detect(fams)
    assert [d.kind for d in found] == ["vllm"]
    assert found[0].read(fams).models == ()


# --- confirm endpoints ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("vllm-0.4.3-version-datadog.json", "vllm"),
        ("tgi-info-constructed.json", "tgi"),
        ("llamacpp-b11434-props.json", "llamacpp"),
        ("llamacpp-props-readme.json", "llamacpp"),
        ("nim-1.0.0-version-datadog.json", "nim"),
    ],
)
def test_confirm_bodies_confirm_only_their_server(name: str, kind: str) -> None:
    confirming = [d.kind for d in DIALECTS if d.confirms(body(name))]
    assert confirming == [kind]


def test_sglang_server_info_shape_confirms_sglang() -> None:
    # The shape of /get_server_info: the server arguments, flattened.
    info = {"model_path": "Qwen/Qwen3-8B", "tp_size": 2, "dp_size": 1, "port": 30000}
    assert [d.kind for d in DIALECTS if d.confirms(info)] == ["sglang"]


@pytest.mark.parametrize("junk", [None, [], "ok", 3, {"status": "ok"}])
def test_non_matching_bodies_confirm_nothing(junk: Any) -> None:
    assert [d.kind for d in DIALECTS if d.confirms(junk)] == []


# --- the table ------------------------------------------------------------------------


def test_the_dialect_table() -> None:
    assert tuple(d.kind for d in DIALECTS) == ENGINE_KINDS
    table = {
        d.kind: (d.metrics_paths, d.identity_path, d.confirm_path) for d in DIALECTS
    }
    assert table == {
        "vllm": (("/metrics",), None, "/version"),
        "tgi": (("/metrics",), "/info", "/info"),
        "sglang": (("/metrics",), None, "/get_server_info"),
        "llamacpp": (("/metrics",), "/props", "/props"),
        "nim": (("/v1/metrics", "/metrics"), None, "/v1/version"),
    }
    for kind in ENGINE_KINDS:
        assert isinstance(dialect(kind), Dialect)
        assert dialect(kind).kind == kind
    with pytest.raises(KeyError):
        dialect("ollama")
