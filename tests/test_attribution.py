"""Attribution: energy per GPU interval, idle baseline, split among processes."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumeter.accounting.attribution import Attributor, IdleBaseline
from gpumeter.accounting.records import GpuInterval
from gpumeter.gpus.records import GpuDevice, GpuSample, ProcessSample

GIB = 1 << 30
GPU0 = GpuDevice(label="0", uuid="GPU-aaaa", name="NVIDIA H100 80GB HBM3", index=0)
GPU1 = GpuDevice(label="1", uuid="GPU-bbbb", name="NVIDIA A100-SXM4-40GB", index=1)


def _instance(parent: GpuDevice, gi: int) -> GpuDevice:
    return GpuDevice(
        label=f"{parent.index}/gi{gi}/ci0",
        uuid=f"MIG-{parent.uuid[4:]}-{gi}",
        name=parent.name,
        index=parent.index,
        parent_uuid=parent.uuid,
        gpu_instance_id=gi,
        compute_instance_id=0,
    )


def _sample(
    t: float,
    *,
    device: GpuDevice = GPU0,
    up: bool = True,
    power: float | None = 100.0,
    energy: float | None = None,
    utilization: float | None = 0.5,
    processes: Sequence[ProcessSample] = (),
) -> GpuSample:
    return GpuSample(
        device=device,
        monotonic_s=t,
        wall_time_s=1_700_000_000.0 + t,
        up=up,
        power_watts=power,
        energy_joules=energy,
        utilization_ratio=utilization,
        processes=tuple(processes),
    )


def _process(
    pid: int, memory: int | None = GIB, sm: float | None = None
) -> ProcessSample:
    return ProcessSample(pid=pid, memory_bytes=memory, sm_utilization_ratio=sm)


def _attributor(idle_watts: float | None = 50.0, policy: str = "share") -> Attributor:
    configured = None if idle_watts is None else {GPU0.uuid: idle_watts}
    return Attributor(IdleBaseline(configured), policy)  # type: ignore[arg-type]


def _one(attributor: Attributor, *samples: GpuSample) -> GpuInterval:
    intervals = attributor.update(samples)
    assert len(intervals) == 1
    return intervals[0]


def _assert_conserved(interval: GpuInterval) -> None:
    close = {"rel_tol": 1e-9, "abs_tol": 1e-6}
    parts = [interval.energy_joules, interval.idle_joules, interval.active_joules]
    parts += [interval.unattributed_joules, interval.idle_holding_share]
    for process in interval.processes:
        parts += [process.active_joules, process.idle_joules, process.holding_share]
    assert all(part >= 0.0 for part in parts), interval
    assert math.isclose(
        interval.energy_joules, interval.idle_joules + interval.active_joules, **close
    )
    attributed = sum(p.active_joules + p.idle_joules for p in interval.processes)
    assert math.isclose(
        interval.energy_joules, attributed + interval.unattributed_joules, **close
    )
    shares = sum(p.holding_share for p in interval.processes)
    assert math.isclose(shares + interval.idle_holding_share, 1.0, **close)
    assert interval.method in ("counter", "power")
    assert interval.basis in ("sm", "memory", "single", "none")
    assert (interval.basis == "none") == (not interval.processes)
    if interval.processes:
        active = sum(p.active_joules for p in interval.processes)
        assert math.isclose(active, interval.active_joules, **close)


# Rule 1: energy per interval.


def test_first_sight_gives_no_interval() -> None:
    assert _attributor().update([_sample(0.0, energy=1_000.0)]) == []


def test_energy_is_the_counter_delta() -> None:
    attributor = _attributor()
    attributor.update([_sample(10.0, energy=1_000.0)])
    interval = _one(attributor, _sample(15.0, energy=1_600.0, power=999.0))
    assert interval.method == "counter"
    assert interval.energy_joules == 600.0
    assert interval.duration_s == 5.0
    assert interval.start_wall_s == 1_700_000_010.0
    assert interval.end_wall_s == 1_700_000_015.0
    assert (interval.gpu, interval.uuid, interval.name) == ("0", GPU0.uuid, GPU0.name)
    assert interval.idle_joules == 250.0
    assert interval.active_joules == 350.0


def test_a_counter_going_back_is_estimated_from_power() -> None:
    attributor = _attributor()
    attributor.update([_sample(0.0, energy=5_000_000.0, power=100.0)])
    interval = _one(attributor, _sample(10.0, energy=120.0, power=200.0))
    assert interval.method == "power"
    assert interval.energy_joules == 1_500.0
    _assert_conserved(interval)
    # The counter counts on from its new value.
    interval = _one(attributor, _sample(20.0, energy=1_120.0))
    assert (interval.method, interval.energy_joules) == ("counter", 1_000.0)


def test_a_counter_going_back_without_power_keeps_its_new_value() -> None:
    attributor = _attributor()
    attributor.update([_sample(0.0, energy=5_000.0, power=None)])
    interval = _one(attributor, _sample(10.0, energy=300.0, power=None))
    assert (interval.method, interval.energy_joules) == ("counter", 300.0)


def test_without_a_counter_power_is_integrated_as_a_trapezoid() -> None:
    attributor = _attributor()
    attributor.update([_sample(0.0, power=100.0)])
    interval = _one(attributor, _sample(4.0, power=300.0))
    assert (interval.method, interval.energy_joules) == ("power", 800.0)


def test_a_counter_missing_at_one_end_falls_back_to_power() -> None:
    attributor = _attributor()
    attributor.update([_sample(0.0, power=100.0, energy=10.0)])
    interval = _one(attributor, _sample(2.0, power=100.0, energy=None))
    assert (interval.method, interval.energy_joules) == ("power", 200.0)


def test_one_power_reading_stands_for_the_interval_and_none_gives_zero() -> None:
    attributor = _attributor()
    attributor.update([_sample(0.0, power=None)])
    interval = _one(attributor, _sample(2.0, power=150.0))
    assert interval.energy_joules == 300.0
    interval = _one(attributor, _sample(3.0, power=None))
    assert interval.energy_joules == 150.0
    interval = _one(attributor, _sample(4.0, power=None))
    assert (interval.energy_joules, interval.idle_joules) == (0.0, 0.0)


def test_a_down_sample_is_skipped_and_the_next_interval_spans_the_gap() -> None:
    attributor = _attributor()
    attributor.update([_sample(0.0, energy=0.0)])
    down = _sample(5.0, up=False, power=None, energy=None, utilization=None)
    assert attributor.update([down]) == []
    interval = _one(attributor, _sample(10.0, energy=900.0))
    assert interval.duration_s == 10.0
    assert interval.start_wall_s == 1_700_000_000.0
    assert (interval.method, interval.energy_joules) == ("counter", 900.0)


def test_a_sample_not_after_the_previous_gives_no_interval() -> None:
    attributor = _attributor()
    attributor.update([_sample(5.0, energy=0.0)])
    assert attributor.update([_sample(5.0, energy=0.0)]) == []


def test_gpus_are_kept_apart() -> None:
    attributor = _attributor()
    attributor.update([_sample(0.0, energy=0.0)])
    intervals = attributor.update(
        [_sample(1.0, energy=200.0), _sample(1.0, device=GPU1, energy=7.0)]
    )
    assert [(i.uuid, i.energy_joules) for i in intervals] == [(GPU0.uuid, 200.0)]
    intervals = attributor.update(
        [_sample(2.0, energy=300.0), _sample(2.0, device=GPU1, energy=57.0)]
    )
    assert [(i.uuid, i.energy_joules) for i in intervals] == [
        (GPU0.uuid, 100.0),
        (GPU1.uuid, 50.0),
    ]


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="policy"):
        Attributor(IdleBaseline(), "halves")  # type: ignore[arg-type]


# Rule 2: the idle part.


def _idle(t: float, power: float, device: GpuDevice = GPU0) -> GpuSample:
    return _sample(t, device=device, power=power, utilization=0.0)


def test_idle_energy_is_capped_at_the_energy() -> None:
    attributor = _attributor(idle_watts=80.0)
    attributor.update([_sample(0.0, energy=0.0)])
    interval = _one(attributor, _sample(10.0, energy=500.0))
    assert (interval.idle_joules, interval.active_joules) == (500.0, 0.0)


def test_configured_idle_power_by_uuid_or_label_wins() -> None:
    baseline = IdleBaseline({GPU0.uuid: 61.0, "1": 45.0})
    for t in range(20):
        baseline.observe(_idle(float(t), 90.0))
        baseline.observe(_idle(float(t), 90.0, device=GPU1))
    assert baseline.watts(GPU0.uuid, "0") == 61.0
    assert baseline.watts(GPU1.uuid, "1") == 45.0
    assert baseline.learned() == {GPU0.uuid: 90.0, GPU1.uuid: 90.0}


def test_nothing_is_known_before_any_power() -> None:
    baseline = IdleBaseline()
    assert baseline.watts(GPU0.uuid, "0") is None
    baseline.observe(_sample(0.0, power=None))
    baseline.observe(_sample(0.0, up=False, power=70.0))
    assert baseline.watts(GPU0.uuid, "0") is None
    assert baseline.learned() == {}


def test_before_any_idle_sample_the_lowest_power_stands_in() -> None:
    baseline = IdleBaseline()
    for t, power in enumerate([400.0, 350.0, 380.0]):
        baseline.observe(_sample(float(t), power=power, utilization=0.9))
    assert baseline.watts(GPU0.uuid, "0") == 380.0  # never the lone lowest
    baseline.observe(_sample(3.0, power=300.0, utilization=0.9))
    assert baseline.watts(GPU0.uuid, "0") == 350.0
    assert baseline.learned() == {}


def test_the_stand_in_never_exceeds_a_tenth_of_the_power_limit() -> None:
    baseline = IdleBaseline()
    busy = _sample(0.0, power=640.0, utilization=0.95)
    baseline.observe(dataclasses.replace(busy, power_limit_watts=700.0))
    # A GPU busy since it was first seen has shown only working power.
    assert baseline.watts(GPU0.uuid, "0") == pytest.approx(70.0)


def test_a_busy_sample_is_not_idle() -> None:
    baseline = IdleBaseline()
    busy = [
        _sample(0.0, power=300.0, utilization=0.06),
        _sample(1.0, power=300.0, utilization=0.0, processes=[_process(1, sm=0.1)]),
        _sample(2.0, power=300.0, utilization=None, processes=[_process(1)]),
    ]
    for sample in busy:
        baseline.observe(sample)
    assert baseline.learned() == {}
    quiet = [
        _sample(3.0, power=70.0, utilization=0.05, processes=[_process(1, sm=0.0)]),
        _sample(4.0, power=70.0, utilization=0.0, processes=[_process(1)]),
        _sample(5.0, power=70.0, utilization=None),
    ]
    for sample in quiet:
        baseline.observe(sample)
    assert baseline.learned() == {GPU0.uuid: 70.0}


def test_idle_power_is_learned_from_idle_periods() -> None:
    baseline = IdleBaseline()
    t = 0.0
    # Work, then a cool-down whose 1-s average power is still high, then idle.
    for _ in range(3):
        for _ in range(30):
            baseline.observe(_sample(t, power=450.0, utilization=0.97))
            t += 1.0
        for power in (300.0, 180.0, 110.0):
            baseline.observe(_idle(t, power))
            t += 1.0
        for k in range(30):
            baseline.observe(_idle(t, 68.0 + (k % 5) * 0.5))
            t += 1.0
    assert baseline.watts(GPU0.uuid, "0") == pytest.approx(68.5, abs=0.6)
    assert baseline.learned()[GPU0.uuid] == pytest.approx(68.5, abs=0.6)


def test_one_glitchy_low_reading_does_not_drag_the_idle_power_down() -> None:
    baseline = IdleBaseline()
    baseline.observe(_idle(0.0, 65.0))
    baseline.observe(_idle(1.0, 3.0))
    assert baseline.watts(GPU0.uuid, "0") == 65.0
    baseline.observe(_idle(2.0, 0.0))  # impossible for a powered board: ignored
    for t in range(3, 10):
        baseline.observe(_idle(float(t), 65.0))
    assert baseline.watts(GPU0.uuid, "0") == 65.0


def test_idle_power_follows_drift_as_old_readings_age_out() -> None:
    baseline = IdleBaseline()
    for t in range(600):
        baseline.observe(_idle(float(t), 60.0))
    for t in range(600, 1_200):
        baseline.observe(_idle(float(t), 75.0))
    assert baseline.watts(GPU0.uuid, "0") == 75.0


def test_the_attributor_learns_idle_power_as_it_goes() -> None:
    baseline = IdleBaseline()
    attributor = Attributor(baseline)
    attributor.update([_idle(0.0, 60.0)])
    attributor.update([_idle(1.0, 60.0)])
    interval = _one(attributor, _sample(2.0, power=260.0, utilization=0.9))
    # Trapezoid of 60 W and 260 W over 1 s; the idle baseline is 60 W.
    assert (interval.energy_joules, interval.idle_joules) == (160.0, 60.0)


# Rule 3: the active split.


def test_active_energy_is_split_by_sm_share() -> None:
    attributor = _attributor(idle_watts=50.0)
    attributor.update([_sample(0.0, energy=0.0)])
    processes = [_process(11, 3 * GIB, sm=0.6), _process(22, 1 * GIB, sm=0.2)]
    interval = _one(attributor, _sample(10.0, energy=1_500.0, processes=processes))
    assert interval.basis == "sm"
    assert (interval.idle_joules, interval.active_joules) == (500.0, 1_000.0)
    by_pid = {p.pid: p for p in interval.processes}
    assert by_pid[11].active_joules == pytest.approx(750.0)
    assert by_pid[22].active_joules == pytest.approx(250.0)
    # Holding goes by memory.
    assert by_pid[11].holding_share == 0.75
    assert by_pid[11].idle_joules == 375.0
    assert by_pid[22].holding_share == 0.25
    assert by_pid[22].idle_joules == 125.0
    assert (interval.unattributed_joules, interval.idle_holding_share) == (0.0, 0.0)
    _assert_conserved(interval)


@pytest.mark.parametrize(
    "shares", [(None, None), (0.0, 0.0), (0.5, None)], ids=["none", "zero", "mixed"]
)
def test_without_sm_shares_active_energy_goes_by_memory(
    shares: tuple[float | None, float | None],
) -> None:
    attributor = _attributor(idle_watts=0.0)
    attributor.update([_sample(0.0, energy=0.0)])
    processes = [_process(1, 1 * GIB, shares[0]), _process(2, 3 * GIB, shares[1])]
    interval = _one(attributor, _sample(1.0, energy=400.0, processes=processes))
    assert interval.basis == "memory"
    assert [p.active_joules for p in interval.processes] == [100.0, 300.0]
    _assert_conserved(interval)


def test_without_memory_the_split_is_equal() -> None:
    attributor = _attributor(idle_watts=30.0)
    attributor.update([_sample(0.0, energy=0.0)])
    processes = [_process(1, None), _process(2, 2 * GIB), _process(3, 0)]
    interval = _one(attributor, _sample(10.0, energy=900.0, processes=processes))
    assert interval.basis == "memory"
    assert [p.active_joules for p in interval.processes] == pytest.approx([200.0] * 3)
    assert [p.idle_joules for p in interval.processes] == pytest.approx([100.0] * 3)
    assert [p.holding_share for p in interval.processes] == pytest.approx([1 / 3] * 3)
    _assert_conserved(interval)


def test_a_lone_process_takes_all() -> None:
    attributor = _attributor(idle_watts=50.0)
    attributor.update([_sample(0.0, energy=0.0)])
    processes = [_process(7, None, sm=0.0)]
    interval = _one(attributor, _sample(2.0, energy=300.0, processes=processes))
    assert interval.basis == "single"
    [process] = interval.processes
    assert (process.pid, process.active_joules, process.idle_joules) == (7, 200, 100)
    assert (process.holding_share, interval.idle_holding_share) == (1.0, 0.0)


def test_without_processes_all_energy_is_unattributed() -> None:
    attributor = _attributor(idle_watts=50.0)
    attributor.update([_sample(0.0, energy=0.0)])
    interval = _one(attributor, _sample(2.0, energy=300.0))
    assert interval.basis == "none"
    assert interval.processes == ()
    assert (interval.idle_joules, interval.active_joules) == (100.0, 200.0)
    assert interval.unattributed_joules == 300.0
    assert interval.idle_holding_share == 1.0


def test_a_pid_listed_twice_is_one_process() -> None:
    attributor = _attributor(idle_watts=0.0)
    attributor.update([_sample(0.0, energy=0.0)])
    processes = [_process(1, GIB, 0.25), _process(1, GIB, 0.25), _process(2, GIB, 0.5)]
    interval = _one(attributor, _sample(1.0, energy=100.0, processes=processes))
    assert [(p.pid, p.active_joules) for p in interval.processes] == [
        (1, 50.0),
        (2, 50.0),
    ]
    assert [p.holding_share for p in interval.processes] == pytest.approx(
        [2 / 3, 1 / 3]
    )


# Rule 4: holding policies.


def test_policy_separate_books_idle_energy_to_the_idle_workload() -> None:
    attributor = _attributor(idle_watts=50.0, policy="separate")
    attributor.update([_sample(0.0, energy=0.0)])
    processes = [_process(11, 3 * GIB, sm=0.6), _process(22, 1 * GIB, sm=0.2)]
    interval = _one(attributor, _sample(10.0, energy=1_500.0, processes=processes))
    assert interval.unattributed_joules == 500.0
    assert interval.idle_holding_share == 1.0
    assert [p.idle_joules for p in interval.processes] == [0.0, 0.0]
    assert [p.holding_share for p in interval.processes] == [0.0, 0.0]
    assert [p.active_joules for p in interval.processes] == pytest.approx([750, 250])
    _assert_conserved(interval)


# Rule 5: MIG.


def test_mig_instances_processes_belong_to_the_physical_gpu() -> None:
    attributor = _attributor(idle_watts=40.0)
    gi1, gi2 = _instance(GPU0, 1), _instance(GPU0, 2)

    def round_(t: float, energy: float) -> list[GpuSample]:
        return [
            _sample(t, energy=energy, power=250.0, utilization=None),
            _sample(
                t,
                device=gi1,
                power=None,
                utilization=None,
                processes=[_process(100, 6 * GIB, sm=0.9)],
            ),
            _sample(
                t,
                device=gi2,
                power=None,
                utilization=None,
                processes=[_process(200, 2 * GIB, sm=0.1), _process(300, None)],
            ),
        ]

    assert attributor.update(round_(0.0, 1_000.0)) == []
    interval = _one(attributor, *round_(10.0, 3_000.0))
    assert (interval.uuid, interval.gpu) == (GPU0.uuid, "0")
    assert (interval.energy_joules, interval.idle_joules) == (2_000.0, 400.0)
    # No SM shares on MIG, and one memory unknown: equal shares.
    assert interval.basis == "memory"
    assert [p.pid for p in interval.processes] == [100, 200, 300]
    assert [p.holding_share for p in interval.processes] == pytest.approx([1 / 3] * 3)
    _assert_conserved(interval)


def test_mig_split_by_memory_and_instances_without_their_gpu_are_ignored() -> None:
    attributor = _attributor(idle_watts=0.0)
    gi1 = _instance(GPU0, 1)
    orphan = _instance(GPU1, 1)
    attributor.update([_sample(0.0, energy=0.0)])
    samples = [
        _sample(1.0, energy=100.0),
        _sample(1.0, device=gi1, power=None, processes=[_process(1, 3 * GIB, 0.1)]),
        _sample(1.0, device=gi1, power=None, processes=[_process(2, 1 * GIB, 0.9)]),
        _sample(1.0, device=orphan, power=None, processes=[_process(3, GIB)]),
    ]
    interval = _one(attributor, *samples)
    assert [(p.pid, p.active_joules) for p in interval.processes] == [
        (1, 75.0),
        (2, 25.0),
    ]


def test_a_down_mig_instance_contributes_no_processes() -> None:
    attributor = _attributor(idle_watts=0.0)
    gi1 = _instance(GPU0, 1)
    attributor.update([_sample(0.0, energy=0.0)])
    down = _sample(1.0, device=gi1, up=False, processes=[_process(1)])
    interval = _one(attributor, _sample(1.0, energy=10.0), down)
    assert interval.basis == "none"


# Rule 6: properties over arbitrary sample sequences.

PIDS = st.integers(min_value=1, max_value=6)
MEMORY = st.one_of(st.none(), st.just(0), st.integers(min_value=0, max_value=80 * GIB))
SM = st.one_of(st.none(), st.just(0.0), st.floats(min_value=0.0, max_value=1.0))
PROCESSES = st.lists(
    st.builds(ProcessSample, pid=PIDS, memory_bytes=MEMORY, sm_utilization_ratio=SM),
    max_size=4,
)
POWER = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1_000.0))
UTILIZATION = st.one_of(st.none(), st.just(0.0), st.floats(0.0, 1.0))


@st.composite
def rounds(draw: st.DrawFn) -> list[list[GpuSample]]:
    """Sampling rounds over one or two GPUs, some with MIG instances."""
    devices = draw(st.lists(st.sampled_from([GPU0, GPU1]), min_size=1, unique=True))
    mig = {device.uuid: draw(st.booleans()) for device in devices}
    counters = {device.uuid: draw(st.floats(0.0, 1e9)) for device in devices}
    t = 0.0
    result = []
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        t += draw(st.floats(min_value=0.05, max_value=60.0))
        round_: list[GpuSample] = []
        for device in devices:
            step = draw(st.sampled_from(["grow", "grow", "grow", "reset", "none"]))
            if step == "reset":
                counters[device.uuid] = draw(st.floats(0.0, 1e4))
            else:
                counters[device.uuid] += draw(st.floats(0.0, 1e5))
            up = draw(st.integers(0, 9)) > 0
            round_.append(
                _sample(
                    t,
                    device=device,
                    up=up,
                    power=draw(POWER),
                    energy=None if step == "none" else counters[device.uuid],
                    utilization=draw(UTILIZATION),
                    processes=[] if mig[device.uuid] else draw(PROCESSES),
                )
            )
            if mig[device.uuid]:
                for gi in range(draw(st.integers(0, 3))):
                    round_.append(
                        _sample(
                            t,
                            device=_instance(device, gi),
                            up=draw(st.booleans()),
                            power=None,
                            utilization=None,
                            processes=draw(PROCESSES),
                        )
                    )
        result.append(draw(st.permutations(round_)))
    return result


IDLE_CONFIG = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from([GPU0.uuid, "0", GPU1.uuid, "1"]),
        st.floats(0.0, 1_000.0),
    ),
)


@settings(deadline=None, database=None)
@given(
    rounds=rounds(),
    idle=IDLE_CONFIG,
    policy=st.sampled_from(["share", "separate"]),
)
def test_every_interval_is_conserved_and_non_negative(
    rounds: list[list[GpuSample]], idle: dict[str, float] | None, policy: str
) -> None:
    attributor = Attributor(IdleBaseline(idle), policy)  # type: ignore[arg-type]
    seen_up: set[str] = set()
    for round_ in rounds:
        intervals = attributor.update(round_)
        physical_up = {
            s.device.uuid for s in round_ if s.up and s.device.parent_uuid is None
        }
        assert {i.uuid for i in intervals} == physical_up & seen_up
        seen_up |= physical_up
        for interval in intervals:
            _assert_conserved(interval)
            if policy == "separate" and interval.processes:
                assert interval.unattributed_joules == interval.idle_joules
                assert interval.idle_holding_share == 1.0


@settings(deadline=None, database=None)
@given(rounds=rounds(), policy=st.sampled_from(["share", "separate"]))
def test_gpu_energy_adds_up_to_the_counters_increase(
    rounds: list[list[GpuSample]], policy: str
) -> None:
    attributor = Attributor(IdleBaseline(), policy)  # type: ignore[arg-type]
    totals: dict[str, float] = {}
    for round_ in rounds:
        for interval in attributor.update(round_):
            totals[interval.uuid] = totals.get(interval.uuid, 0.0) + (
                interval.energy_joules
            )
    for uuid, total in totals.items():
        readings = [
            s.energy_joules
            for round_ in rounds
            for s in round_
            if s.device.uuid == uuid and s.up
        ]
        counters = [reading for reading in readings if reading is not None]
        if len(counters) < len(readings):
            continue
        if any(b < a for a, b in itertools.pairwise(counters)):
            continue
        increase = counters[-1] - counters[0]
        assert math.isclose(total, increase, rel_tol=1e-9, abs_tol=1e-6)


@settings(deadline=None, database=None)
@given(
    idle_watts=st.floats(min_value=1.0, max_value=500.0),
    count=st.integers(min_value=1, max_value=600),
    glitch_at=st.integers(min_value=0, max_value=600),
    glitch_watts=st.floats(min_value=0.0, max_value=1.0),
)
def test_one_glitch_never_moves_a_steady_idle_power(
    idle_watts: float, count: int, glitch_at: int, glitch_watts: float
) -> None:
    baseline = IdleBaseline()
    for k in range(count):
        if k == min(glitch_at, count - 1):
            baseline.observe(_idle(float(k) - 0.5, glitch_watts * idle_watts))
        baseline.observe(_idle(float(k), idle_watts))
    assert baseline.watts(GPU0.uuid, "0") == idle_watts
