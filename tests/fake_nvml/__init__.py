"""Builds the fake NVML driver and writes the scenario files it reads."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from gpumeter.sim.scenario import Scenario, ScenarioGpu, ScenarioProcess

__all__ = [
    "LIBRARY_NAME",
    "SCENARIO_ENV",
    "SOURCE",
    "build_fake_nvml",
    "scenario_text",
    "write_scenario",
]

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIBRARY_NAME = "libnvidia-ml.so.1"
SCENARIO_ENV = "FAKE_NVML_SCENARIO"

_CFLAGS = (
    "-shared",
    "-fPIC",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fvisibility=hidden",
    f"-Wl,-soname,{LIBRARY_NAME}",
)
_FORMAT_VERSION = 1
# Limits of the C side: string buffers (NUL included) and table sizes.
_STR_BYTES = 96
_DRIVER_BYTES = 80
_FUNC_BYTES = 96
_MAX_GPUS = 64
_MAX_MIG = 16
_MAX_ERRORS = 64
_MAX_MISSING = 256
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_I32 = 2**31 - 1

_generation = itertools.count(1)


def build_fake_nvml(out_dir: Path, *, omit_v3: bool = False) -> Path:
    """Compiles the fake driver into ``out_dir/libnvidia-ml.so.1``.

    The build is skipped when the library there was built from the same source
    with the same flags.

    Args:
        out_dir: directory for the library; created if missing.
        omit_v3: leave ``nvmlDeviceGetComputeRunningProcesses_v3`` out of the
            library, as an older driver would.

    Returns:
        The path of the built library.

    Raises:
        RuntimeError: no C compiler was found or the compilation failed.
    """
    compiler = os.environ.get("CC", "gcc")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"building the fake NVML needs a C compiler ({compiler})")
    flags = [*_CFLAGS, *(["-DFAKE_NVML_OMIT_V3"] if omit_v3 else [])]
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + "\0".join([compiler, *flags]).encode()).hexdigest()

    out_dir.mkdir(parents=True, exist_ok=True)
    library = out_dir / LIBRARY_NAME
    stamp = out_dir / f"{LIBRARY_NAME}.sha256"
    if library.exists() and stamp.exists() and stamp.read_text() == digest:
        return library

    # Build beside the target and rename, so a concurrent reader never sees half
    # a library and an already loaded copy keeps its own inode.
    fd, tmp_name = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        result = subprocess.run(
            [compiler, *flags, "-o", tmp_name, str(SOURCE), "-lpthread"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"building the fake NVML failed:\n{result.stderr}")
        os.chmod(tmp_name, 0o755)  # mkstemp made it private
        os.replace(tmp_name, library)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    stamp.write_text(digest)
    return library


def write_scenario(scenario: Scenario, path: Path) -> None:
    """Writes a scenario where the fake driver reads it, atomically.

    Every write gets a strictly newer modification time than the file it
    replaces, so the driver notices two writes that fall within one tick of the
    file system's clock.

    Args:
        scenario: the node to describe.
        path: the file that ``FAKE_NVML_SCENARIO`` names.

    Raises:
        ValueError: the scenario holds a value the driver cannot represent.
    """
    text = scenario_text(scenario)
    try:
        previous_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        previous_ns = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp_name, 0o644)  # mkstemp made it private
        stamp = max(time.time_ns(), previous_ns + 1)
        os.utime(tmp_name, ns=(stamp, stamp))
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise


def scenario_text(scenario: Scenario) -> str:
    """Renders a scenario in the fake driver's line format.

    Args:
        scenario: the node to describe.

    Returns:
        The file's text: a ``fake_nvml 1`` header, one ``key value`` line per
        setting, and a closing ``end`` line.

    Raises:
        ValueError: the scenario holds a value the driver cannot represent.
    """
    if len(scenario.gpus) > _MAX_GPUS:
        raise ValueError(f"the fake NVML holds at most {_MAX_GPUS} GPUs")
    if len(scenario.missing_functions) > _MAX_MISSING:
        raise ValueError(f"at most {_MAX_MISSING} missing functions")
    lines = [
        f"fake_nvml {_FORMAT_VERSION}",
        f"generation {next(_generation)}",
        f"driver_version {_text(scenario.driver_version, _DRIVER_BYTES)}",
        f"init_error {_number(scenario.init_error, _I32)}",
        f"util_sample_period_ms {_number(scenario.util_sample_period_ms, _U32)}",
        f"util_buffer_size {_number(scenario.util_buffer_size, _U32)}",
        f"util_sizing_count {_number(scenario.util_sizing_count, _U32)}",
        f"process_growth {_number(scenario.process_growth, _U32)}",
    ]
    lines += [f"missing {_word(name)}" for name in sorted(scenario.missing_functions)]
    for gpu in scenario.gpus:
        lines += _gpu_lines(gpu)
    lines.append("end")
    return "\n".join(lines) + "\n"


def _gpu_lines(gpu: ScenarioGpu) -> list[str]:
    if len(gpu.mig_instances) > _MAX_MIG:
        raise ValueError(f"the fake NVML holds at most {_MAX_MIG} MIG instances")
    if len(gpu.errors) > _MAX_ERRORS:
        raise ValueError(f"at most {_MAX_ERRORS} scripted errors per GPU")
    lines = [
        f"gpu {_text(gpu.uuid, _STR_BYTES)}",
        f"name {_text(gpu.name, _STR_BYTES)}",
        f"power_mw {_number(gpu.power_mw, _U32)}",
        f"energy_mj {_number(gpu.energy_mj, _U64)}",
        f"integrate_energy {int(bool(gpu.integrate_energy))}",
        f"gpu_util_percent {_number(gpu.gpu_util_percent, _U32)}",
        f"memory_util_percent {_number(gpu.memory_util_percent, _U32)}",
        f"memory_total_bytes {_number(gpu.memory_total_bytes, _U64)}",
        f"memory_used_bytes {_number(gpu.memory_used_bytes, _U64)}",
        f"temperature_c {_number(gpu.temperature_c, _U32)}",
        f"power_limit_mw {_number(gpu.power_limit_mw, _U32)}",
        f"lost {int(bool(gpu.lost))}",
    ]
    lines += [
        f"error {_word(func)} {_number(code, _I32)}"
        for func, code in sorted(gpu.errors.items())
    ]
    lines += _process_lines("proc", gpu.processes)
    for mig in gpu.mig_instances:
        lines += [
            f"mig {_number(mig.gpu_instance_id, _U32)} "
            f"{_number(mig.compute_instance_id, _U32)} "
            f"{_number(mig.memory_total_bytes, _U64)} "
            f"{_number(mig.memory_used_bytes, _U64)}",
            f"mig_uuid {_text(mig.uuid, _STR_BYTES)}",
            f"mig_name {_text(mig.name, _STR_BYTES)}",
        ]
        lines += _process_lines("mig_proc", mig.processes)
    return lines


def _process_lines(key: str, processes: Iterable[ScenarioProcess]) -> list[str]:
    return [
        f"{key} {_number(p.pid, _U32)} {_number(p.memory_bytes, _U64)} "
        f"{_number(p.sm_percent, _U32)} {_number(p.memory_percent, _U32)}"
        for p in processes
    ]


def _number(value: int, maximum: int) -> str:
    # bool is an int; a stray True where a count belongs is still a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    if not 0 <= value <= maximum:
        raise ValueError(f"{value} is outside 0..{maximum}")
    return str(value)


def _text(value: str, size: int) -> str:
    if "\n" in value or "\0" in value:
        raise ValueError(f"{value!r}: newlines and NUL cannot be stored")
    if len(value.encode()) >= size:
        raise ValueError(f"{value!r} is longer than {size - 1} bytes")
    return value


def _word(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{value!r}: function names are single words")
    return _text(value, _FUNC_BYTES)
