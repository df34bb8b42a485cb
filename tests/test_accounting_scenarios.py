"""Attribution on the simulated node, against the simulation's ground truth.

Each scenario runs the real GPU source over the simulated NVML, second by second on
a fake clock, feeds the samples to the attributor and the books, and compares what
they booked with what the simulation knows happened, computed independently.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from gpumeter.accounting.attribution import Attributor, IdleBaseline
from gpumeter.accounting.books import Books
from gpumeter.accounting.pricing import Pricing
from gpumeter.accounting.records import GpuInterval
from gpumeter.config import PricingSettings, TariffPeriodSettings, TariffSettings
from gpumeter.engines.records import EngineStatus, EngineTarget, ModelTotals
from gpumeter.gpus import NvmlSource
from gpumeter.sim import SimGpu, SimNode, SimProcess, SimulatedNvml
from tests.fake_clock import WALL_START, FakeClock

IDLE_W = 70.0
GIB = 2**30


@dataclass
class Run:
    """A simulated node under the accounting pipeline."""

    clock: FakeClock = field(default_factory=FakeClock)
    policy: str = "share"

    def __post_init__(self) -> None:
        self.node = SimNode(self.clock)
        self.idle_watts: dict[str, float] = {}
        self.idle = IdleBaseline(self.idle_watts)
        self.intervals: list[GpuInterval] = []
        self._source: NvmlSource | None = None

    def gpu(self, index: int) -> SimGpu:
        """Adds a GPU whose idle power the attributor is told."""
        uuid = f"GPU-{index:08d}-0000-0000-0000-000000000000"
        self.idle_watts[uuid] = IDLE_W
        self.idle = IdleBaseline(self.idle_watts)
        return self.node.add_gpu(uuid, idle_power_w=IDLE_W, max_power_w=700.0)

    def run(
        self, seconds: int, each_second: Callable[[float], None] | None = None
    ) -> None:
        if self._source is None:
            self._source = NvmlSource(SimulatedNvml(self.node), self.clock)
            self.attributor = Attributor(self.idle, self.policy)  # type: ignore[arg-type]
            self.attributor.update(self._source.sample())
        for _ in range(seconds):
            self.clock.advance(1.0)
            if each_second is not None:
                each_second(self.clock.monotonic())
            self.intervals.extend(self.attributor.update(self._source.sample()))

    def mark(self) -> None:
        """From here on, booked energy is compared with the truth."""
        self.marked_truth = self.truth()
        self.marked_interval = len(self.intervals)

    def truth(self) -> dict[str, tuple[float, float, dict[int, float]]]:
        return {
            gpu.uuid: (
                gpu.truth.total_joules,
                gpu.truth.idle_joules,
                dict(gpu.truth.active_joules_by_pid),
            )
            for gpu in self.node.gpus
        }

    def booked(self) -> tuple[dict[str, float], dict[int, float]]:
        """Energy per GPU UUID, and active energy per PID, over all intervals."""
        per_gpu: defaultdict[str, float] = defaultdict(float)
        per_pid: defaultdict[int, float] = defaultdict(float)
        for interval in self.intervals[self.marked_interval :]:
            per_gpu[interval.uuid] += interval.energy_joules
            for part in interval.processes:
                per_pid[part.pid] += part.active_joules
        return dict(per_gpu), dict(per_pid)


def _since(
    after: dict[str, tuple[float, float, dict[int, float]]],
    before: dict[str, tuple[float, float, dict[int, float]]],
) -> tuple[dict[str, float], dict[int, float]]:
    energy = {uuid: after[uuid][0] - before[uuid][0] for uuid in after}
    active: defaultdict[int, float] = defaultdict(float)
    for uuid, (_, _, by_pid) in after.items():
        for pid, joules in by_pid.items():
            active[pid] += joules - before[uuid][2].get(pid, 0.0)
    return energy, dict(active)


def _wave(base: float, swing: float, period_s: float) -> Callable[[float], int]:
    return lambda t: round(base + swing * math.sin(2 * math.pi * t / period_s))


def _check(run: Run) -> None:
    true_energy, true_active = _since(run.truth(), run.marked_truth)
    booked_energy, booked_active = run.booked()
    for uuid, joules in true_energy.items():
        # The counter moves in whole millijoules; nothing else separates the two.
        assert booked_energy.get(uuid, 0.0) == pytest.approx(joules, rel=1e-3, abs=0.01)
    for pid, joules in true_active.items():
        if joules > 1.0:
            assert booked_active.get(pid, 0.0) == pytest.approx(joules, rel=0.02), pid


def test_one_engine_per_gpu() -> None:
    run = Run()
    gpus = [run.gpu(i) for i in range(2)]
    gpus[0].add_process(SimProcess(pid=100, memory_bytes=60 * GIB, sm_percent=50))
    gpus[1].add_process(SimProcess(pid=200, memory_bytes=30 * GIB, sm_percent=20))
    loads = (_wave(55, 30, 40), _wave(35, 25, 25))
    run.run(1)
    run.mark()

    def step(t: float) -> None:
        gpus[0].update_process(100, sm_percent=loads[0](t))
        gpus[1].update_process(200, sm_percent=loads[1](t))

    run.run(120, step)
    _check(run)
    assert {i.basis for i in run.intervals} == {"single"}


def test_two_engines_share_one_gpu_by_sm() -> None:
    run = Run()
    gpu = run.gpu(0)
    gpu.add_process(SimProcess(pid=100, memory_bytes=40 * GIB, sm_percent=60))
    gpu.add_process(SimProcess(pid=200, memory_bytes=20 * GIB, sm_percent=15))
    loads = (_wave(50, 20, 30), _wave(20, 10, 17))
    run.run(1)
    run.mark()

    def step(t: float) -> None:
        gpu.update_process(100, sm_percent=loads[0](t))
        gpu.update_process(200, sm_percent=loads[1](t))

    run.run(90, step)
    _check(run)
    assert {i.basis for i in run.intervals} == {"sm"}


def test_one_engine_across_four_gpus_sums_them() -> None:
    run = Run()
    gpus = [run.gpu(i) for i in range(4)]
    for rank, gpu in enumerate(gpus):
        gpu.add_process(
            SimProcess(pid=300 + rank, memory_bytes=70 * GIB, sm_percent=70)
        )
    run.run(1)
    run.mark()
    load = _wave(65, 20, 20)

    def step(t: float) -> None:
        for rank, gpu in enumerate(gpus):
            gpu.update_process(300 + rank, sm_percent=load(t + rank))

    run.run(60, step)
    _check(run)
    engine = EngineStatus(
        target=EngineTarget(
            name="vllm-tp4", base_url="http://x:1", pids=frozenset(range(300, 304))
        ),
        up=True,
        kind="vllm",
        totals={"llama-70b": ModelTotals(prompt_tokens=0, generation_tokens=0)},
    )
    books = Books(Pricing(PricingSettings()))
    books.book_tokens([engine], 0.0)
    books.book_intervals(run.intervals[run.marked_interval :], {}, [engine])
    true_energy, _ = _since(run.truth(), run.marked_truth)
    booked = sum(j for (w, _, _), j in books.energy_joules.items() if w == "vllm-tp4")
    assert booked == pytest.approx(sum(true_energy.values()), rel=1e-3)
    assert {gpu for (w, _, gpu) in books.energy_joules if w == "vllm-tp4"} == {
        "0",
        "1",
        "2",
        "3",
    }


def test_a_training_job_beside_an_engine() -> None:
    run = Run()
    gpu = run.gpu(0)
    gpu.add_process(SimProcess(pid=100, memory_bytes=30 * GIB, sm_percent=30))
    gpu.add_process(SimProcess(pid=500, memory_bytes=40 * GIB, sm_percent=60))
    run.run(1)
    run.mark()
    run.run(60, lambda t: gpu.update_process(100, sm_percent=_wave(30, 15, 12)(t)))
    _check(run)


def test_an_idle_gpu_is_all_idle() -> None:
    run = Run()
    run.gpu(0)
    run.run(1)
    run.mark()
    run.run(30)
    _check(run)
    intervals = run.intervals[run.marked_interval :]
    assert all(i.basis == "none" and i.idle_holding_share == 1 for i in intervals)
    total = sum(i.energy_joules for i in intervals)
    assert sum(i.unattributed_joules for i in intervals) == pytest.approx(total)
    assert total == pytest.approx(30 * IDLE_W, rel=1e-3)


def test_a_driver_reload_is_never_negative_and_loses_little() -> None:
    run = Run()
    gpu = run.gpu(0)
    gpu.add_process(SimProcess(pid=100, memory_bytes=30 * GIB, sm_percent=50))
    run.run(1)
    run.mark()
    run.run(30)
    gpu.reset_energy_counter(0)
    run.run(30)
    intervals = run.intervals[run.marked_interval :]
    assert all(i.energy_joules >= 0 for i in intervals)
    assert [i.method for i in intervals].count("power") == 1
    true_energy, _ = _since(run.truth(), run.marked_truth)
    booked, _ = run.booked()
    # Only the reload's interval is estimated from power; it is steady here.
    assert booked[gpu.uuid] == pytest.approx(true_energy[gpu.uuid], rel=0.02)


def test_learned_idle_power_converges_on_the_true_idle_power() -> None:
    run = Run()
    uuid = "GPU-99999999-0000-0000-0000-000000000000"
    gpu = run.node.add_gpu(uuid, idle_power_w=IDLE_W, max_power_w=700.0)
    gpu.add_process(SimProcess(pid=100, memory_bytes=30 * GIB, sm_percent=80))
    run.run(20)
    gpu.update_process(100, sm_percent=0)
    run.run(20)
    assert run.idle.watts(uuid, "0") == pytest.approx(IDLE_W, rel=0.01)


def test_a_time_of_use_tariff_crossing_a_price_change() -> None:
    # The fake clock's wall time starts at 2023-11-14 22:13:20 UTC, a Tuesday; the
    # peak price ends at 22:14 UTC, 40 s into the run.
    tariff = TariffSettings(
        price_per_kwh=0.10,
        timezone="UTC",
        periods=(
            TariffPeriodSettings(
                days=("tue",), start="18:00", end="22:14", price_per_kwh=0.40
            ),
        ),
    )
    settings = PricingSettings(pue=1.2, node_overhead=1.1, tariff=tariff)
    run = Run()
    gpu = run.gpu(0)
    gpu.add_process(SimProcess(pid=100, memory_bytes=30 * GIB, sm_percent=10))
    run.run(1)
    run.mark()
    truth_per_second: list[tuple[float, float]] = []
    last = [gpu.truth.total_joules]

    def step(t: float) -> None:
        # Load rises across the price change, so a wrong split would show.
        gpu.update_process(100, sm_percent=min(100, 10 + int(t - 1000)))

    for _ in range(80):
        run.run(1, step)
        now = gpu.truth.total_joules
        truth_per_second.append((run.clock.time(), now - last[0]))
        last[0] = now
    expected = sum(
        joules / 3.6e6 * (0.40 if end <= WALL_START + 40 else 0.10) * 1.2 * 1.1
        for end, joules in truth_per_second
    )
    books = Books(Pricing(settings))
    books.book_intervals(run.intervals[run.marked_interval :], {}, [])
    booked = sum(v for (_, _, part), v in books.cost.items() if part == "energy")
    assert booked == pytest.approx(expected, rel=0.02)
    assert booked / (sum(j for _, j in truth_per_second) / 3.6e6) < 0.40 * 1.2 * 1.1


def test_cost_per_million_tokens_against_the_truth() -> None:
    run = Run()
    gpu = run.gpu(0)
    gpu.add_process(SimProcess(pid=100, memory_bytes=60 * GIB, sm_percent=50))
    books = Books(Pricing(PricingSettings()), window_s=900.0)
    engine_tokens = {"prompt": 0.0, "generation": 0.0}

    def status() -> EngineStatus:
        totals = ModelTotals(
            prompt_tokens=engine_tokens["prompt"],
            generation_tokens=engine_tokens["generation"],
        )
        return EngineStatus(
            target=EngineTarget(name="e", base_url="http://x:1", pids=frozenset({100})),
            up=True,
            kind="vllm",
            totals={"m": totals},
        )

    run.run(1)
    run.mark()
    books.book_tokens([status()], run.clock.time())
    start_truth = gpu.truth.total_joules
    for second in range(300):
        load = 30 + (second % 60)
        run.run(1, lambda t, load=load: gpu.update_process(100, sm_percent=load))
        # Tokens follow the load, as a real engine's do.
        engine_tokens["generation"] += 20.0 * load
        engine_tokens["prompt"] += 50.0 * load
        if second % 5 == 4:
            books.book_tokens([status()], run.clock.time())
        books.book_intervals(run.intervals[-1:], {}, [status()])
    prices = {p.token_kind: p for p in books.token_prices(run.clock.time())}
    true_joules = gpu.truth.total_joules - start_truth
    pricing = Pricing(PricingSettings())
    hardware, fixed = pricing.holding_cost(gpu.name, 300.0)
    true_money = pricing.energy_cost(true_joules, 0.0, 1.0) + hardware + fixed
    tokens = engine_tokens["prompt"] + engine_tokens["generation"]
    assert prices["all"].cost_per_million == pytest.approx(
        true_money / tokens * 1e6, rel=0.02
    )
    assert prices["all"].energy_per_token_joules == pytest.approx(
        true_joules / tokens, rel=0.02
    )
    # Prompt tokens weigh a quarter of generated ones (no phase times reported).
    prompt_money = true_money * 0.25 * 50 / (0.25 * 50 + 20)
    assert prices["prompt"].cost_per_million == pytest.approx(
        prompt_money / engine_tokens["prompt"] * 1e6, rel=0.02
    )


def test_two_engines_sharing_a_gpu_each_pay_their_own_way() -> None:
    run = Run()
    gpu = run.gpu(0)
    memory = {100: 45 * GIB, 200: 15 * GIB}
    gpu.add_process(SimProcess(pid=100, memory_bytes=memory[100], sm_percent=50))
    gpu.add_process(SimProcess(pid=200, memory_bytes=memory[200], sm_percent=20))
    pricing = Pricing(PricingSettings())
    books = Books(pricing)
    tokens = {100: 0.0, 200: 0.0}
    loads = {100: _wave(50, 20, 30), 200: _wave(20, 10, 17)}

    def engines() -> list[EngineStatus]:
        return [
            EngineStatus(
                target=EngineTarget(
                    name=f"e{pid}", base_url="http://x:1", pids=frozenset({pid})
                ),
                up=True,
                kind="vllm",
                totals={"m": ModelTotals(prompt_tokens=0.0, generation_tokens=n)},
            )
            for pid, n in tokens.items()
        ]

    run.run(1)
    run.mark()
    books.book_tokens(engines(), run.clock.time())
    before = run.truth()[gpu.uuid]

    def step(t: float) -> None:
        for pid, load in loads.items():
            gpu.update_process(pid, sm_percent=load(t))
            # Generated tokens per second follow each engine's load, at
            # different speeds for the two models.
            tokens[pid] += load(t) * (30.0 if pid == 100 else 55.0)

    for second in range(240):
        run.run(1, step)
        books.book_intervals(run.intervals[-1:], {}, engines())
        if second % 5 == 4:
            books.book_tokens(engines(), run.clock.time())
    after = run.truth()[gpu.uuid]
    idle = after[1] - before[1]
    hardware, fixed = pricing.holding_cost(gpu.name, 240.0)
    prices = {
        p.engine: p
        for p in books.token_prices(run.clock.time())
        if p.token_kind == "generation"
    }
    for pid in (100, 200):
        share = memory[pid] / sum(memory.values())
        joules = after[2][pid] - before[2].get(pid, 0.0) + idle * share
        money = pricing.energy_cost(joules, 0.0, 1.0) + (hardware + fixed) * share
        price = prices[f"e{pid}"]
        assert price.tokens == pytest.approx(tokens[pid])
        assert price.cost_per_million == pytest.approx(
            money / tokens[pid] * 1e6, rel=0.02
        )
        assert price.energy_per_token_joules == pytest.approx(
            joules / tokens[pid], rel=0.02
        )
