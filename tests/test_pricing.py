"""Tariffs, facility factors, amortization and GPU prices."""

from __future__ import annotations

import itertools
import logging
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gpumeter.accounting.pricing import (
    SECONDS_PER_YEAR,
    HardwarePrice,
    Pricing,
    Tariff,
    name_words,
)
from gpumeter.config import PricingSettings, Settings, TariffSettings

BERLIN = ZoneInfo("Europe/Berlin")
KWH = 3_600_000.0
HOUR = 3600.0


def at(*fields: int, zone: ZoneInfo = BERLIN) -> float:
    """The Unix time of a local clock time."""
    return datetime(*fields, tzinfo=zone).timestamp()  # type: ignore[misc]


def tou(
    default: float, *periods: dict[str, Any], zone: str = "Europe/Berlin"
) -> Tariff:
    return Tariff(
        TariffSettings.model_validate(
            {"price_per_kwh": default, "timezone": zone, "periods": periods}
        )
    )


WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
DAY_RATE = {"days": WEEKDAYS, "start": "07:00", "end": "22:00", "price_per_kwh": 0.30}


# Flat tariffs


def test_flat_tariff_prices_kwh_at_one_rate() -> None:
    tariff = Tariff.flat(0.13)
    assert tariff.is_flat
    assert tariff.price_per_kwh(0.0) == 0.13
    assert tariff.energy_cost(KWH, 0.0, HOUR) == pytest.approx(0.13, abs=1e-15)
    assert tariff.energy_cost(2.5 * KWH, 100.0, 100.0) == pytest.approx(0.325)
    assert list(tariff.segments(0.0, 10.0)) == [(0.0, 10.0, 0.13)]


def test_an_interval_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        Tariff.flat(0.1).energy_cost(1.0, 10.0, 5.0)


# Time of use


def test_price_follows_the_local_clock_and_weekday() -> None:
    tariff = tou(0.10, DAY_RATE)
    wednesday = (2024, 3, 6)
    assert tariff.price_per_kwh(at(*wednesday, 6, 59)) == 0.10
    assert tariff.price_per_kwh(at(*wednesday, 7, 0)) == 0.30
    assert tariff.price_per_kwh(at(*wednesday, 21, 59)) == 0.30
    assert tariff.price_per_kwh(at(*wednesday, 22, 0)) == 0.10
    assert tariff.price_per_kwh(at(2024, 3, 9, 12, 0)) == 0.10  # a Saturday


def test_an_interval_across_a_price_change_is_split_by_time() -> None:
    tariff = tou(0.10, DAY_RATE)
    start = at(2024, 3, 6, 6, 45)
    # 15 minutes at 0.10 then 45 at 0.30, for 1 kWh drawn evenly.
    assert tariff.energy_cost(KWH, start, start + HOUR) == pytest.approx(0.25)
    assert list(tariff.segments(start, start + HOUR)) == [
        (start, start + 900, 0.10),
        (start + 900, start + HOUR, 0.30),
    ]


def test_an_interval_across_several_changes_is_split_at_each() -> None:
    tariff = tou(0.10, DAY_RATE)
    start = at(2024, 3, 6, 21, 0)
    end = at(2024, 3, 7, 8, 0)
    # 1 h at 0.30, 9 h at 0.10, 1 h at 0.30; 11 kWh at 1 kW.
    assert tariff.energy_cost(11 * KWH, start, end) == pytest.approx(1.5)
    assert [price for _, _, price in tariff.segments(start, end)] == [0.3, 0.1, 0.3]


def test_a_period_may_run_past_midnight_and_past_the_week_end() -> None:
    night = {"days": ["sun"], "start": "22:00", "end": "06:00", "price_per_kwh": 0.05}
    tariff = tou(0.20, night)
    assert tariff.price_per_kwh(at(2024, 3, 10, 21, 59)) == 0.20  # Sunday
    assert tariff.price_per_kwh(at(2024, 3, 10, 23, 0)) == 0.05
    assert tariff.price_per_kwh(at(2024, 3, 11, 5, 59)) == 0.05  # Monday
    assert tariff.price_per_kwh(at(2024, 3, 11, 6, 0)) == 0.20
    start = at(2024, 3, 10, 20, 0)
    # 2 h at 0.20, 8 h at 0.05, 2 h at 0.20.
    assert tariff.energy_cost(12 * KWH, start, start + 12 * HOUR) == pytest.approx(1.2)


def test_a_spring_forward_day_has_a_shorter_cheap_night() -> None:
    day = {"days": ["sun"], "start": "03:00", "end": "24:00", "price_per_kwh": 0.30}
    sat = {"days": ["sat"], "start": "03:00", "end": "24:00", "price_per_kwh": 0.30}
    tariff = tou(0.10, day, sat)
    # Berlin, 31 March 2024: 02:00 CET becomes 03:00 CEST at 01:00 UTC, so the
    # cheap hours from local midnight to 03:00 last two real hours.
    start = datetime(2024, 3, 30, 22, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    segments = list(tariff.segments(start, start + 4 * HOUR))
    assert segments == [
        (start, start + HOUR, 0.30),
        (start + HOUR, start + 3 * HOUR, 0.10),
        (start + 3 * HOUR, start + 4 * HOUR, 0.30),
    ]
    assert tariff.energy_cost(4 * KWH, start, start + 4 * HOUR) == pytest.approx(0.8)


def test_a_price_change_inside_the_skipped_hour_happens_at_the_jump() -> None:
    daily = {
        "days": [*WEEKDAYS, "sat", "sun"],
        "start": "02:30",
        "end": "24:00",
        "price_per_kwh": 0.30,
    }
    tariff = tou(0.10, daily)
    start = datetime(2024, 3, 31, 0, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    assert list(tariff.segments(start, start + 2 * HOUR)) == [
        (start, start + HOUR, 0.10),
        (start + HOUR, start + 2 * HOUR, 0.30),
    ]


def test_a_fall_back_day_repeats_the_peak_hour() -> None:
    peak = {
        "days": [*WEEKDAYS, "sat", "sun"],
        "start": "02:00",
        "end": "03:00",
        "price_per_kwh": 0.50,
    }
    tariff = tou(0.10, peak)
    # Berlin, 27 October 2024: 03:00 CEST becomes 02:00 CET at 01:00 UTC, so
    # local 02:00 to 03:00 happens twice, two real hours at the peak price.
    start = datetime(2024, 10, 26, 23, 30, tzinfo=ZoneInfo("UTC")).timestamp()
    assert list(tariff.segments(start, start + 3 * HOUR)) == [
        (start, start + 1800, 0.10),
        (start + 1800, start + 1800 + 2 * HOUR, 0.50),
        (start + 1800 + 2 * HOUR, start + 3 * HOUR, 0.10),
    ]
    assert tariff.energy_cost(3 * KWH, start, start + 3 * HOUR) == pytest.approx(1.1)


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York"])
@pytest.mark.parametrize("month", [3, 10])
def test_weeks_across_clock_changes_match_minute_by_minute(
    zone: str, month: int
) -> None:
    night = {"days": WEEKDAYS, "start": "23:00", "end": "06:30", "price_per_kwh": 0.07}
    sunday = {"days": ["sun"], "start": "00:00", "end": "24:00", "price_per_kwh": 0.11}
    tariff = tou(0.21, DAY_RATE | {"end": "23:00"}, night, sunday, zone=zone)
    # Both zones change their clocks within these four weeks.
    start = at(2024, month, 5, 12, 17, zone=ZoneInfo(zone))
    minutes = 28 * 1440
    end = start + 60 * minutes
    # Every price change falls on a whole minute, so the price at the middle of
    # each minute is that minute's price.
    expected = sum(
        tariff.price_per_kwh(start + 60 * minute + 30) for minute in range(minutes)
    )
    assert tariff.energy_cost(KWH, start, end) == pytest.approx(
        expected / minutes, rel=1e-12
    )
    segments = list(tariff.segments(start, end))
    assert segments[0][0] == start
    assert segments[-1][1] == end
    assert all(a[1] == b[0] and a[2] != b[2] for a, b in itertools.pairwise(segments))


def test_fractional_instants_are_split_without_stalling() -> None:
    tariff = tou(0.10, DAY_RATE)
    start = at(2024, 3, 6, 6, 0) + 0.123
    end = at(2024, 3, 6, 8, 0) + 0.456
    seconds_cheap = at(2024, 3, 6, 7, 0) - start
    expected = (seconds_cheap * 0.10 + (end - start - seconds_cheap) * 0.30) / (
        end - start
    )
    assert tariff.energy_cost(KWH, start, end) == pytest.approx(expected, rel=1e-9)


# Hardware


def test_amortization_spreads_capital_less_residual_over_the_lifetime() -> None:
    price = HardwarePrice(
        purchase_price=30_000.0,
        server_multiplier=1.5,
        lifetime_years=4.0,
        residual_value=5_000.0,
        fixed_per_hour=0.36,
    )
    assert price.capital_cost == 45_000.0
    assert price.hardware_per_second() == pytest.approx(40_000 / (4 * SECONDS_PER_YEAR))
    assert price.hardware_per_second() * SECONDS_PER_YEAR == pytest.approx(10_000.0)
    assert price.fixed_per_second() == pytest.approx(0.0001)


def test_a_rented_gpu_pays_rent_instead_of_amortization() -> None:
    price = HardwarePrice(rent_per_hour=2.50, fixed_per_hour=0.10)
    assert price.hardware_per_second() == 0.0
    assert price.fixed_per_second() * HOUR == pytest.approx(2.60)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"lifetime_years": 0.0}, "lifetime_years"),
        ({"purchase_price": -1.0}, "purchase_price"),
        ({"purchase_price": 1000.0, "residual_value": 2000.0}, "exceeds"),
        ({"purchase_price": 1000.0, "rent_per_hour": 1.0}, "rented"),
    ],
)
def test_impossible_hardware_prices_are_refused(
    fields: dict[str, float], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        HardwarePrice(**fields)


# GPU names


def test_name_words_split_nvml_names() -> None:
    assert name_words("NVIDIA A100-SXM4-80GB") == ("nvidia", "a100", "sxm4", "80gb")


@pytest.mark.parametrize(
    ("name", "purchase_price"),
    [
        ("NVIDIA H100 80GB HBM3", 30_000.0),
        ("NVIDIA H100 PCIe", 30_000.0),
        ("NVIDIA H200", 35_000.0),
        ("NVIDIA H200 NVL", 35_000.0),
        ("NVIDIA B200", 40_000.0),
        ("NVIDIA A100-SXM4-80GB", 12_000.0),
        ("NVIDIA L40S", 7_500.0),
        ("NVIDIA GeForce RTX 4090", 1_599.0),
        ("NVIDIA L40", 0.0),
        ("NVIDIA GH200 480GB", 0.0),
        ("Tesla T4", 0.0),
    ],
)
def test_built_in_prices_match_whole_words(name: str, purchase_price: float) -> None:
    assert Pricing(PricingSettings()).hardware_price(name).purchase_price == (
        purchase_price
    )


def test_configured_prices_come_first_and_the_most_specific_wins() -> None:
    settings = PricingSettings.model_validate(
        {
            "gpus": [
                {"match": "H100", "purchase_price": 25_000.0},
                {"match": "h100 pcie", "purchase_price": 20_000.0},
                {"match": "Tesla T4", "rent_per_hour": 0.35},
            ]
        }
    )
    pricing = Pricing(settings)
    assert pricing.hardware_price("NVIDIA H100 PCIe").purchase_price == 20_000.0
    assert pricing.hardware_price("NVIDIA H100 80GB HBM3").purchase_price == 25_000.0
    assert pricing.hardware_price("Tesla T4").rent_per_hour == 0.35
    assert pricing.hardware_price("NVIDIA H200").purchase_price == 35_000.0


def test_an_unmatched_gpu_gets_the_default_price_and_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = PricingSettings.model_validate(
        {"default_gpu": {"purchase_price": 2_000.0, "lifetime_years": 4.0}}
    )
    pricing = Pricing(settings)
    with caplog.at_level(logging.WARNING, logger="gpumeter.accounting.pricing"):
        hardware, fixed = pricing.holding_cost("Tesla T4", SECONDS_PER_YEAR)
        pricing.holding_cost("Tesla T4", 1.0)
    assert hardware == pytest.approx(750.0)
    assert fixed == 0.0
    assert [r.getMessage() for r in caplog.records] == [
        "no GPU price matches 'Tesla T4'; pricing it with pricing.default_gpu"
    ]


def test_built_in_dollar_prices_are_not_used_in_another_currency() -> None:
    pricing = Pricing(PricingSettings(currency="EUR"))
    assert pricing.hardware_price("NVIDIA H100 80GB HBM3").purchase_price == 0.0


# Defaults from settings


def test_defaults_price_energy_with_facility_factors() -> None:
    pricing = Pricing(Settings().pricing)
    assert pricing.currency == "USD"
    assert pricing.energy_factor == pytest.approx(1.56 * 1.3)
    # 1 kWh at the GPU is 1.3 kWh at the node, 2.028 kWh at the meter.
    assert pricing.energy_cost(KWH, 0.0, HOUR) == pytest.approx(0.26364)


def test_defaults_amortize_an_h100_over_five_years() -> None:
    pricing = Pricing(Settings().pricing)
    hardware, fixed = pricing.holding_cost("NVIDIA H100 80GB HBM3", HOUR)
    assert hardware == pytest.approx(45_000 / (5 * 8760))
    assert hardware == pytest.approx(1.0274, abs=1e-4)
    assert fixed == 0.0
    with pytest.raises(ValueError, match="negative duration"):
        pricing.holding_cost("NVIDIA H100 80GB HBM3", -1.0)


def test_attribution_defaults() -> None:
    attribution = Settings().attribution
    assert attribution.idle_policy == "share"
    assert attribution.idle_watts == {}
    assert attribution.window_seconds == 900.0
    assert attribution.prefill_weight == 0.25
