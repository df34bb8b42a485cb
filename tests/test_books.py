"""Books: workloads, models by token share, and cost per token over the window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpumeter.accounting.books import IDLE_WORKLOAD, Books, workload_of
from gpumeter.accounting.records import GpuInterval, ProcessEnergy
from gpumeter.engines.records import EngineStatus, EngineTarget, ModelTotals
from gpumeter.processes import ProcessInfo

PRICE_PER_J = 1e-6
HARDWARE_PER_S = 0.002
FIXED_PER_S = 0.0005


class FlatPrices:
    currency = "USD"

    def energy_cost(
        self, joules: float, start_wall_s: float, end_wall_s: float
    ) -> float:
        return joules * PRICE_PER_J

    def holding_cost(self, gpu_name: str, duration_s: float) -> tuple[float, float]:
        return HARDWARE_PER_S * duration_s, FIXED_PER_S * duration_s


def _interval(
    end: float,
    parts: tuple[ProcessEnergy, ...],
    unattributed: float = 0.0,
    idle_share: float = 0.0,
    gpu: str = "0",
) -> GpuInterval:
    energy = sum(p.active_joules + p.idle_joules for p in parts) + unattributed
    return GpuInterval(
        gpu=gpu,
        uuid=f"GPU-{gpu}",
        name="NVIDIA H100 80GB HBM3",
        start_wall_s=end - 1,
        end_wall_s=end,
        duration_s=1.0,
        energy_joules=energy,
        method="counter",
        idle_joules=70.0,
        active_joules=energy - 70.0,
        basis="sm",
        processes=parts,
        unattributed_joules=unattributed,
        idle_holding_share=idle_share,
    )


def _engine(name: str, pids: frozenset[int], **models: ModelTotals) -> EngineStatus:
    target = EngineTarget(name=name, base_url="http://127.0.0.1:8000", pids=pids)
    return EngineStatus(target=target, up=True, kind="vllm", totals=models)


def _info(pid: int, **fields: object) -> ProcessInfo:
    values: dict[str, object] = {
        "pid": pid,
        "ppid": 1,
        "start_ticks": 1,
        "command": "python3",
        "cmdline": ("python3",),
        "uid": 0,
        "user": "root",
        "container_id": None,
        "container_runtime": None,
        "pod_uid": None,
        "systemd_unit": None,
        "cgroup_path": "/",
    }
    values.update(fields)
    return ProcessInfo(**values)  # type: ignore[arg-type]


def test_workload_names_prefer_the_most_stable_identity() -> None:
    pod = "2c9f8a79-5391-454b-88cb-86190881cb96"
    assert workload_of(_info(1, pod_uid=pod, container_id="a" * 64), 1) == f"pod/{pod}"
    assert workload_of(_info(1, container_id="b" * 64), 1) == "container/bbbbbbbbbbbb"
    assert (
        workload_of(_info(1, systemd_unit="train.service"), 1) == "unit/train.service"
    )
    assert workload_of(_info(1), 1) == "command/python3"
    assert workload_of(None, 1) == "unknown"


def test_an_engines_cost_is_split_among_its_models_by_token_share() -> None:
    books = Books(FlatPrices())
    engine = _engine(
        "vllm-a",
        frozenset({10}),
        big=ModelTotals(prompt_tokens=0, generation_tokens=0),
        small=ModelTotals(prompt_tokens=0, generation_tokens=0),
    )
    books.book_tokens([engine], wall_s=100.0)
    engine = _engine(
        "vllm-a",
        frozenset({10}),
        big=ModelTotals(prompt_tokens=300, generation_tokens=0),
        small=ModelTotals(prompt_tokens=100, generation_tokens=0),
    )
    books.book_tokens([engine], wall_s=101.0)
    part = ProcessEnergy(
        pid=10, active_joules=400.0, idle_joules=70.0, holding_share=1.0
    )
    trainer = ProcessEnergy(
        pid=20, active_joules=30.0, idle_joules=0.0, holding_share=0.0
    )
    processes = {20: _info(20, systemd_unit="train.service")}
    books.book_intervals([_interval(102.0, (part, trainer))], processes, [engine])
    assert books.energy_joules[("vllm-a", "big", "0")] == pytest.approx(470 * 0.75)
    assert books.energy_joules[("vllm-a", "small", "0")] == pytest.approx(470 * 0.25)
    assert books.energy_joules[("unit/train.service", "", "0")] == pytest.approx(30)
    assert books.cost[("vllm-a", "big", "hardware")] == pytest.approx(
        HARDWARE_PER_S * 0.75
    )
    assert books.cost[("unit/train.service", "", "hardware")] == 0.0
    assert books.cost[("vllm-a", "small", "energy")] == pytest.approx(470 * 0.25e-6)


def test_an_idle_gpu_books_everything_to_its_idle_workload() -> None:
    books = Books(FlatPrices())
    books.book_intervals(
        [_interval(10.0, (), unattributed=70.0, idle_share=1.0)], {}, []
    )
    assert books.energy_joules[(IDLE_WORKLOAD, "", "0")] == 70.0
    assert books.idle_cost["0"] == pytest.approx(70e-6 + HARDWARE_PER_S + FIXED_PER_S)


def test_cost_per_token_uses_prefill_and_decode_time_when_reported() -> None:
    books = Books(FlatPrices(), window_s=60)
    zero = ModelTotals(0, 0, 0, 0, 0)
    books.book_tokens([_engine("e", frozenset({1}), m=zero)], 0.0)
    moved = ModelTotals(
        prompt_tokens=2000, generation_tokens=500, prefill_seconds=1, decode_seconds=3
    )
    books.book_tokens([_engine("e", frozenset({1}), m=moved)], 1.0)
    part = ProcessEnergy(
        pid=1, active_joules=930.0, idle_joules=70.0, holding_share=1.0
    )
    books.book_intervals(
        [_interval(2.0, (part,))], {}, [_engine("e", frozenset({1}), m=moved)]
    )
    money = 1000 * PRICE_PER_J + HARDWARE_PER_S + FIXED_PER_S
    prices = {p.token_kind: p for p in books.token_prices(now_wall_s=3.0)}
    assert prices["prompt"].cost_per_million == pytest.approx(money * 0.25 / 2000 * 1e6)
    assert prices["generation"].cost_per_million == pytest.approx(
        money * 0.75 / 500 * 1e6
    )
    assert prices["all"].cost_per_million == pytest.approx(money / 2500 * 1e6)
    assert prices["generation"].energy_per_token_joules == pytest.approx(750 / 500)
    # Out of the window, nothing is left to price.
    assert books.token_prices(now_wall_s=100.0) == []


def test_cost_per_token_falls_back_to_the_configured_weight() -> None:
    books = Books(FlatPrices(), prefill_weight=0.25)
    zero = ModelTotals(prompt_tokens=0, generation_tokens=0)
    books.book_tokens([_engine("e", frozenset({1}), m=zero)], 0.0)
    moved = ModelTotals(prompt_tokens=400, generation_tokens=100)
    books.book_tokens([_engine("e", frozenset({1}), m=moved)], 1.0)
    part = ProcessEnergy(
        pid=1, active_joules=1000.0, idle_joules=0.0, holding_share=1.0
    )
    books.book_intervals(
        [_interval(2.0, (part,))], {}, [_engine("e", frozenset({1}), m=moved)]
    )
    prices = {p.token_kind: p for p in books.token_prices(now_wall_s=3.0)}
    # 400 prompt tokens weigh 100, as much as the 100 generated ones: half each.
    assert prices["prompt"].energy_per_token_joules == pytest.approx(500 / 400)
    assert prices["generation"].energy_per_token_joules == pytest.approx(500 / 100)


@given(
    st.lists(
        st.tuples(
            st.floats(0, 1000),
            st.floats(0, 100),
            st.floats(0, 1),
            st.sampled_from([1, 2, 3, 4]),
        ),
        min_size=0,
        max_size=6,
    ),
    st.floats(0, 500),
)
def test_booked_money_adds_up_to_the_gpus_cost(
    parts: list[tuple[float, float, float, int]], unattributed: float
) -> None:
    shares = [s for _, _, s, _ in parts]
    total_share = sum(shares)
    normalized = [s / total_share if total_share else 0.0 for s in shares]
    energies = tuple(
        ProcessEnergy(pid=pid, active_joules=a, idle_joules=i, holding_share=share)
        for (a, i, _, pid), share in zip(parts, normalized, strict=True)
    )
    idle_share = 1.0 - sum(normalized)
    interval = _interval(
        5.0, energies, unattributed=unattributed, idle_share=idle_share
    )
    books = Books(FlatPrices())
    two_models = _engine(
        "e",
        frozenset({1, 2}),
        a=ModelTotals(prompt_tokens=0),
        b=ModelTotals(prompt_tokens=0),
    )
    books.book_tokens([two_models], 0.0)
    books.book_intervals([interval], {3: _info(3)}, [two_models])
    expected = interval.energy_joules * PRICE_PER_J + HARDWARE_PER_S + FIXED_PER_S
    assert sum(books.cost.values()) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert sum(books.energy_joules.values()) == pytest.approx(
        interval.energy_joules, rel=1e-9, abs=1e-9
    )


def test_a_workload_long_gone_leaves_the_books() -> None:
    books = Books(FlatPrices(), retention_s=10.0)
    gone = ProcessEnergy(pid=1, active_joules=5.0, idle_joules=0.0, holding_share=0.5)
    stays = ProcessEnergy(pid=2, active_joules=5.0, idle_joules=0.0, holding_share=0.5)
    processes = {1: _info(1, command="old"), 2: _info(2, command="new")}
    books.book_intervals([_interval(1.0, (gone, stays))], processes, [])
    books.book_intervals([_interval(15.0, (stays,))], processes, [])
    view = books.view(now_wall_s=20.0)
    assert {w for w, _, _ in view.energy_joules} == {"command/new", IDLE_WORKLOAD}
    assert {w for w, _, _ in view.cost} == {"command/new", IDLE_WORKLOAD}


def test_a_sound_fit_divides_the_cost_by_what_each_kind_really_costs() -> None:
    """Prompt tokens truly cost 0.05 J and generated ones 0.6 J, mixes varying."""
    true_prompt_j, true_generation_j = 0.05, 0.6
    books = Books(FlatPrices())
    prompt = generation = 0.0
    engine = _engine("e", frozenset({1}), m=ModelTotals(0.0, 0.0))
    books.book_tokens([engine], 0.0)
    for step in range(1, 40):
        p, g = 400.0 + 300.0 * (step % 5), 50.0 + 40.0 * (step % 3)
        prompt, generation = prompt + p, generation + g
        joules = p * true_prompt_j + g * true_generation_j
        part = ProcessEnergy(
            pid=1, active_joules=joules, idle_joules=0.0, holding_share=1.0
        )
        engine = _engine("e", frozenset({1}), m=ModelTotals(prompt, generation))
        books.book_intervals([_interval(float(step), (part,))], {}, [engine])
        books.book_tokens([engine], float(step))
    prices = {p.token_kind: p for p in books.token_prices(now_wall_s=40.0)}
    assert prices["prompt"].estimator == "regression"
    # The configured weight alone would have put 0.05 J per prompt token far off.
    weighted_share = 0.25 * prompt / (0.25 * prompt + generation)
    total = prompt * true_prompt_j + generation * true_generation_j
    assert abs(total * weighted_share / prompt - true_prompt_j) > 0.5 * true_prompt_j
    assert prices["prompt"].energy_per_token_joules == pytest.approx(
        true_prompt_j, rel=0.02
    )
    assert prices["generation"].energy_per_token_joules == pytest.approx(
        true_generation_j, rel=0.02
    )


def test_a_fit_on_a_fixed_mix_is_not_trusted() -> None:
    books = Books(FlatPrices())
    engine = _engine("e", frozenset({1}), m=ModelTotals(0.0, 0.0))
    books.book_tokens([engine], 0.0)
    for step in range(1, 30):
        part = ProcessEnergy(
            pid=1, active_joules=100.0, idle_joules=0.0, holding_share=1.0
        )
        engine = _engine("e", frozenset({1}), m=ModelTotals(400.0 * step, 100.0 * step))
        books.book_intervals([_interval(float(step), (part,))], {}, [engine])
        books.book_tokens([engine], float(step))
    prices = books.token_prices(now_wall_s=30.0)
    # A fixed 4:1 mix cannot tell a prompt token's cost from a generated one's.
    assert {p.estimator for p in prices} == {"weight"}
