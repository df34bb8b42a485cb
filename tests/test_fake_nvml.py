"""The fake NVML driver, driven through the real, unmodified pynvml.

Only what is particular to the C library lives here: its build and exports, the
scenario file and its hot reload, raw ctypes calls, threads and subprocesses. What
the simulated NVML must do alike is in ``test_nvml_behaviour.py``.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

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

UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"
MIG_UUID0 = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
SUCCESS, INVALID_ARGUMENT, INSUFFICIENT_SIZE = 0, 2, 7

# GPU instance 1, compute instance 0: 40 GiB, 10 GiB used, one process on it.
MIG_PROCESS = ScenarioProcess(pid=501, memory_bytes=3 << 30)
MIG = ScenarioMigInstance(
    1, 0, MIG_UUID0, "MIG 3g.40gb", 40 << 30, 10 << 30, (MIG_PROCESS,)
)

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


def test_a_missing_shutdown_still_lets_the_fixture_shut_down(
    fake_nvml: FakeNvml,
) -> None:
    start(fake_nvml, gpu())
    fake_nvml.update(
        Scenario(gpus=(gpu(),), missing_functions=frozenset({"nvmlShutdown"}))
    )
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlShutdown()
    fake_nvml.shutdown_all()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()


# --- Handles and raw calls ----------------------------------------------------


def test_pci_bus_ids_follow_the_index(fake_nvml: FakeNvml) -> None:
    # The simulated NVML has no PCI info: gpumeter does not ask for it.
    start(fake_nvml, gpu(UUID0), gpu(UUID1))
    pci = pynvml.nvmlDeviceGetPciInfo(pynvml.nvmlDeviceGetHandleByIndex(1))
    # pynvml's structs hand char arrays back as str.
    assert pci.busId == "00000000:11:00.0"
    assert pci.busIdLegacy == "0000:11:00.0"
    assert (pci.domain, pci.bus, pci.device) == (0, 0x11, 0)


def test_handles_are_fixed_addresses(fake_nvml: FakeNvml) -> None:
    # Each call gives a new ctypes pointer, but to the same place; the simulated
    # NVML's handles are plain objects with no address to compare.
    start(fake_nvml, gpu(UUID0, mig_instances=(MIG,)), gpu(UUID1))
    parent = pynvml.nvmlDeviceGetHandleByIndex(0)
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert address(pynvml.nvmlDeviceGetHandleByIndex(1)) == address(h1)
    assert address(h1) != address(parent)
    mig_handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    back = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig_handle)
    assert address(back) == address(parent)


def test_a_short_name_buffer_is_insufficient(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(name="NVIDIA H100 80GB HBM3"))
    lib = ctypes.CDLL(str(fake_nvml.path))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    buf = ctypes.create_string_buffer(8)
    assert lib.nvmlDeviceGetName(h, buf, ctypes.c_uint(8)) == INSUFFICIENT_SIZE


# --- Hot reload ---------------------------------------------------------------


def test_back_to_back_rewrites_of_equal_size_are_all_seen(
    fake_nvml: FakeNvml,
) -> None:
    start(fake_nvml, gpu(power_mw=100_000))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    for power in (200_000, 300_000, 400_000, 500_000):
        fake_nvml.update(Scenario(gpus=(gpu(power_mw=power),)))
        assert pynvml.nvmlDeviceGetPowerUsage(h) == power


def test_a_new_load_starts_a_fresh_machine(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(energy_mj=500, integrate_energy=False))
    fake_nvml.update(Scenario(gpus=(gpu(energy_mj=900, integrate_energy=False),)))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 900
    start(fake_nvml, gpu(energy_mj=500, integrate_energy=False))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 500


# --- Running processes --------------------------------------------------------


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


# --- Per-process utilization --------------------------------------------------


def busy_and_idle() -> tuple[ScenarioProcess, ...]:
    return (
        ScenarioProcess(pid=11, memory_bytes=1, sm_percent=60, memory_percent=20),
        ScenarioProcess(pid=12, memory_bytes=1),  # idle: produces no samples
        ScenarioProcess(pid=13, memory_bytes=1, sm_percent=0, memory_percent=5),
    )


def test_repeated_uuids_survive_reloads(fake_nvml: FakeNvml) -> None:
    # On purpose the simulated NVML refuses such a scenario (see test_sim.py); the
    # C fake serves what it is given, as a driver would.
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


def test_the_sizing_call_never_succeeds(fake_nvml: FakeNvml) -> None:
    start(fake_nvml, gpu(processes=busy_and_idle()), util_sample_period_ms=60_000)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    fn = ctypes.CDLL(str(fake_nvml.path)).nvmlDeviceGetProcessUtilization
    count = ctypes.c_uint(1000)
    assert fn(h, None, ctypes.byref(count), ctypes.c_ulonglong(0)) == 7
    assert count.value == 2


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
    text = scenario_text(Scenario(gpus=(gpu(mig_instances=(MIG,)),)))
    lines = text.splitlines()
    assert lines[0] == "fake_nvml 1"
    assert lines[-1] == "end"
    assert "mig 1 0 42949672960 10737418240" in lines
    assert f"mig_uuid {MIG_UUID0}" in lines
    assert "mig_proc 501 3221225472 0 0" in lines
