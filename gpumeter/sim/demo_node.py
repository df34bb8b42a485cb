"""The demo's simulated node: three H100s serving LLMs and training, over time."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gpumeter.clock import Clock
from gpumeter.sim.node import SimNode, SimProcess

logger = logging.getLogger(__name__)

__all__ = ["DEMO_GPU_UUIDS", "DemoJob", "DemoWorkload", "build_demo_node", "demo_jobs"]

DEMO_GPU_UUIDS = (
    "GPU-3f6a1c2e-8b4d-4e9a-9c71-2d5e8f0a6b13",
    "GPU-a81d04b7-5c3e-4f62-8d19-7e0b9c4f2a58",
    "GPU-5c9e7f21-0d6b-4a83-b2f4-1e8a6d3c9b70",
)
"""UUIDs of the demo node's GPUs, in index order."""

_H100_MEMORY_BYTES = 85_520_809_984
_PID_STEP = 137


def build_demo_node(clock: Clock) -> SimNode:
    """Builds the demo node: three idle H100 80GB HBM3 GPUs.

    The GPUs start idle; a :class:`DemoWorkload` starts and drives the processes.

    Args:
        clock: drives energy integration and utilization sample stamps.

    Returns:
        The node, its energy counters and temperatures those of a server that has
        been busy for hours.
    """
    node = SimNode(clock, driver_version="550.54.15")
    counters_mj = (4_812_345_678, 3_907_113_402, 6_120_554_019)
    # Warm from the work they did before the demo started.
    temperatures_c = (72.0, 70.0, 80.0)
    for uuid, energy_mj, temperature_c in zip(
        DEMO_GPU_UUIDS, counters_mj, temperatures_c, strict=True
    ):
        node.add_gpu(
            uuid,
            name="NVIDIA H100 80GB HBM3",
            idle_power_w=70.0,
            max_power_w=700.0,
            power_limit_mw=700_000,
            memory_total_bytes=_H100_MEMORY_BYTES,
            memory_reserved_bytes=536_870_912,
            energy_mj=energy_mj,
            temperature_c=temperature_c,
        )
    return node


@dataclass(frozen=True)
class DemoJob:
    """One workload of the demo: a GPU process whose load follows a curve over time.

    Attributes:
        name: short, stable name of the workload.
        gpu_index: NVML index of the GPU it runs on.
        engine: inference server kind (``vllm``, ``tgi``, ``sglang``), empty for a
            process that serves no tokens.
        model: the model it serves or trains.
        command: the process's command line.
        container: container name.
        pod: Kubernetes pod name.
        namespace: Kubernetes namespace.
        memory_bytes: GPU memory the process holds while it runs, in bytes.
        first_pid: PID of its first run; each restart adds a fixed step.
        memory_percent_per_sm_percent: memory-controller utilization per point of SM
            utilization (dimensionless).
        load_at: seconds since the demo started to the load in [0, 1], or None
            while the process does not exist.
        run_at: seconds since the demo started to the run number (0, 1, …); a new
            run is a new process with a new PID.
    """

    name: str
    gpu_index: int
    engine: str
    model: str
    command: str
    container: str
    pod: str
    namespace: str
    memory_bytes: int
    first_pid: int
    memory_percent_per_sm_percent: float
    load_at: Callable[[float], float | None]
    run_at: Callable[[float], int]

    def pid_at(self, seconds: float) -> int:
        """PID of the run that is (or was last) current at a time since the start."""
        return self.first_pid + _PID_STEP * self.run_at(seconds)


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3.0 - 2.0 * x)


def _wave(
    base: float, swing: float, period_s: float, phase: float, drift: float
) -> Callable[[float], float]:
    """A load that breathes over ``period_s`` and drifts over fifteen minutes."""

    def load(t: float) -> float:
        value = (
            base
            + swing * math.sin(2 * math.pi * t / period_s + phase)
            + drift * math.sin(2 * math.pi * t / 900.0 + 1.0)
        )
        return min(1.0, max(0.0, value))

    return load


def _load_for_power_fraction(fraction: float) -> float:
    """The load at which a lone process draws a fraction of the dynamic power range.

    The inverse of :func:`gpumeter.sim.node.power_curve`, ``u * (2 - u)``.
    """
    return 1.0 - math.sqrt(1.0 - min(1.0, max(0.0, fraction)))


@dataclass(frozen=True)
class _Restarting:
    """A process that runs, stops, and comes back as a new process, over and over.

    Within each cycle of ``period_s`` the process exists for the first ``up_s``
    seconds, with its load eased in over ``ramp_s`` at the start and out over
    ``ramp_s`` at the end. ``offset_s`` is where in its cycle the demo starts.
    """

    load: Callable[[float], float]
    period_s: float
    up_s: float
    ramp_s: float
    offset_s: float

    def load_at(self, t: float) -> float | None:
        position = (t + self.offset_s) % self.period_s
        if position >= self.up_s:
            return None
        envelope = _smoothstep(position / self.ramp_s) * _smoothstep(
            (self.up_s - position) / self.ramp_s
        )
        return self.load(t) * envelope

    def run_at(self, t: float) -> int:
        return math.floor((t + self.offset_s) / self.period_s)


@dataclass(frozen=True)
class _TrainingRuns:
    """A training job alone on its GPU: warm-up, steady training, wind-down, gone.

    Power, not load, is shaped: it rises and falls geometrically between idle and
    full training power (a constant percentage per second), which keeps the
    one-second power average close to the energy counter even at 1 Hz.
    """

    idle_w: float
    full_w: float
    max_w: float
    warmup_s: float
    steady_s: float
    wind_down_s: float
    pause_s: float
    offset_s: float

    @property
    def period_s(self) -> float:
        return self.warmup_s + self.steady_s + self.wind_down_s + self.pause_s

    def load_at(self, t: float) -> float | None:
        position = (t + self.offset_s) % self.period_s
        ratio = self.full_w / self.idle_w
        if position < self.warmup_s:
            power_w = self.idle_w * ratio ** (position / self.warmup_s)
        elif position < self.warmup_s + self.steady_s:
            wobble = 1.0 + 0.01 * math.sin(2 * math.pi * t / 7.0)
            power_w = min(self.max_w, self.full_w * wobble)
        elif position < self.warmup_s + self.steady_s + self.wind_down_s:
            left = self.warmup_s + self.steady_s + self.wind_down_s - position
            power_w = self.idle_w * ratio ** (left / self.wind_down_s)
        else:
            return None
        dynamic_w = self.max_w - self.idle_w
        return _load_for_power_fraction((power_w - self.idle_w) / dynamic_w)

    def run_at(self, t: float) -> int:
        return math.floor((t + self.offset_s) / self.period_s)


def _always_zero(t: float) -> int:
    return 0


def demo_jobs() -> tuple[DemoJob, ...]:
    """The demo's workloads.

    GPU 0 runs one vLLM engine whose load swings over a minute and drifts over
    fifteen; GPU 1 shares two engines (TGI and SGLang) with different loads, and
    the SGLang one is restarted every five minutes, coming back with a new PID
    after 20 s; GPU 2 runs a fine-tuning job that warms up for three minutes,
    trains for three, winds down for three, is gone for one, and starts again as a
    new process. The demo starts with the job training.

    Returns:
        The jobs, in GPU order.
    """
    inference = "inference"
    sglang = _Restarting(
        load=_wave(0.22, 0.06, 75.0, 0.5, 0.03),
        period_s=300.0,
        up_s=280.0,
        ramp_s=60.0,
        offset_s=150.0,
    )
    training = _TrainingRuns(
        idle_w=70.0,
        full_w=640.0,
        max_w=700.0,
        warmup_s=180.0,
        steady_s=180.0,
        wind_down_s=180.0,
        pause_s=60.0,
        offset_s=200.0,
    )
    return (
        DemoJob(
            name="vllm-llama-3.1-8b",
            gpu_index=0,
            engine="vllm",
            model="meta-llama/Llama-3.1-8B-Instruct",
            command=(
                "python3 -m vllm.entrypoints.openai.api_server "
                "--model meta-llama/Llama-3.1-8B-Instruct --port 8000"
            ),
            container="vllm",
            pod="vllm-llama-8b-6c9f7d5b4-qk2xw",
            namespace=inference,
            memory_bytes=76_968_729_600,
            first_pid=48213,
            memory_percent_per_sm_percent=0.7,
            load_at=_wave(0.62, 0.16, 60.0, 0.0, 0.08),
            run_at=_always_zero,
        ),
        DemoJob(
            name="tgi-mistral-7b",
            gpu_index=1,
            engine="tgi",
            model="mistralai/Mistral-7B-Instruct-v0.3",
            command=(
                "text-generation-launcher "
                "--model-id mistralai/Mistral-7B-Instruct-v0.3 --port 8080"
            ),
            container="tgi",
            pod="tgi-mistral-7b-5f8b9c7d6-m4tzn",
            namespace=inference,
            memory_bytes=38_484_364_800,
            first_pid=51877,
            memory_percent_per_sm_percent=0.65,
            load_at=_wave(0.36, 0.08, 90.0, 2.0, 0.04),
            run_at=_always_zero,
        ),
        DemoJob(
            name="sglang-qwen2.5-7b",
            gpu_index=1,
            engine="sglang",
            model="Qwen/Qwen2.5-7B-Instruct",
            command=(
                "python3 -m sglang.launch_server "
                "--model-path Qwen/Qwen2.5-7B-Instruct --port 30000"
            ),
            container="sglang",
            pod="sglang-qwen-7b-7d4c8b9f5-h2lxp",
            namespace=inference,
            memory_bytes=35_918_740_480,
            first_pid=52904,
            memory_percent_per_sm_percent=0.6,
            load_at=sglang.load_at,
            run_at=sglang.run_at,
        ),
        DemoJob(
            name="finetune-lora-llama-8b",
            gpu_index=2,
            engine="",
            model="meta-llama/Llama-3.1-8B",
            command=(
                "torchrun --nproc-per-node=1 train.py "
                "--config configs/lora-llama-8b.yaml"
            ),
            container="trainer",
            pod="finetune-lora-llama-8b-x7k2p",
            namespace="research",
            memory_bytes=61_203_283_968,
            first_pid=61450,
            memory_percent_per_sm_percent=0.45,
            load_at=training.load_at,
            run_at=training.run_at,
        ),
    )


class DemoWorkload:
    """Drives a demo node's processes along their load curves.

    Call :meth:`advance` often (every second or faster): it starts, updates and
    stops processes to match the curves at that time. Loads change by at most a few
    percent per second, so power sampled at 1 Hz tracks the energy counter.
    """

    def __init__(
        self,
        node: SimNode,
        *,
        start: float | None = None,
        jobs: Sequence[DemoJob] | None = None,
    ) -> None:
        """Starts the workloads at their state at ``start``.

        Args:
            node: the node, as :func:`build_demo_node` makes it.
            start: monotonic time, in seconds, that counts as the demo's start;
                None uses the node's clock now.
            jobs: the workloads; None uses :func:`demo_jobs`.
        """
        self._node = node
        self._start = node.clock.monotonic() if start is None else start
        self._jobs = tuple(demo_jobs() if jobs is None else jobs)
        self._pids: dict[str, int] = {}
        self._loads: dict[str, float] = {job.name: 0.0 for job in self._jobs}
        self.advance(self._start)

    @property
    def jobs(self) -> tuple[DemoJob, ...]:
        """The workloads being driven."""
        return self._jobs

    def loads(self) -> dict[str, float]:
        """Each workload's load in [0, 1] at the last advance (0 while stopped)."""
        return dict(self._loads)

    def pid_of(self, name: str) -> int | None:
        """PID of a workload's current process; None while it is stopped."""
        return self._pids.get(name)

    def advance(self, now: float) -> None:
        """Brings every process to its state at a given time.

        Args:
            now: monotonic time in seconds, on the same clock as the node's.
        """
        t = now - self._start
        gpus = self._node.gpus
        for job in self._jobs:
            gpu = gpus[job.gpu_index]
            load = job.load_at(t)
            pid = None if load is None else job.pid_at(t)
            current = self._pids.get(job.name)
            if current is not None and current != pid:
                gpu.remove_process(current)
                del self._pids[job.name]
                logger.debug("demo workload %s stopped (pid %d)", job.name, current)
            if load is None or pid is None:
                self._loads[job.name] = 0.0
                continue
            sm_percent = round(100 * load)
            memory_percent = round(job.memory_percent_per_sm_percent * sm_percent)
            if current == pid:
                gpu.update_process(
                    pid, sm_percent=sm_percent, memory_percent=memory_percent
                )
            else:
                gpu.add_process(
                    SimProcess(
                        pid=pid,
                        memory_bytes=job.memory_bytes,
                        sm_percent=sm_percent,
                        memory_percent=memory_percent,
                        command=job.command,
                        container=job.container,
                        pod=job.pod,
                        namespace=job.namespace,
                    )
                )
                self._pids[job.name] = pid
                logger.debug("demo workload %s started (pid %d)", job.name, pid)
            self._loads[job.name] = load
