"""The command line's exit codes and one-line errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gpumeter.cli import main
from tests.running import base_env


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
