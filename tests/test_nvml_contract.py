"""The NVML contract: both fakes answer every call alike, as NVML documents.

Each case runs one scenario through a fixed script of pynvml calls on the fake C
driver (under the real pynvml) and on the simulated NVML, records what each call
returned or raised, and requires the two records to be equal and to say what NVML's
documentation says. With ``GPUMETER_TEST_REAL_NVML=1`` (and no fake loaded in the
session: run ``pytest -m gpu``), the scenario-free part runs against the real driver.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pynvml
import pytest

from gpumeter.clock import SystemClock
from gpumeter.sim import (
    Scenario,
    ScenarioGpu,
    ScenarioMigInstance,
    ScenarioProcess,
    SimulatedNvml,
)
from tests.fake_nvml.conftest_plugin import FakeNvml

GIB = 2**30
NO_MIG_ID = 0xFFFFFFFF
Record = dict[str, Any]


def _outcome(call: Callable[[], Any]) -> Any:
    """What a call gave: its value, or the name of the exception it raised."""
    try:
        return call()
    except pynvml.NVMLError as exc:
        return f"raised {type(exc).__name__}"
    except pynvml.NVMLLibraryMismatchError:
        return "raised NVMLLibraryMismatchError"


def _processes(nvml: Any, handle: Any, call: str) -> Any:
    def read() -> Any:
        return [
            (p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId)
            for p in getattr(nvml, call)(handle)
        ]

    return _outcome(read)


def _device_record(nvml: Any, handle: Any) -> Record:
    def memory_v1() -> Any:
        m = nvml.nvmlDeviceGetMemoryInfo(handle)
        return (m.total, m.free, m.used)

    def memory_v2() -> Any:
        m = nvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        return (m.version, m.total, m.reserved, m.free, m.used)

    def utilization() -> Any:
        u = nvml.nvmlDeviceGetUtilizationRates(handle)
        return (u.gpu, u.memory)

    return {
        "name": _outcome(lambda: nvml.nvmlDeviceGetName(handle)),
        "uuid": _outcome(lambda: nvml.nvmlDeviceGetUUID(handle)),
        "power_mw": _outcome(lambda: nvml.nvmlDeviceGetPowerUsage(handle)),
        "energy_mj": _outcome(lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle)),
        "limit_mw": _outcome(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle)),
        "memory_v1": _outcome(memory_v1),
        "memory_v2": _outcome(memory_v2),
        "utilization": _outcome(utilization),
        "temperature": _outcome(
            lambda: nvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        ),
        "mig_mode": _outcome(lambda: list(nvml.nvmlDeviceGetMigMode(handle))),
        "processes": _processes(nvml, handle, "nvmlDeviceGetComputeRunningProcesses"),
        "processes_v2": _processes(
            nvml, handle, "nvmlDeviceGetComputeRunningProcesses_v2"
        ),
    }


def _utilization_record(nvml: Any, handle: Any) -> Record:
    """Reads process samples the way the daemon does, and what each read gave."""

    def read(since: int) -> list[Any]:
        return list(nvml.nvmlDeviceGetProcessUtilization(handle, since))

    everything = _outcome(lambda: read(0))
    if isinstance(everything, str):
        return {"first": everything}
    newest = max(s.timeStamp for s in everything)
    now_us = time.time() * 1e6
    record: Record = {
        "first": sorted({(s.pid, s.smUtil, s.memUtil) for s in everything}),
        "stamped_recently": all(abs(s.timeStamp - now_us) < 5e6 for s in everything),
        "nothing_new": _outcome(lambda: read(newest)),
    }
    time.sleep(0.25)
    later = _outcome(lambda: read(newest))
    record["later_is_newer"] = not isinstance(later, str) and all(
        s.timeStamp > newest for s in later
    )
    record["later"] = (
        later if isinstance(later, str) else sorted({(s.pid, s.smUtil) for s in later})
    )
    return record


def _node_record(nvml: Any) -> Record:
    init = _outcome(nvml.nvmlInit)
    if isinstance(init, str):
        return {"init": init}
    record: Record = {
        "init": init,
        "driver": _outcome(nvml.nvmlSystemGetDriverVersion),
        "count": _outcome(nvml.nvmlDeviceGetCount),
    }
    for index in range(record["count"]):
        handle = _outcome(lambda i=index: nvml.nvmlDeviceGetHandleByIndex(i))
        if isinstance(handle, str):
            record[f"gpu{index}"] = handle
            continue
        record[f"gpu{index}"] = _device_record(nvml, handle)
        record[f"gpu{index}_utilization"] = _utilization_record(nvml, handle)
        record[f"gpu{index}_mig"] = _mig_record(nvml, handle)
    nvml.nvmlShutdown()
    record["after_shutdown"] = _outcome(nvml.nvmlDeviceGetCount)
    return record


def _mig_record(nvml: Any, handle: Any) -> Record:
    count = _outcome(lambda: nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
    record: Record = {"max": count}
    if isinstance(count, str):
        return record
    for slot in range(count):
        mig = _outcome(
            lambda s=slot: nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, s)
        )
        if isinstance(mig, str):
            record[f"slot{slot}"] = mig
            continue
        parent = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
        record[f"slot{slot}"] = {
            "is_mig": int(getattr(nvml.nvmlDeviceIsMigDeviceHandle(mig), "value", 0)),
            "gi": _outcome(lambda m=mig: nvml.nvmlDeviceGetGpuInstanceId(m)),
            "ci": _outcome(lambda m=mig: nvml.nvmlDeviceGetComputeInstanceId(m)),
            "parent_uuid": nvml.nvmlDeviceGetUUID(parent),
            **{
                key: value
                for key, value in _device_record(nvml, mig).items()
                if key not in {"processes_v2", "mig_mode"}
            },
        }
    return record


def _run_fake(fake: FakeNvml, scenario: Scenario) -> Record:
    fake.load(scenario)
    return _node_record(pynvml)


def _run_sim(scenario: Scenario) -> Record:
    return _node_record(SimulatedNvml.from_scenario(scenario, SystemClock()))


def _gpu(index: int, **fields: Any) -> ScenarioGpu:
    values: dict[str, Any] = {
        "uuid": f"GPU-{index:08d}-aaaa-bbbb-cccc-000000000000",
        "power_mw": 301_000 + index,
        "energy_mj": 12_345_678,
        "integrate_energy": False,
        "gpu_util_percent": 77,
        "memory_util_percent": 31,
        "memory_used_bytes": 20 * GIB,
        "temperature_c": 58,
        "processes": (
            ScenarioProcess(pid=1000 + index, memory_bytes=8 * GIB, sm_percent=60),
            ScenarioProcess(pid=2000 + index, memory_bytes=4 * GIB, memory_percent=9),
            ScenarioProcess(pid=3000 + index, memory_bytes=2 * GIB),
        ),
    }
    values.update(fields)
    return ScenarioGpu(**values)


MIG = (
    ScenarioMigInstance(
        gpu_instance_id=3,
        compute_instance_id=0,
        uuid="MIG-aaaaaaaa-0000-1111-2222-333333333333",
        name="NVIDIA H100 80GB HBM3 MIG 2g.20gb",
        memory_total_bytes=20 * GIB,
        memory_used_bytes=6 * GIB,
        processes=(ScenarioProcess(pid=4400, memory_bytes=5 * GIB, sm_percent=30),),
    ),
)

BASE = Scenario(gpus=(_gpu(0), _gpu(1)))
CASES = {
    "healthy": BASE,
    "lost": replace(BASE, gpus=(BASE.gpus[0], replace(BASE.gpus[1], lost=True))),
    "not_supported": replace(
        BASE,
        gpus=(
            replace(
                BASE.gpus[0],
                errors=dict.fromkeys(
                    (
                        "nvmlDeviceGetTotalEnergyConsumption",
                        "nvmlDeviceGetProcessUtilization",
                        "nvmlDeviceGetMigMode",
                    ),
                    pynvml.NVML_ERROR_NOT_SUPPORTED,
                ),
            ),
        ),
    ),
    "no_permission": replace(
        BASE,
        gpus=(
            replace(
                BASE.gpus[0],
                errors={
                    "nvmlDeviceGetComputeRunningProcesses_v3": (
                        pynvml.NVML_ERROR_NO_PERMISSION
                    )
                },
            ),
        ),
    ),
    "missing_functions": replace(
        BASE,
        missing_functions=frozenset(
            {"nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetPowerUsage"}
        ),
    ),
    "insufficient_size_race": replace(BASE, process_growth=12),
    "driver_not_loaded": replace(BASE, init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED),
    "oversized_sample_count": replace(BASE, util_sizing_count=100),
    "mig": Scenario(gpus=(_gpu(0, processes=(), mig_instances=MIG),)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, Record, Record]:
    name: str = request.param
    fake: FakeNvml = request.getfixturevalue("fake_nvml")
    return name, _run_fake(fake, CASES[name]), _run_sim(CASES[name])


@pytest.fixture(scope="module")
def fake_nvml(fake_nvml_lib: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    # Module-scoped twin of the plugin's fixture, so each case runs once.
    monkeypatch = pytest.MonkeyPatch()
    controller = FakeNvml(
        fake_nvml_lib, tmp_path_factory.mktemp("contract"), monkeypatch
    )
    yield controller
    controller.shutdown_all()
    monkeypatch.undo()


def test_both_fakes_agree(case: tuple[str, Record, Record]) -> None:
    _, fake, sim = case
    assert fake == sim


def test_the_record_says_what_nvml_documents(case: tuple[str, Record, Record]) -> None:
    name, record, _ = case
    expect = _EXPECTATIONS[name]
    expect(record)


def _healthy(record: Record) -> None:
    assert record["init"] is None
    assert record["driver"] == "550.54.15"
    assert record["count"] == 2
    gpu = record["gpu0"]
    assert gpu["power_mw"] == 301_000
    assert gpu["energy_mj"] == 12_345_678
    assert gpu["utilization"] == (77, 31)
    total = 85_520_809_984
    assert gpu["memory_v1"] == (total, total - 20 * GIB, 20 * GIB)
    assert gpu["memory_v2"][0] == pynvml.nvmlMemory_v2
    assert gpu["temperature"] == 58
    assert gpu["mig_mode"] == [0, 0]
    assert gpu["processes"] == [
        (1000, 8 * GIB, NO_MIG_ID, NO_MIG_ID),
        (2000, 4 * GIB, NO_MIG_ID, NO_MIG_ID),
        (3000, 2 * GIB, NO_MIG_ID, NO_MIG_ID),
    ]
    assert gpu["processes_v2"] == gpu["processes"]
    samples = record["gpu0_utilization"]
    # Only processes that did something have samples; stamps are CPU microseconds.
    assert samples["first"] == [(1000, 60, 0), (2000, 0, 9)]
    assert samples["stamped_recently"]
    assert samples["nothing_new"] == "raised NVMLError_NotFound"
    assert samples["later_is_newer"]
    assert samples["later"] == [(1000, 60), (2000, 0)]
    assert record["gpu0_mig"] == {"max": 0}
    assert record["after_shutdown"] == "raised NVMLError_Uninitialized"


def _lost(record: Record) -> None:
    assert record["gpu0"]["power_mw"] == 301_000
    assert record["gpu1"] == "raised NVMLError_GpuIsLost"


def _not_supported(record: Record) -> None:
    gpu = record["gpu0"]
    assert gpu["energy_mj"] == "raised NVMLError_NotSupported"
    assert gpu["mig_mode"] == "raised NVMLError_NotSupported"
    assert gpu["power_mw"] == 301_000
    assert record["gpu0_utilization"] == {"first": "raised NVMLError_NotSupported"}


def _no_permission(record: Record) -> None:
    assert record["gpu0"]["processes"] == "raised NVMLError_NoPermission"
    assert record["gpu0"]["processes_v2"][0][0] == 1000


def _missing_functions(record: Record) -> None:
    gpu = record["gpu0"]
    # pynvml's unversioned wrapper turns a missing _v3 into a mismatch error,
    # which is not an NVMLError.
    assert gpu["processes"] == "raised NVMLLibraryMismatchError"
    assert gpu["power_mw"] == "raised NVMLError_FunctionNotFound"
    assert gpu["processes_v2"][0][0] == 1000


def _insufficient_size_race(record: Record) -> None:
    # Twelve processes appear between pynvml's sizing call (3 seen) and its fill
    # call, past its 2n + 5 = 11 headroom.
    assert record["gpu0"]["processes"] == "raised NVMLError_InsufficientSize"


def _driver_not_loaded(record: Record) -> None:
    assert record == {"init": "raised NVMLError_DriverNotLoaded"}


def _oversized_sample_count(record: Record) -> None:
    assert record["gpu0_utilization"]["first"] == [(1000, 60, 0), (2000, 0, 9)]


def _mig(record: Record) -> None:
    gpu = record["gpu0"]
    assert gpu["mig_mode"] == [1, 1]
    assert gpu["power_mw"] == 301_000
    assert record["gpu0_utilization"] == {"first": "raised NVMLError_NotSupported"}
    mig = record["gpu0_mig"]
    assert mig["max"] >= 1
    instance = mig["slot0"]
    assert instance["is_mig"] == 1
    assert (instance["gi"], instance["ci"]) == (3, 0)
    assert instance["parent_uuid"] == "GPU-00000000-aaaa-bbbb-cccc-000000000000"
    assert instance["uuid"] == "MIG-aaaaaaaa-0000-1111-2222-333333333333"
    assert instance["memory_v1"] == (20 * GIB, 14 * GIB, 6 * GIB)
    assert instance["processes"] == [(4400, 5 * GIB, 3, 0)]
    assert instance["power_mw"] == "raised NVMLError_NotSupported"
    assert instance["energy_mj"] == "raised NVMLError_NotSupported"
    if mig["max"] > 1:
        assert mig["slot1"] == "raised NVMLError_NotFound"


_EXPECTATIONS: dict[str, Callable[[Record], None]] = {
    "healthy": _healthy,
    "lost": _lost,
    "not_supported": _not_supported,
    "no_permission": _no_permission,
    "missing_functions": _missing_functions,
    "insufficient_size_race": _insufficient_size_race,
    "driver_not_loaded": _driver_not_loaded,
    "oversized_sample_count": _oversized_sample_count,
    "mig": _mig,
}


@pytest.mark.gpu
@pytest.mark.skipif(
    os.environ.get("GPUMETER_TEST_REAL_NVML") != "1",
    reason="set GPUMETER_TEST_REAL_NVML=1 on a machine with an NVIDIA driver",
)
def test_the_real_driver_keeps_the_same_contract() -> None:
    from tests.fake_nvml import conftest_plugin

    assert not conftest_plugin._preloaded, "run the real-driver tests alone: -m gpu"
    record = _node_record(pynvml)
    assert record["init"] is None
    assert record["count"] >= 1
    gpu = record["gpu0"]
    assert isinstance(gpu["power_mw"], int)
    assert 1_000 < gpu["power_mw"] < 2_000_000
    assert isinstance(gpu["energy_mj"], int)
    total, free, used = gpu["memory_v1"]
    assert total >= free
    assert total >= used
    assert gpu["mig_mode"] in ([0, 0], [1, 1], "raised NVMLError_NotSupported")
    samples = record["gpu0_utilization"]
    if not isinstance(samples["first"], str):
        assert samples["stamped_recently"]
        assert samples["nothing_new"] in ("raised NVMLError_NotFound", [])
    assert record["after_shutdown"] == "raised NVMLError_Uninitialized"
