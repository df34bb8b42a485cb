"""The command line's exit codes and one-line errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpumeter.cli import main
from gpumeter.sim import Scenario
from tests.fake_nvml.conftest_plugin import FakeNvml
from tests.running import Gpumeter, base_env, free_port, get, wait_for


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "check-config" in capsys.readouterr().out


def test_a_bad_listen_address_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["run", "--listen", "localhost"])
    assert caught.value.code == 2
    assert "--listen: expected HOST:PORT, got 'localhost'" in capsys.readouterr().err


def test_run_with_a_bad_config_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('log_level = "chatty"\n')
    assert main(["run", "--config", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("gpumeter: config: log_level: ")


def test_a_busy_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gpumeter", "run", "--listen", f"127.0.0.1:{port}"],
            env={**base_env(), "GPUMETER_PROCESSES__PROC_ROOT": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"gpumeter: cannot listen on 127.0.0.1:{port}: ")


def test_the_daemon_logs_its_lifecycle_not_every_tick(
    tmp_path: Path, fake_nvml: FakeNvml
) -> None:
    fake_nvml.load(Scenario(gpus=(), init_error=9))  # the driver is not loaded
    port = free_port()
    env = fake_nvml.env(base_env())
    env["GPUMETER_PROCESSES__PROC_ROOT"] = str(tmp_path)
    process = Gpumeter(["run", "--listen", f"127.0.0.1:{port}"], env, tmp_path)
    try:
        wait_for(
            lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200 or None, 10, "up"
        )
        time.sleep(2.5)  # a few ticks
    finally:
        assert process.stop() == 0
    lines = process.log().strip().splitlines()
    assert any("serving /metrics" in line for line in lines)
    assert any("gpumeter stopped" in line for line in lines)
    # Without a driver: one error for the outage, nothing per tick.
    assert sum("NVML unavailable" in line for line in lines) == 1
    assert len(lines) < 12, lines
