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


def test_pricing_and_attribution_round_trip_through_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.toml"
    source.write_text(
        '[pricing]\ncurrency = "EUR"\n'
        '[pricing.tariff]\nprice_per_kwh = 0.18\ntimezone = "Europe/Berlin"\n'
        "[[pricing.tariff.periods]]\n"
        'days = ["mon", "fri"]\nstart = "22:00"\nend = "06:00"\nprice_per_kwh = 0.09\n'
        "[[pricing.tariff.periods]]\n"
        'days = ["sat"]\nstart = "08:00"\nend = "24:00"\nprice_per_kwh = 0.25\n'
        '[[pricing.gpus]]\nmatch = "L40S"\nrent_per_hour = 0.9\n'
        '[attribution]\nidle_policy = "separate"\n'
        '[attribution.idle_watts]\n"0" = 70.0\n'
    )
    assert main(["check-config", str(source)]) == 0
    echoed = tmp_path / "out.toml"
    echoed.write_text(capsys.readouterr().out)
    settings = load_settings(echoed, explicit=True)
    assert settings == load_settings(source, explicit=True)
    assert settings.pricing.tariff.periods[1].days == ("sat",)
    assert settings.attribution.idle_watts == {"0": 70.0}


def test_pricing_problems_name_their_fields(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[pricing]\ncurrency = "dollars"\n'
        '[pricing.tariff]\ntimezone = "Mars/Olympus"\n'
        "[[pricing.tariff.periods]]\n"
        'days = ["mon"]\nstart = "07:00"\nend = "25:00"\nprice_per_kwh = -0.1\n'
        '[[pricing.gpus]]\nmatch = "H100"\nlifetime_years = 0\n'
        '[[pricing.gpus]]\nmatch = "A100"\npurchase_price = 100\nresidual_value = 200\n'
        '[attribution]\nidle_policy = "ignore"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, explicit=True)
    assert caught.value.problems == [
        "pricing.currency: expected a three-letter ISO 4217 code (got 'dollars')",
        "pricing.tariff.timezone: unknown time zone (got 'Mars/Olympus')",
        "pricing.tariff.periods.0.end: not a time of day from 00:00 to 24:00 "
        "(got '25:00')",
        "pricing.tariff.periods.0.price_per_kwh: Input should be greater than or "
        "equal to 0 (got -0.1)",
        "pricing.gpus.0.lifetime_years: Input should be greater than 0 (got 0)",
        "pricing.gpus.1: residual_value 200.0 exceeds purchase_price times "
        "server_multiplier (150.0)",
        "attribution.idle_policy: Input should be 'share' or 'separate' (got 'ignore')",
    ]


@pytest.mark.parametrize(
    ("periods", "problem"),
    [
        (
            '[[pricing.tariff.periods]]\ndays = ["fri"]\nstart = "22:00"\n'
            'end = "06:00"\nprice_per_kwh = 0.1\n'
            '[[pricing.tariff.periods]]\ndays = ["sat"]\nstart = "05:00"\n'
            'end = "09:00"\nprice_per_kwh = 0.2\n',
            "pricing.tariff.periods: periods 0 and 1 overlap at sat 05:00",
        ),
        (
            '[[pricing.tariff.periods]]\ndays = ["sun"]\nstart = "7:00"\n'
            'end = "09:00"\nprice_per_kwh = 0.2\n',
            "pricing.tariff.periods.0.start: expected HH:MM (got '7:00')",
        ),
    ],
)
def test_tariff_periods_are_checked(tmp_path: Path, periods: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[pricing.tariff]\ntimezone = "UTC"\n{periods}')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, explicit=True)
    assert caught.value.problems == [problem]


def test_time_of_use_periods_need_a_time_zone(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[pricing.tariff.periods]]\ndays = ["sun"]\nstart = "00:00"\n'
        'end = "24:00"\nprice_per_kwh = 0.2\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, explicit=True)
    assert caught.value.problems == [
        "pricing.tariff: timezone is required when periods are set"
    ]
