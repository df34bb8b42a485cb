"""Simulated vLLM and TGI servers: exact token ground truth and faithful dialects."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from fractions import Fraction

import aiohttp
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gpumeter.sim import DemoJob, DemoWorkload, SimNode, build_demo_node
from gpumeter.sim.engines import (
    DEMO_PROFILES,
    FINISH_REASONS,
    TGI_VERSION,
    VLLM_VERSION,
    SimEngine,
    SimEngines,
    SimTgiServer,
    TokenCounts,
    TokenProfile,
    request_stream,
    rust_float,
)
from tests.fake_clock import WALL_START, FakeClock

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"
PID_STEP = 137


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_job(
    name: str,
    engine: str,
    model: str,
    load_at: Callable[[float], float | None],
    run_at: Callable[[float], int] = lambda t: 0,
    first_pid: int = 4000,
) -> DemoJob:
    return DemoJob(
        name=name,
        gpu_index=0,
        engine=engine,
        model=model,
        command=f"{engine} serve {model}",
        container=engine,
        pod=f"{name}-pod",
        namespace="test",
        memory_bytes=10 * 2**30,
        first_pid=first_pid,
        memory_percent_per_sm_percent=0.5,
        load_at=load_at,
        run_at=run_at,
    )


def one_gpu_node(clock: FakeClock) -> SimNode:
    node = SimNode(clock)
    node.add_gpu("GPU-00000000-1111-2222-3333-444444444444")
    return node


def expected_counts(
    profile: TokenProfile, seed: str, progress: Fraction
) -> TokenCounts:
    """Counts for a run's progress, straight from the model's definition."""
    started = finished = prompt = finished_prompt = finished_generation = 0
    offset = 0
    for request in request_stream(profile, seed):
        if progress <= offset:
            break
        started += 1
        prompt += request.prompt_tokens
        end = offset + request.generation_tokens
        if progress < end:
            break
        finished += 1
        finished_prompt += request.prompt_tokens
        finished_generation += request.generation_tokens
        offset = end
    return TokenCounts(
        prompt_tokens=prompt,
        generation_tokens=math.floor(progress),
        started_requests=started,
        finished_requests=finished,
        finished_prompt_tokens=finished_prompt,
        finished_generation_tokens=finished_generation,
    )


def step(
    clock: FakeClock, workload: DemoWorkload, engines: SimEngines, seconds: float
) -> None:
    clock.advance(seconds)
    workload.advance(clock.monotonic())
    engines.advance(clock.monotonic())


async def scrape(
    session: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[str, aiohttp.ClientResponse]:
    async with session.get(url, headers=headers) as response:
        assert response.status == 200
        return await response.text(), response


def families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(family: Metric, sample_name: str, **labels: str) -> float:
    matches = [
        s.value
        for s in family.samples
        if s.name == sample_name
        and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (sample_name, labels, matches)
    return matches[0]


def buckets(family: Metric, **labels: str) -> list[tuple[str, float]]:
    return [
        (s.labels["le"], s.value)
        for s in family.samples
        if s.name.endswith("_bucket")
        and all(s.labels.get(k) == v for k, v in labels.items())
    ]


# The token model


def test_request_stream_is_reproducible_and_bounded() -> None:
    profile = DEMO_PROFILES[LLAMA]
    first = [
        r for r, _ in zip(request_stream(profile, "a/1"), range(2000), strict=False)
    ]
    again = [
        r for r, _ in zip(request_stream(profile, "a/1"), range(2000), strict=False)
    ]
    other = [
        r for r, _ in zip(request_stream(profile, "a/2"), range(2000), strict=False)
    ]
    assert first == again
    assert first != other
    for request in first:
        assert 1 <= request.prompt_tokens <= profile.max_input_tokens
        assert 1 <= request.generation_tokens <= request.max_tokens
        assert request.max_tokens == profile.max_tokens
        if request.finish_reason == "length":
            assert request.generation_tokens == request.max_tokens
        elif request.finish_reason == "stop":
            assert request.generation_tokens < request.max_tokens
        else:
            assert request.finish_reason == "abort"
    reasons = [r.finish_reason for r in first]
    assert 0.07 < reasons.count("length") / len(reasons) < 0.17
    assert 0.005 < reasons.count("abort") / len(reasons) < 0.04
    prompt = sum(r.prompt_tokens for r in first)
    generation = sum(r.generation_tokens for r in first)
    assert 1.2 < prompt / generation < 4.0


def test_tokens_integrate_exactly_over_the_clock(clock: FakeClock) -> None:
    job = make_job("vllm-half", "vllm", LLAMA, lambda t: 0.5)
    workload = DemoWorkload(one_gpu_node(clock), jobs=[job])
    engines = SimEngines(workload, clock)
    start = Fraction(clock.monotonic())
    profile = DEMO_PROFILES[LLAMA]
    seed = f"vllm-half/{job.first_pid}"
    for seconds in (0.1, 0.37, 1.0, 2.5, 0.03, 7.0, 0.25, 13.0):
        step(clock, workload, engines, seconds)
        progress = (
            profile.generation_tokens_per_s
            * Fraction(50, 100)
            * (Fraction(clock.monotonic()) - start)
        )
        truth = engines.truth()["vllm-half"]
        assert truth.this_run == expected_counts(profile, seed, progress)
        assert truth.since_start == truth.this_run
        assert truth.pid == job.first_pid
        assert truth.runs == 1
    assert truth.this_run.finished_requests > 10

    # Reads integrate up to the present with the load last set, as the GPUs do.
    clock.advance(0.9)
    progress += profile.generation_tokens_per_s * Fraction(1, 2) * Fraction(0.9)
    assert engines.truth()["vllm-half"].this_run == expected_counts(
        profile, seed, progress
    )


def test_tokens_follow_the_sm_share_the_gpu_processes_get(clock: FakeClock) -> None:
    """Over 200 s of the demo, including SGLang's restart, sampled every 0.25 s."""
    node = build_demo_node(clock)
    workload = DemoWorkload(node)
    engines = SimEngines(workload, clock)
    assert set(engines.engines) == {
        "vllm-llama-3.1-8b",
        "tgi-mistral-7b",
        "sglang-qwen2.5-7b",
    }
    jobs = {job.name: job for job in workload.jobs}
    # Per engine: finished runs (seed, progress) and the current one.
    runs: dict[str, list[tuple[str, Fraction]]] = {}
    sm_percent: dict[str, int] = {}
    pids: dict[str, int | None] = {}

    def observe() -> None:
        for name, job in jobs.items():
            if name not in engines.engines:
                continue
            pid = workload.pid_of(name)
            if pid is not None and pid != pids.get(name):
                runs.setdefault(name, []).append((f"{name}/{pid}", Fraction(0)))
            pids[name] = pid
            gpu = node.gpus[job.gpu_index]
            shares = [p.sm_percent for p in gpu.processes if p.pid == pid]
            sm_percent[name] = shares[0] if shares else 0

    observe()
    for _ in range(800):
        before = Fraction(clock.monotonic())
        clock.advance(0.25)
        dt = Fraction(clock.monotonic()) - before
        for name, share in sm_percent.items():
            if pids[name] is None:
                continue
            seed, progress = runs[name][-1]
            rate = DEMO_PROFILES[jobs[name].model].generation_tokens_per_s
            runs[name][-1] = (seed, progress + rate * Fraction(share, 100) * dt)
        workload.advance(clock.monotonic())
        engines.advance(clock.monotonic())
        observe()

    truth = engines.truth()
    for name, history in runs.items():
        profile = DEMO_PROFILES[jobs[name].model]
        counts = [expected_counts(profile, seed, p) for seed, p in history]
        current = counts[-1] if pids[name] is not None else TokenCounts()
        if pids[name] is not None:
            assert truth[name].this_run == current
        assert truth[name].since_start == sum(counts, TokenCounts())
        assert truth[name].runs == len(history)
    assert truth["sglang-qwen2.5-7b"].runs == 2
    sglang = truth["sglang-qwen2.5-7b"]
    assert 0 < sglang.this_run.generation_tokens < sglang.since_start.generation_tokens
    assert truth["vllm-llama-3.1-8b"].since_start.generation_tokens > 250_000


def test_an_idle_or_stopped_engine_makes_no_tokens(clock: FakeClock) -> None:
    job = make_job("idle", "vllm", LLAMA, lambda t: 0.0)
    gone = make_job("gone", "tgi", MISTRAL, lambda t: None, first_pid=5000)
    workload = DemoWorkload(one_gpu_node(clock), jobs=[job, gone])
    engines = SimEngines(workload, clock)
    step(clock, workload, engines, 60.0)
    truth = engines.truth()
    assert truth["idle"].this_run == TokenCounts()
    assert truth["idle"].pid == job.first_pid
    assert truth["gone"].pid is None
    assert truth["gone"].runs == 0
    assert not engines.engines["gone"].up


def test_sglang_gets_a_token_model_but_no_server(clock: FakeClock) -> None:
    workload = DemoWorkload(build_demo_node(clock))
    engines = SimEngines(workload, clock)
    assert set(engines.servers) == {"vllm-llama-3.1-8b", "tgi-mistral-7b"}
    assert "finetune-lora-llama-8b" not in engines.engines
    step(clock, workload, engines, 5.0)
    assert engines.truth()["sglang-qwen2.5-7b"].this_run.generation_tokens > 0


def test_a_tgi_engine_cannot_have_client_aborts(clock: FakeClock) -> None:
    job = make_job("tgi", "tgi", LLAMA, lambda t: 0.5)
    engine = SimEngine(job, DEMO_PROFILES[LLAMA], clock)
    with pytest.raises(ValueError, match="aborts"):
        SimTgiServer(engine)


def test_observers_attach_only_before_the_first_run(clock: FakeClock) -> None:
    workload = DemoWorkload(build_demo_node(clock))
    engines = SimEngines(workload, clock)
    engine = engines.engines["tgi-mistral-7b"]
    with pytest.raises(RuntimeError):
        SimTgiServer(engine)


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (2.0, "2"),
        (0.0, "0"),
        (0.5, "0.5"),
        (1e-05, "0.00001"),
        (1e20, "100000000000000000000"),
        (0.0001 * 1.5, "0.00015000000000000001"),
        (32767 / 100.0 * 5.0, "1638.3500000000001"),
        (123456.0, "123456"),
    ],
)
def test_rust_float_formats_as_rust_displays_f64(number: float, text: str) -> None:
    assert rust_float(number) == text


# vLLM

VLLM_FAMILIES = {
    "counter": {
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:num_preemptions",
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "vllm:request_success",
        "python_gc_objects_collected",
        "python_gc_objects_uncollectable",
        "python_gc_collections",
        "process_cpu_seconds",
    },
    "gauge": {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:cache_config_info",
        "python_info",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    },
    "histogram": {
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:iteration_tokens_total",
        "vllm:request_max_num_generation_tokens",
        "vllm:request_params_n",
        "vllm:request_params_max_tokens",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:request_time_per_output_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_inference_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
    },
}
VLLM_CREATED = {
    f"{name}_created"
    for name in VLLM_FAMILIES["counter"] | VLLM_FAMILIES["histogram"]
    if name.startswith("vllm:")
}


def check_vllm_families(
    parsed: dict[str, Metric], model: str, created: float, counts: TokenCounts
) -> None:
    expected = {n: kind for kind, names in VLLM_FAMILIES.items() for n in names}
    expected |= dict.fromkeys(VLLM_CREATED, "gauge")
    assert {n: f.type for n, f in parsed.items()} == expected
    for name, family in parsed.items():
        if not name.startswith("vllm:"):
            continue
        for sample in family.samples:
            assert sample.labels["engine"] == "0", sample
            if name == "vllm:cache_config_info":
                continue  # the cache configuration, no model
            assert sample.labels["model_name"] == model, sample
            if name.endswith("_created"):
                assert sample.value == created
    for name in VLLM_FAMILIES["counter"]:
        assert all(s.name.endswith("_total") for s in parsed[name].samples)

    assert value(parsed["vllm:prompt_tokens"], "vllm:prompt_tokens_total") == (
        counts.prompt_tokens
    )
    assert value(parsed["vllm:generation_tokens"], "vllm:generation_tokens_total") == (
        counts.generation_tokens
    )
    success = parsed["vllm:request_success"].samples
    assert [s.labels["finished_reason"] for s in success] == list(FINISH_REASONS)
    assert sum(s.value for s in success) == counts.finished_requests
    for name, total in (
        ("vllm:request_prompt_tokens", counts.finished_prompt_tokens),
        ("vllm:request_generation_tokens", counts.finished_generation_tokens),
    ):
        assert value(parsed[name], f"{name}_sum") == total
        assert value(parsed[name], f"{name}_count") == counts.finished_requests
    for name in VLLM_FAMILIES["histogram"]:
        series = buckets(parsed[name])
        counts_by_le = [count for _, count in series]
        assert counts_by_le == sorted(counts_by_le), name
        assert series[-1] == ("+Inf", value(parsed[name], f"{name}_count"))


async def test_vllm_metrics_carry_the_ground_truth(clock: FakeClock) -> None:
    workload = DemoWorkload(build_demo_node(clock))
    engines = SimEngines(workload, clock)
    await engines.start()
    try:
        server = engines.servers["vllm-llama-3.1-8b"]
        assert server.port > 0
        async with aiohttp.ClientSession() as session:
            text, response = await scrape(session, f"{server.url}/metrics")
            assert response.headers["Content-Type"].startswith("text/plain")
            # A fresh V1 engine shows every series at zero from the start.
            check_vllm_families(families(text), LLAMA, WALL_START, TokenCounts())

            for _ in range(240):
                step(clock, workload, engines, 0.25)
            text, _ = await scrape(session, f"{server.url}/metrics")
            counts = engines.truth()["vllm-llama-3.1-8b"].this_run
            assert counts.finished_requests > 100
            check_vllm_families(families(text), LLAMA, WALL_START, counts)
            assert "# TYPE vllm:prompt_tokens_total counter\n" in text
            assert "# TYPE vllm:prompt_tokens_created gauge\n" in text
            running = families(text)["vllm:num_requests_running"]
            assert running.samples[0].value > 0

            # Between two advances, a scrape integrates up to the present.
            clock.advance(2.0)
            text, _ = await scrape(session, f"{server.url}/metrics")
            later = engines.truth()["vllm-llama-3.1-8b"].this_run
            assert later.generation_tokens > counts.generation_tokens
            check_vllm_families(families(text), LLAMA, WALL_START, later)
    finally:
        await engines.stop()


async def test_vllm_negotiates_openmetrics_and_gzip(clock: FakeClock) -> None:
    workload = DemoWorkload(build_demo_node(clock))
    engines = SimEngines(workload, clock)
    await engines.start()
    try:
        url = f"{engines.servers['vllm-llama-3.1-8b'].url}/metrics"
        async with aiohttp.ClientSession() as session:
            text, response = await scrape(
                session, url, Accept="application/openmetrics-text; version=1.0.0"
            )
            assert response.headers["Content-Type"].startswith(
                "application/openmetrics-text"
            )
            assert text.endswith("# EOF\n")
            _, response = await scrape(session, url, **{"Accept-Encoding": "gzip"})
            assert response.headers["Content-Encoding"] == "gzip"
            _, response = await scrape(session, url, **{"Accept-Encoding": "identity"})
            assert "Content-Encoding" not in response.headers
    finally:
        await engines.stop()


# TGI

TGI_COUNTERS = {
    "tgi_request_count",
    "tgi_request_success",
    "tgi_batch_inference_count",
    "tgi_batch_inference_success",
    "tgi_batch_concat",
}
TGI_GAUGES = {
    "tgi_queue_size",
    "tgi_batch_current_size",
    "tgi_batch_current_max_tokens",
}
TGI_HISTOGRAMS = {
    "tgi_request_input_length",
    "tgi_request_max_new_tokens",
    "tgi_batch_next_size",
    "tgi_batch_forward_duration",
    "tgi_batch_decode_duration",
    "tgi_batch_filter_duration",
    "tgi_batch_inference_duration",
    "tgi_batch_concat_duration",
    "tgi_request_validation_duration",
    "tgi_request_queue_duration",
    "tgi_request_inference_duration",
    "tgi_request_mean_time_per_token_duration",
    "tgi_request_duration",
    "tgi_request_generated_tokens",
}
SAMPLE_LINE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def check_rust_exporter_text(text: str) -> None:
    """Blank line after every family, integers bare, labels in insertion order."""
    assert text.endswith("\n\n")
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        name = lines[0].split()[2]
        if lines[0].startswith("# HELP"):
            assert lines[1].startswith(f"# TYPE {name} ")
            lines = lines[2:]
        else:
            assert lines[0].startswith(f"# TYPE {name} ")
            lines = lines[1:]
        assert lines
        for line in lines:
            match = SAMPLE_LINE.match(line)
            assert match, line
            sample, labels, number = match.groups()
            assert sample.startswith(name)
            assert "model" not in (labels or "")
            assert not number.endswith(".0"), line
            assert "e" not in number, line
            if sample.endswith(("_bucket", "_count")) or sample == name:
                assert number.isdigit() or name in {"tgi_queue_size"}, line
            if labels and "le=" in labels:
                assert labels.endswith('le="+Inf"}') or re.search(
                    r',?le="[0-9.]+"\}$', labels
                ), line


async def test_tgi_metrics_carry_the_ground_truth_in_rust_format(
    clock: FakeClock,
) -> None:
    workload = DemoWorkload(build_demo_node(clock))
    engines = SimEngines(workload, clock)
    await engines.start()
    try:
        server = engines.servers["tgi-mistral-7b"]
        async with aiohttp.ClientSession() as session:
            # The exporter creates series as they are first recorded.
            text, response = await scrape(session, f"{server.url}/metrics")
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert text == ""

            for _ in range(240):
                step(clock, workload, engines, 0.25)
            text, _ = await scrape(session, f"{server.url}/metrics")
    finally:
        await engines.stop()

    counts = engines.truth()["tgi-mistral-7b"].this_run
    assert counts.finished_requests > 50
    check_rust_exporter_text(text)
    # Counters first, then gauges, then histograms.
    kinds = re.findall(r"^# TYPE \S+ (\w+)$", text, flags=re.MULTILINE)
    assert kinds == sorted(kinds, key=["counter", "gauge", "histogram"].index)
    assert "# HELP tgi_batch_concat " not in text
    assert "\n\n# TYPE tgi_batch_concat counter\n" in text
    assert (
        'tgi_batch_inference_duration_bucket{method="prefill",le="0.00015000000000000001"}'
        in text
    )
    assert 'tgi_request_input_length_bucket{le="327.67"}' in text

    parsed = families(text)
    assert {n for n, f in parsed.items() if f.type == "counter"} == TGI_COUNTERS
    assert {n for n, f in parsed.items() if f.type == "gauge"} == TGI_GAUGES
    assert {n for n, f in parsed.items() if f.type == "histogram"} == TGI_HISTOGRAMS
    for family in parsed.values():
        for sample in family.samples:
            assert set(sample.labels) <= {"method", "le", "reason"}

    input_length = parsed["tgi_request_input_length"]
    assert value(input_length, "tgi_request_input_length_sum") == counts.prompt_tokens
    assert value(input_length, "tgi_request_input_length_count") == (
        counts.started_requests
    )
    generated = parsed["tgi_request_generated_tokens"]
    assert value(generated, "tgi_request_generated_tokens_sum") == (
        counts.finished_generation_tokens
    )
    assert value(generated, "tgi_request_generated_tokens_count") == (
        counts.finished_requests
    )
    # The parser files TGI's bare counters under a ``_total`` sample name.
    assert value(parsed["tgi_request_count"], "tgi_request_count_total") == (
        counts.started_requests
    )
    assert value(parsed["tgi_request_success"], "tgi_request_success_total") == (
        counts.finished_requests
    )
    assert f"\ntgi_request_count {counts.started_requests}\n" in text
    assert len(buckets(input_length)) == 101
    assert len(buckets(generated)) == 101
    assert len(buckets(parsed["tgi_batch_next_size"])) == 1025
    assert len(buckets(parsed["tgi_request_duration"])) == 36
    for method in ("prefill", "decode"):
        series = buckets(parsed["tgi_batch_inference_duration"], method=method)
        assert len(series) == 36
        assert series[-1][1] == value(
            parsed["tgi_batch_inference_duration"],
            "tgi_batch_inference_duration_count",
            method=method,
        )


# Restarts


def load_with_gap(t: float) -> float | None:
    """Half load, except that the process is gone from 30 s to 40 s."""
    return None if 30.0 <= t < 40.0 else 0.5


def run_after_gap(t: float) -> int:
    return 0 if t < 35.0 else 1


async def down(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as response:
            await response.read()
    except aiohttp.ClientError:
        return True
    return False


async def test_a_process_restart_resets_the_served_counters(clock: FakeClock) -> None:
    jobs = [
        make_job("vllm-r", "vllm", LLAMA, load_with_gap, run_after_gap, 4000),
        make_job("tgi-r", "tgi", MISTRAL, load_with_gap, run_after_gap, 6000),
    ]
    workload = DemoWorkload(one_gpu_node(clock), jobs=jobs)
    engines = SimEngines(workload, clock)
    await engines.start()
    try:
        vllm_url = f"{engines.servers['vllm-r'].url}/metrics"
        tgi_url = f"{engines.servers['tgi-r'].url}/metrics"
        async with aiohttp.ClientSession() as session:
            for _ in range(29):
                step(clock, workload, engines, 1.0)
            first = engines.truth()
            text, _ = await scrape(session, vllm_url)
            vllm = families(text)
            assert value(
                vllm["vllm:generation_tokens"], "vllm:generation_tokens_total"
            ) == (first["vllm-r"].this_run.generation_tokens)
            assert (
                value(vllm["process_start_time_seconds"], "process_start_time_seconds")
                == WALL_START
            )

            # The processes die: their servers stop answering.
            for _ in range(6):
                step(clock, workload, engines, 1.0)
            gone = engines.truth()
            assert gone["vllm-r"].pid is None
            assert gone["vllm-r"].this_run == gone["vllm-r"].since_start
            assert await down(session, vllm_url)
            assert await down(session, tgi_url)

            # New processes, new runs: counters start again from zero.
            for _ in range(7):
                step(clock, workload, engines, 1.0)
            again = engines.truth()
            restarted_at = WALL_START + 40.0
            for name in ("vllm-r", "tgi-r"):
                truth = again[name]
                assert truth.runs == 2
                assert (
                    truth.pid == jobs[0 if name == "vllm-r" else 1].first_pid + PID_STEP
                )
                assert truth.since_start == gone[name].since_start + truth.this_run
                assert (
                    0
                    < truth.this_run.generation_tokens
                    < gone[name].this_run.generation_tokens
                )

            text, _ = await scrape(session, vllm_url)
            vllm = families(text)
            check_vllm_families(vllm, LLAMA, restarted_at, again["vllm-r"].this_run)
            assert (
                value(vllm["process_start_time_seconds"], "process_start_time_seconds")
                == restarted_at
            )

            text, _ = await scrape(session, tgi_url)
            tgi = families(text)
            counts = again["tgi-r"].this_run
            assert (
                value(tgi["tgi_request_input_length"], "tgi_request_input_length_sum")
                == counts.prompt_tokens
            )
            assert (
                value(tgi["tgi_request_count"], "tgi_request_count_total")
                == counts.started_requests
            )
    finally:
        await engines.stop()


# The other endpoints


async def test_info_version_models_and_health(clock: FakeClock) -> None:
    workload = DemoWorkload(build_demo_node(clock))
    engines = SimEngines(workload, clock)
    await engines.start()
    try:
        vllm = engines.servers["vllm-llama-3.1-8b"].url
        tgi = engines.servers["tgi-mistral-7b"].url
        async with aiohttp.ClientSession() as session:
            text, response = await scrape(session, f"{vllm}/version")
            assert response.headers["Content-Type"].startswith("application/json")
            assert json.loads(text) == {"version": VLLM_VERSION}

            text, _ = await scrape(session, f"{vllm}/v1/models")
            models = json.loads(text)
            assert models["object"] == "list"
            [card] = models["data"]
            assert card["id"] == card["root"] == LLAMA
            assert card["owned_by"] == "vllm"
            assert card["max_model_len"] == DEMO_PROFILES[LLAMA].max_model_len

            text, _ = await scrape(session, f"{tgi}/info")
            info = json.loads(text)
            assert list(info) == [
                "model_id",
                "model_sha",
                "model_pipeline_tag",
                "max_concurrent_requests",
                "max_best_of",
                "max_stop_sequences",
                "max_input_tokens",
                "max_total_tokens",
                "validation_workers",
                "max_client_batch_size",
                "router",
                "version",
                "sha",
                "docker_label",
            ]
            assert info["model_id"] == MISTRAL
            assert info["router"] == "text-generation-router"
            assert info["version"] == TGI_VERSION
            assert info["max_input_tokens"] == 32767
            assert info["max_total_tokens"] == 32768
            assert re.fullmatch(r"[0-9a-f]{40}", info["model_sha"])

            text, _ = await scrape(session, f"{tgi}/v1/models")
            assert json.loads(text)["data"][0]["id"] == MISTRAL

            for url in (vllm, tgi):
                _, response = await scrape(session, f"{url}/health")
    finally:
        await engines.stop()
