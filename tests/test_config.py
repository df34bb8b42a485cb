"""Configuration loading, validation and the check-config command."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumeter.cli import main
from gpumeter.config import Settings, load_settings, parse_listen
from gpumeter.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "gpumeter.toml"


def test_example_file_is_valid_and_equals_the_defaults() -> None:
    assert load_settings(EXAMPLE, explicit=True) == Settings()


def test_environment_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.toml"
    path.write_text('listen = "127.0.0.1:1"\n[sampling]\ngpu_interval_seconds = 2\n')
    monkeypatch.setenv("GPUMETER_SAMPLING__GPU_INTERVAL_SECONDS", "0.5")
    settings = load_settings(path, explicit=True)
    assert settings.listen == "127.0.0.1:1"
    assert settings.sampling.gpu_interval_seconds == 0.5


def test_every_problem_is_reported_with_its_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'listen = "nowhere"\nlog_level = "loud"\n'
        "[sampling]\ngpu_interval_seconds = 0\ncolour = 1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, explicit=True)
    problems = caught.value.problems
    assert len(problems) == 4
    assert problems[0].startswith("listen: expected HOST:PORT")
    assert any(p.startswith("log_level: ") and "'loud'" in p for p in problems)
    assert any(p.startswith("sampling.gpu_interval_seconds: ") for p in problems)
    assert "sampling.colour: unknown setting" in problems


def test_a_missing_named_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.toml", explicit=True)


def test_a_missing_default_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "absent.toml") == Settings()


def test_broken_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[sampling\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML.*line 1"):
        load_settings(path, explicit=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.0.0.0:9402", ("0.0.0.0", 9402)), ("[::1]:80", ("::1", 80))],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["9402", ":9402", "host:", "host:70000", "h:p"])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|out of range"):
        parse_listen(value)


def test_check_config_prints_the_effective_configuration(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUMETER_LOG_LEVEL", "debug")
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert 'log_level = "debug"' in out
    assert "[sampling]\ngpu_interval_seconds = 1.0" in out


def test_check_config_output_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.toml"
    source.write_text('listen = "127.0.0.1:9500"\n[nvml]\nretry_max_seconds = 7\n')
    assert main(["check-config", str(source)]) == 0
    echoed = tmp_path / "out.toml"
    echoed.write_text(capsys.readouterr().out)
    assert load_settings(echoed, explicit=True) == load_settings(source, explicit=True)


def test_check_config_exits_2_with_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[sampling]\ngpu_interval_seconds = -1\n[nope]\n")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "gpumeter: config: sampling.gpu_interval_seconds: Input should be greater "
        "than or equal to 0.1 (got -1)",
        "gpumeter: config: nope: unknown setting",
    ]
