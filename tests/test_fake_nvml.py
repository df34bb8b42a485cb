"""The fake NVML driver, driven through the real, unmodified pynvml."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pynvml
import pytest

from gpumeter.sim.scenario import (
    Scenario,
    ScenarioGpu,
    ScenarioMigInstance,
    ScenarioProcess,
)
from tests.fake_nvml import (
    SCENARIO_ENV,
    build_fake_nvml,
    scenario_text,
    write_scenario,
)
from tests.fake_nvml.conftest_plugin import FakeNvml

T = TypeVar("T")

UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"
MIG_UUID0 = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
MIG_UUID1 = "MIG-ffffffff-0000-1111-2222-333333333333"
NO_ID = 0xFFFFFFFF
GROWTH_PID = 4_194_304  # PID_MAX_LIMIT, what the fake gives "new" processes
SUCCESS, INVALID_ARGUMENT, INSUFFICIENT_SIZE = 0, 2, 7

EXPORTED = {
    "nvmlInitWithFlags",
    "nvmlInit_v2",
    "nvmlShutdown",
    "nvmlErrorString",
    "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetPowerManagementLimit",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetProcessUtilization",
    "nvmlDeviceGetMigMode",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
}


def gpu(uuid: str = UUID0, **fields: Any) -> ScenarioGpu:
    return ScenarioGpu(uuid=uuid, **fields)


def start(fake: FakeNvml, *gpus: ScenarioGpu, **node: Any) -> Scenario:
    scenario = Scenario(gpus=gpus, **node)
    fake.load(scenario)
    pynvml.nvmlInit()
    return scenario


def wait_for(probe: Callable[[], T | None], timeout_s: float = 3.0) -> T:
    """Polls probe until it returns something truthy, for at most timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.002)


def now_us() -> int:
    return time.time_ns() // 1000


def address(handle: Any) -> int | None:
    return ctypes.cast(handle, ctypes.c_void_p).value


def nm_symbols(library: Path) -> set[str]:
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="session")
def omit_v3_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_nvml(tmp_path_factory.mktemp("fake_nvml_omit_v3"), omit_v3=True)


# --- Guards against drift between pynvml and the fake ------------------------


@pytest.mark.parametrize(
    ("struct", "size"),
    [
        ("c_nvmlProcessInfo_v3_t", 24),
        ("c_nvmlProcessInfo_v2_t", 24),
        ("c_nvmlProcessUtilizationSample_t", 32),
        ("c_nvmlMemory_t", 24),
        ("c_nvmlMemory_v2_t", 40),
        ("c_nvmlUtilization_t", 8),
        # pynvml names this one without the c_ prefix.
        ("nvmlPciInfo_t", 68),
    ],
)
def test_pynvml_struct_sizes_match_the_fake(struct: str, size: int) -> None:
    assert ctypes.sizeof(getattr(pynvml, struct)) == size


def test_pynvml_field_offsets_match_the_fake() -> None:
    assert pynvml.c_nvmlProcessInfo_v3_t.gpuInstanceId.offset == 16
    assert pynvml.c_nvmlProcessUtilizationSample_t.timeStamp.offset == 8
    assert pynvml.c_nvmlProcessUtilizationSample_t.smUtil.offset == 16
    assert pynvml.c_nvmlMemory_v2_t.total.offset == 8
    assert pynvml.nvmlPciInfo_t.busId.offset == 36
    assert pynvml.nvmlMemory_v2 == 0x02000028


def test_library_exports_every_nvml_symbol_and_nothing_else(
    fake_nvml_lib: Path,
) -> None:
    symbols = nm_symbols(fake_nvml_lib)
    assert symbols >= EXPORTED
    assert all(name.startswith("nvml") for name in symbols), symbols - EXPORTED


def test_omit_v3_build_really_lacks_the_v3_symbol(omit_v3_lib: Path) -> None:
    symbols = nm_symbols(omit_v3_lib)
    assert "nvmlDeviceGetComputeRunningProcesses_v3" not in symbols
    assert symbols == EXPORTED - {"nvmlDeviceGetComputeRunningProcesses_v3"}


def test_build_is_skipped_when_nothing_changed(tmp_path: Path) -> None:
    first = build_fake_nvml(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert build_fake_nvml(tmp_path) == first
    assert first.stat().st_mtime_ns == mtime


# --- Init and shutdown --------------------------------------------------------


def test_init_is_reference_counted(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu())
    pynvml.nvmlInit()
    pynvml.nvmlShutdown()
    assert pynvml.nvmlDeviceGetCount() == 1
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlShutdown()


def test_init_error_fails_init_until_the_scenario_changes(
    fake_nvml: FakeNvml,
) -> None:
    fake_nvml.load(Scenario(gpus=(gpu(),), init_error=9))
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    fake_nvml.update(Scenario(gpus=(gpu(),)))
    pynvml.nvmlInit()
    assert pynvml.nvmlDeviceGetCount() == 1


def test_init_without_a_scenario_reports_no_driver(
    fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SCENARIO_ENV, raising=False)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()


def test_a_malformed_scenario_fails_init_and_says_where(
    fake_nvml: FakeNvml,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("fake_nvml 1\ngpu GPU-x\npower_mw lots\nend\n")
    monkeypatch.setenv(SCENARIO_ENV, str(bad))
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    assert f"{bad}:3: bad number" in capfd.readouterr().err


def test_a_truncated_scenario_is_rejected(
    fake_nvml: FakeNvml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = scenario_text(Scenario(gpus=(gpu(),)))
    torn = tmp_path / "torn.txt"
    torn.write_text(whole[: whole.index("end")])
    monkeypatch.setenv(SCENARIO_ENV, str(torn))
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()


def test_nvml_init_v2_also_initializes(fake_nvml: FakeNvml) -> None:
    fake_nvml.load(Scenario(gpus=(gpu(),)))
    lib = ctypes.CDLL(str(fake_nvml.path))
    assert lib.nvmlInit_v2() == SUCCESS
    assert pynvml.nvmlDeviceGetCount() == 1
    assert lib.nvmlShutdown() == SUCCESS


def test_error_strings_come_from_static_storage(fake_nvml_lib: Path) -> None:
    assert pynvml.nvmlErrorString(15) == "GPU is lost"
    assert pynvml.nvmlErrorString(12345) == "Unknown Error"


# --- Static device information ------------------------------------------------


def test_system_and_identity_queries(fake_nvml: FakeNvml) -> None:
    start(
        fake_nvml,
        gpu(UUID0, name="NVIDIA H100 80GB HBM3"),
        gpu(UUID1, name="NVIDIA A100-SXM4-40GB"),
        driver_version="570.86.15",
    )
    assert pynvml.nvmlSystemGetDriverVersion() == "570.86.15"
    assert pynvml.nvmlDeviceGetCount() == 2
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetIndex(h1) == 1
    assert pynvml.nvmlDeviceGetName(h1) == "NVIDIA A100-SXM4-40GB"
    assert pynvml.nvmlDeviceGetUUID(h1) == UUID1
    pci = pynvml.nvmlDeviceGetPciInfo(h1)
    # pynvml's structs hand char arrays back as str.
    assert pci.busId == "00000000:11:00.0"
    assert pci.busIdLegacy == "0000:11:00.0"
    assert (pci.domain, pci.bus, pci.device) == (0, 0x11, 0)
    # The same index always yields the same handle address.
    assert address(pynvml.nvmlDeviceGetHandleByIndex(1)) == address(h1)


def test_board_readings(fake_nvml: FakeNvml) -> None:
    start(
        fake_nvml,
        gpu(
            power_mw=312_000,
            power_limit_mw=650_000,
            temperature_c=61,
            gpu_util_percent=87,
            memory_util_percent=42,
            memory_total_bytes=80 << 30,
            memory_used_bytes=30 << 30,
        ),
    )
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetPowerUsage(h) == 312_000
    assert pynvml.nvmlDeviceGetEnforcedPowerLimit(h) == 650_000
    assert pynvml.nvmlDeviceGetPowerManagementLimit(h) == 650_000
    assert pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 61
    util = pynvml.nvmlDeviceGetUtilizationRates(h)
    assert (util.gpu, util.memory) == (87, 42)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    assert (mem.total, mem.used, mem.free) == (80 << 30, 30 << 30, 50 << 30)
    mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert (mem2.total, mem2.reserved, mem2.used, mem2.free) == (
        80 << 30,
        0,
        30 << 30,
        50 << 30,
    )


def test_memory_v2_checks_the_struct_version(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu())
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlDeviceGetMemoryInfo(h, version=0x01000028)


def test_only_the_gpu_temperature_sensor_exists(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu())
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetTemperature(h, 1)


def test_bad_indexes_and_handles_are_invalid_arguments(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(UUID0), gpu(UUID1))
    stale = pynvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetPowerUsage(pynvml.c_nvmlDevice_t())
    fake_nvml.update(Scenario(gpus=(gpu(UUID0),)))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetPowerUsage(stale)


def test_a_short_name_buffer_is_insufficient(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(name="NVIDIA H100 80GB HBM3"))
    lib = ctypes.CDLL(str(fake_nvml.path))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    buf = ctypes.create_string_buffer(8)
    assert lib.nvmlDeviceGetName(h, buf, ctypes.c_uint(8)) == INSUFFICIENT_SIZE


# --- Energy -------------------------------------------------------------------


def test_energy_integrates_power_over_monotonic_time(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(power_mw=300_000, energy_mj=5_000))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    t0_before = time.monotonic_ns()
    e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    t0_after = time.monotonic_ns()
    wait_for(lambda: time.monotonic_ns() - t0_after > 30_000_000)
    t1_before = time.monotonic_ns()
    e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    t1_after = time.monotonic_ns()
    assert e0 >= 5_000
    # mW * ns / 1e9 = mJ; one mJ of slack for the counter's rounding.
    assert 300_000 * (t1_before - t0_after) // 10**9 - 1 <= e1 - e0
    assert e1 - e0 <= 300_000 * (t1_after - t0_before) // 10**9 + 1


def test_energy_stays_put_without_integration(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(power_mw=300_000, energy_mj=123_456, integrate_energy=False))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 123_456
    time.sleep(0.01)
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 123_456


def test_energy_survives_shutdown_and_init_with_the_same_scenario(
    fake_nvml: FakeNvml,
) -> None:
    start(fake_nvml, gpu(power_mw=1_000_000, energy_mj=0))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    wait_for(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h) > 5)
    before = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    pynvml.nvmlShutdown()
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) >= before


# --- Hot reload ---------------------------------------------------------------


def test_rewriting_the_scenario_changes_values_while_initialized(
    fake_nvml: FakeNvml,
) -> None:
    base = gpu(power_mw=100_000, temperature_c=40)
    start(fake_nvml, base)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetPowerUsage(h) == 100_000
    fake_nvml.update(Scenario(gpus=(replace(base, power_mw=250_000),)))
    assert pynvml.nvmlDeviceGetPowerUsage(h) == 250_000


def test_back_to_back_rewrites_of_equal_size_are_all_seen(
    fake_nvml: FakeNvml,
) -> None:
    start(fake_nvml, gpu(power_mw=100_000))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    for power in (200_000, 300_000, 400_000, 500_000):
        fake_nvml.update(Scenario(gpus=(gpu(power_mw=power),)))
        assert pynvml.nvmlDeviceGetPowerUsage(h) == power


def test_reload_with_the_same_energy_carries_the_counter_on(
    fake_nvml: FakeNvml,
) -> None:
    base = gpu(power_mw=2_000_000, energy_mj=1_000)
    start(fake_nvml, base)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    before = wait_for(
        lambda: (e := pynvml.nvmlDeviceGetTotalEnergyConsumption(h)) > 1_050 and e
    )
    # Freeze the counter so the comparison is exact.
    fake_nvml.update(Scenario(gpus=(replace(base, integrate_energy=False),)))
    frozen = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    assert frozen >= before
    time.sleep(0.005)
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == frozen


def test_reload_with_a_new_energy_resets_the_counter(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(power_mw=2_000_000, energy_mj=1_000_000))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) >= 1_000_000
    fake_nvml.update(Scenario(gpus=(gpu(energy_mj=7, integrate_energy=False),)))
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 7


def test_a_new_load_starts_a_fresh_machine(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(energy_mj=500, integrate_energy=False))
    fake_nvml.update(Scenario(gpus=(gpu(energy_mj=900, integrate_energy=False),)))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 900
    start(fake_nvml, gpu(energy_mj=500, integrate_energy=False))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 500


# --- Faults -------------------------------------------------------------------


def test_a_lost_gpu_fails_every_call_but_the_others_work(
    fake_nvml: FakeNvml,
) -> None:
    start(fake_nvml, gpu(UUID0), gpu(UUID1))
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    fake_nvml.update(Scenario(gpus=(gpu(UUID0, lost=True), gpu(UUID1))))
    calls: list[Callable[[], object]] = [
        lambda: pynvml.nvmlDeviceGetPowerUsage(h0),
        lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h0),
        lambda: pynvml.nvmlDeviceGetName(h0),
        lambda: pynvml.nvmlDeviceGetUUID(h0),
        lambda: pynvml.nvmlDeviceGetMemoryInfo(h0),
        lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(h0),
        lambda: pynvml.nvmlDeviceGetProcessUtilization(h0, 0),
        lambda: pynvml.nvmlDeviceGetMigMode(h0),
        lambda: pynvml.nvmlDeviceGetHandleByIndex(0),
    ]
    for call in calls:
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call()
    assert pynvml.nvmlDeviceGetCount() == 2
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetPowerUsage(h1) == 70_000


def test_per_device_errors_fail_just_that_call_on_that_gpu(
    fake_nvml: FakeNvml,
) -> None:
    start(
        fake_nvml,
        gpu(
            UUID0,
            errors={
                "nvmlDeviceGetPowerUsage": 3,
                "nvmlDeviceGetComputeRunningProcesses_v3": 4,
            },
        ),
        gpu(UUID1),
    )
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetPowerUsage(h0)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        pynvml.nvmlDeviceGetComputeRunningProcesses(h0)
    assert pynvml.nvmlDeviceGetComputeRunningProcesses_v2(h0) == []
    assert pynvml.nvmlDeviceGetTemperature(h0, 0) == 35
    assert pynvml.nvmlDeviceGetPowerUsage(h1) == 70_000


def test_missing_functions_behave_as_absent_symbols(fake_nvml: FakeNvml) -> None:
    start(
        fake_nvml,
        gpu(processes=(ScenarioProcess(pid=10, memory_bytes=1),)),
        missing_functions=frozenset(
            {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetComputeRunningProcesses_v3"}
        ),
    )
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetPowerUsage(h)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetComputeRunningProcesses_v3(h)
    # The unversioned wrapper turns it into an error that is not an NVMLError.
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses_v2(h)] == [10]


def test_missing_init_and_shutdown_are_survivable(fake_nvml: FakeNvml) -> None:
    fake_nvml.load(
        Scenario(gpus=(gpu(),), missing_functions=frozenset({"nvmlInitWithFlags"}))
    )
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlInit()
    start(fake_nvml, gpu())
    fake_nvml.update(
        Scenario(gpus=(gpu(),), missing_functions=frozenset({"nvmlShutdown"}))
    )
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlShutdown()
    # The fixture's clean-up must still get NVML down to uninitialized.
    fake_nvml.shutdown_all()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()


# --- Running processes --------------------------------------------------------


def test_no_processes_is_an_empty_list(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu())
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(h) == []
    assert pynvml.nvmlDeviceGetComputeRunningProcesses_v2(h) == []


def test_process_list_through_both_symbols(fake_nvml: FakeNvml) -> None:
    procs = (
        ScenarioProcess(pid=101, memory_bytes=1 << 30),
        ScenarioProcess(pid=202, memory_bytes=2**64 - 1),  # "not available"
        ScenarioProcess(pid=303, memory_bytes=0),
    )
    start(fake_nvml, gpu(processes=procs))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    for listing in (
        pynvml.nvmlDeviceGetComputeRunningProcesses,
        pynvml.nvmlDeviceGetComputeRunningProcesses_v2,
    ):
        got = [
            (p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId)
            for p in listing(h)
        ]
        assert got == [
            (101, 1 << 30, NO_ID, NO_ID),
            (202, None, NO_ID, NO_ID),
            (303, 0, NO_ID, NO_ID),
        ]


def test_process_sizing_protocol_in_c(fake_nvml: FakeNvml) -> None:
    start(
        fake_nvml,
        gpu(UUID0, processes=(ScenarioProcess(pid=1, memory_bytes=5),) * 3),
        gpu(UUID1),
    )
    fn = ctypes.CDLL(str(fake_nvml.path)).nvmlDeviceGetComputeRunningProcesses_v3
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    count = ctypes.c_uint(0)
    assert fn(h0, ctypes.byref(count), None) == INSUFFICIENT_SIZE
    assert count.value == 3
    count.value = 10  # room claimed, but no buffer
    assert fn(h0, ctypes.byref(count), None) == INVALID_ARGUMENT
    buf = (pynvml.c_nvmlProcessInfo_v3_t * 2)()
    count.value = 2
    assert fn(h0, ctypes.byref(count), buf) == INSUFFICIENT_SIZE
    assert count.value == 3
    count.value = 5
    assert fn(pynvml.nvmlDeviceGetHandleByIndex(1), ctypes.byref(count), None) == 0
    assert count.value == 0


@pytest.mark.parametrize("growth", [1, 4])
def test_processes_that_start_between_the_calls_fit_the_headroom(
    fake_nvml: FakeNvml, growth: int
) -> None:
    procs = (ScenarioProcess(pid=7, memory_bytes=1), ScenarioProcess(8, 2))
    start(fake_nvml, gpu(processes=procs), process_growth=growth)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    pids = [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]
    assert pids == [7, 8, *range(GROWTH_PID, GROWTH_PID + growth)]


def test_growth_past_the_headroom_is_insufficient_size(fake_nvml: FakeNvml) -> None:
    # One process: pynvml allocates 1 * 2 + 5 = 7 entries.
    procs = (ScenarioProcess(pid=7, memory_bytes=1),)
    start(fake_nvml, gpu(processes=procs), process_growth=6)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert len(pynvml.nvmlDeviceGetComputeRunningProcesses(h)) == 7
    fake_nvml.update(Scenario(gpus=(gpu(processes=procs),), process_growth=7))
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        pynvml.nvmlDeviceGetComputeRunningProcesses(h)


# --- Per-process utilization --------------------------------------------------


def busy_and_idle() -> tuple[ScenarioProcess, ...]:
    return (
        ScenarioProcess(pid=11, memory_bytes=1, sm_percent=60, memory_percent=20),
        ScenarioProcess(pid=12, memory_bytes=1),  # idle: produces no samples
        ScenarioProcess(pid=13, memory_bytes=1, sm_percent=0, memory_percent=5),
    )


def test_first_query_finds_the_load_time_samples(fake_nvml: FakeNvml) -> None:
    before = now_us()
    start(fake_nvml, gpu(processes=busy_and_idle()), util_sample_period_ms=60_000)
    after = now_us()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    samples = pynvml.nvmlDeviceGetProcessUtilization(h, 0)
    assert all(isinstance(s, pynvml.c_nvmlProcessUtilizationSample_t) for s in samples)
    assert [(s.pid, s.smUtil, s.memUtil, s.encUtil, s.decUtil) for s in samples] == [
        (11, 60, 20, 0, 0),
        (13, 0, 5, 0, 0),
    ]
    assert all(before <= s.timeStamp <= after for s in samples)


def test_nothing_newer_than_last_seen_is_not_found(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(processes=busy_and_idle()), util_sample_period_ms=60_000)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    last_seen = max(s.timeStamp for s in pynvml.nvmlDeviceGetProcessUtilization(h, 0))
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetProcessUtilization(h, last_seen)
    assert len(pynvml.nvmlDeviceGetProcessUtilization(h, last_seen - 1)) == 2


def test_idle_processes_produce_no_samples(fake_nvml: FakeNvml) -> None:
    idle = (ScenarioProcess(pid=5, memory_bytes=1),)
    start(fake_nvml, gpu(processes=idle), util_sample_period_ms=1)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    time.sleep(0.005)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetProcessUtilization(h, 0)


def test_samples_arrive_each_period_and_the_ring_drops_the_oldest(
    fake_nvml: FakeNvml,
) -> None:
    period_us = 2_000
    after_load = 0

    def full_ring_without_load_samples() -> list[Any]:
        samples = pynvml.nvmlDeviceGetProcessUtilization(h, 0)
        fresh = all(s.timeStamp > after_load for s in samples)
        return samples if len(samples) == 5 and fresh else []

    start(
        fake_nvml,
        gpu(processes=busy_and_idle()),
        util_sample_period_ms=period_us // 1000,
        util_buffer_size=5,
    )
    after_load = now_us()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    samples = wait_for(full_ring_without_load_samples)
    stamps = [s.timeStamp for s in samples]
    assert stamps == sorted(stamps)
    assert all((t - stamps[0]) % period_us == 0 for t in stamps)
    assert {s.pid for s in samples} == {11, 13}
    # Filtering is strictly newer than lastSeenTimeStamp.
    newer = pynvml.nvmlDeviceGetProcessUtilization(h, stamps[2])
    assert newer
    assert all(s.timeStamp > stamps[2] for s in newer)


def test_shrinking_the_ring_on_reload_keeps_the_newest(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(processes=busy_and_idle()), util_sample_period_ms=60_000)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    loaded = pynvml.nvmlDeviceGetProcessUtilization(h, 0)
    assert len(loaded) == 2
    fake_nvml.update(
        Scenario(
            gpus=(gpu(processes=busy_and_idle()),),
            util_sample_period_ms=60_000,
            util_buffer_size=1,
        )
    )
    (newest,) = pynvml.nvmlDeviceGetProcessUtilization(h, 0)
    assert newest.pid == 13
    assert newest.timeStamp >= loaded[-1].timeStamp


def test_repeated_uuids_survive_reloads(fake_nvml: FakeNvml) -> None:
    twins = (gpu(processes=busy_and_idle()), gpu(processes=busy_and_idle()))
    start(fake_nvml, *twins, util_sample_period_ms=60_000)
    fake_nvml.update(Scenario(gpus=twins, util_sample_period_ms=60_000))
    for index in (0, 1):
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        assert pynvml.nvmlDeviceGetProcessUtilization(h, 0)


def test_fixed_sizing_count_like_real_drivers(fake_nvml: FakeNvml) -> None:
    start(
        fake_nvml,
        gpu(processes=busy_and_idle()),
        util_sample_period_ms=60_000,
        util_sizing_count=100,
    )
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    fn = ctypes.CDLL(str(fake_nvml.path)).nvmlDeviceGetProcessUtilization
    count = ctypes.c_uint(0)
    assert fn(h, None, ctypes.byref(count), ctypes.c_ulonglong(0)) == 7
    assert count.value == 100
    assert [s.pid for s in pynvml.nvmlDeviceGetProcessUtilization(h, 0)] == [11, 13]


def test_a_sizing_count_below_the_samples_fails_the_fill_call(
    fake_nvml: FakeNvml,
) -> None:
    start(
        fake_nvml,
        gpu(processes=busy_and_idle()),
        util_sample_period_ms=60_000,
        util_sizing_count=1,
    )
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        pynvml.nvmlDeviceGetProcessUtilization(h, 0)


def test_the_sizing_call_never_succeeds(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(processes=busy_and_idle()), util_sample_period_ms=60_000)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    fn = ctypes.CDLL(str(fake_nvml.path)).nvmlDeviceGetProcessUtilization
    count = ctypes.c_uint(1000)
    assert fn(h, None, ctypes.byref(count), ctypes.c_ulonglong(0)) == 7
    assert count.value == 2


def test_process_utilization_follows_hot_reloads(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(processes=busy_and_idle()), util_sample_period_ms=60_000)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    last_seen = max(s.timeStamp for s in pynvml.nvmlDeviceGetProcessUtilization(h, 0))
    wait_for(lambda: now_us() > last_seen)
    busy = ScenarioProcess(pid=99, memory_bytes=1, sm_percent=100)
    fake_nvml.update(
        Scenario(gpus=(gpu(processes=(busy,)),), util_sample_period_ms=60_000)
    )
    newer = pynvml.nvmlDeviceGetProcessUtilization(h, last_seen)
    assert [(s.pid, s.smUtil) for s in newer] == [(99, 100)]


# --- MIG ----------------------------------------------------------------------


def mig_gpu() -> ScenarioGpu:
    return gpu(
        UUID0,
        processes=(),
        mig_instances=(
            ScenarioMigInstance(
                gpu_instance_id=1,
                compute_instance_id=0,
                uuid=MIG_UUID0,
                name="NVIDIA H100 80GB HBM3 MIG 3g.40gb",
                memory_total_bytes=40 << 30,
                memory_used_bytes=10 << 30,
                processes=(ScenarioProcess(pid=501, memory_bytes=3 << 30),),
            ),
            ScenarioMigInstance(
                gpu_instance_id=2,
                compute_instance_id=1,
                uuid=MIG_UUID1,
                name="NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                memory_total_bytes=10 << 30,
                memory_used_bytes=0,
                processes=(
                    ScenarioProcess(pid=601, memory_bytes=1 << 20),
                    ScenarioProcess(pid=602, memory_bytes=2 << 20),
                ),
            ),
        ),
    )


def test_mig_mode_and_device_enumeration(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, mig_gpu(), gpu(UUID1))
    parent = pynvml.nvmlDeviceGetHandleByIndex(0)
    plain = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetMigMode(parent) == [1, 1]
    assert pynvml.nvmlDeviceGetMigMode(plain) == [0, 0]
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(parent) == 7
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(plain) == 0
    migs = [pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, i) for i in (0, 1)]
    for empty_slot in range(2, 7):
        with pytest.raises(pynvml.NVMLError_NotFound):
            pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, empty_slot)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 7)
    # pynvml returns the c_uint itself here, not an int.
    assert pynvml.nvmlDeviceIsMigDeviceHandle(migs[0]).value == 1
    assert pynvml.nvmlDeviceIsMigDeviceHandle(parent).value == 0
    back = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(migs[1])
    assert address(back) == address(parent)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(parent)
    assert [pynvml.nvmlDeviceGetGpuInstanceId(m) for m in migs] == [1, 2]
    assert [pynvml.nvmlDeviceGetComputeInstanceId(m) for m in migs] == [0, 1]
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetGpuInstanceId(parent)


def test_mig_handles_answer_identity_memory_and_processes(
    fake_nvml: FakeNvml,
) -> None:
    start(fake_nvml, mig_gpu())
    parent = pynvml.nvmlDeviceGetHandleByIndex(0)
    mig0 = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    mig1 = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)
    assert pynvml.nvmlDeviceGetUUID(mig0) == MIG_UUID0
    assert pynvml.nvmlDeviceGetName(mig1) == "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    mem = pynvml.nvmlDeviceGetMemoryInfo(mig0)
    assert (mem.total, mem.used, mem.free) == (40 << 30, 10 << 30, 30 << 30)
    mem2 = pynvml.nvmlDeviceGetMemoryInfo(mig1, version=pynvml.nvmlMemory_v2)
    assert (mem2.total, mem2.used) == (10 << 30, 0)

    def rows(handle: Any) -> list[tuple[int, int, int, int]]:
        return [
            (p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        ]

    assert rows(mig1) == [(601, 1 << 20, 2, 1), (602, 2 << 20, 2, 1)]
    # The parent of a MIG-enabled GPU aggregates its instances.
    assert rows(parent) == [
        (501, 3 << 30, 1, 0),
        (601, 1 << 20, 2, 1),
        (602, 2 << 20, 2, 1),
    ]


def test_board_level_readings_are_not_supported_on_mig_handles(
    fake_nvml: FakeNvml,
) -> None:
    start(fake_nvml, mig_gpu())
    parent = pynvml.nvmlDeviceGetHandleByIndex(0)
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    calls: list[Callable[[], object]] = [
        lambda: pynvml.nvmlDeviceGetPowerUsage(mig),
        lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(mig),
        lambda: pynvml.nvmlDeviceGetUtilizationRates(mig),
        lambda: pynvml.nvmlDeviceGetProcessUtilization(mig, 0),
        # nvml.h: per-process utilization is not supported in MIG mode at all.
        lambda: pynvml.nvmlDeviceGetProcessUtilization(parent, 0),
    ]
    for call in calls:
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call()
    assert pynvml.nvmlDeviceGetPowerUsage(parent) == 70_000


def test_process_growth_on_a_mig_handle_keeps_the_instance_ids(
    fake_nvml: FakeNvml,
) -> None:
    start(fake_nvml, mig_gpu(), process_growth=1)
    parent = pynvml.nvmlDeviceGetHandleByIndex(0)
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(mig)
    assert [(p.pid, p.gpuInstanceId) for p in procs] == [(501, 1), (GROWTH_PID, 1)]


# --- Concurrency and subprocesses ---------------------------------------------


def test_concurrent_callers_and_reloads(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(processes=busy_and_idle()), util_sample_period_ms=1)
    failures: list[BaseException] = []

    def hammer() -> None:
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            for _ in range(300):
                assert pynvml.nvmlDeviceGetPowerUsage(h) in (70_000, 80_000)
                assert len(pynvml.nvmlDeviceGetComputeRunningProcesses(h)) == 3
                assert pynvml.nvmlDeviceGetProcessUtilization(h, 0)
        except BaseException as exc:  # reported to the main thread
            failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(20):
        power = 80_000 if i % 2 else 70_000
        fake_nvml.update(
            Scenario(
                gpus=(gpu(power_mw=power, processes=busy_and_idle()),),
                util_sample_period_ms=1,
            )
        )
    for t in threads:
        t.join()
    assert not failures, failures


CHILD = textwrap.dedent(
    """
    import pynvml
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    print(pynvml.nvmlDeviceGetUUID(h))
    print([p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses_v2(h)])
    try:
        pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    except pynvml.NVMLLibraryMismatchError:
        print("mismatch")
    else:
        print("v3 ok")
    """
)


def run_child(fake: FakeNvml, library: Path) -> list[str]:
    env = fake.env()
    env["LD_LIBRARY_PATH"] = str(library.parent)
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_subprocess_finds_the_fake_through_ld_library_path(
    fake_nvml: FakeNvml,
) -> None:
    fake_nvml.load(
        Scenario(gpus=(gpu(processes=(ScenarioProcess(pid=42, memory_bytes=1),)),))
    )
    assert run_child(fake_nvml, fake_nvml.path) == [UUID0, "[42]", "v3 ok"]


def test_a_driver_without_v3_raises_library_mismatch(
    fake_nvml: FakeNvml, omit_v3_lib: Path
) -> None:
    fake_nvml.load(
        Scenario(gpus=(gpu(processes=(ScenarioProcess(pid=42, memory_bytes=1),)),))
    )
    assert run_child(fake_nvml, omit_v3_lib) == [UUID0, "[42]", "mismatch"]


# --- The scenario writer ------------------------------------------------------


def test_writer_rejects_what_the_driver_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="longer than 95 bytes"):
        write_scenario(Scenario(gpus=(gpu(name="x" * 96),)), tmp_path / "s")
    with pytest.raises(ValueError, match="newlines"):
        write_scenario(Scenario(gpus=(gpu(name="a\nb"),)), tmp_path / "s")
    with pytest.raises(ValueError, match="outside"):
        write_scenario(Scenario(gpus=(gpu(power_mw=-1),)), tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_writer_output_is_the_documented_line_format() -> None:
    text = scenario_text(Scenario(gpus=(mig_gpu(),), missing_functions=frozenset()))
    lines = text.splitlines()
    assert lines[0] == "fake_nvml 1"
    assert lines[-1] == "end"
    assert "mig 1 0 42949672960 10737418240" in lines
    assert f"mig_uuid {MIG_UUID0}" in lines
    assert "mig_proc 501 3221225472 0 0" in lines
