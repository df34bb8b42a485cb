"""Configuration: a TOML file with ``GPUMETER_…`` environment variables over it."""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from gpumeter.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "BUILTIN_GPU_PRICES",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_LISTEN",
    "WEEKDAYS",
    "AttributionSettings",
    "EngineSettings",
    "EngineTargetSettings",
    "GpuPriceSettings",
    "HardwarePriceSettings",
    "NvmlSettings",
    "PricingSettings",
    "ProcessSettings",
    "SamplingSettings",
    "Settings",
    "TariffPeriodSettings",
    "TariffSettings",
    "load_settings",
    "parse_listen",
]

DEFAULT_CONFIG_PATH = Path("/etc/gpumeter/gpumeter.toml")
DEFAULT_LISTEN = "0.0.0.0:9402"


def parse_listen(value: str) -> tuple[str, int]:
    """Splits ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into host and port.

    Raises:
        ValueError: the value is not HOST:PORT with a port from 0 to 65535.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range in {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingSettings(_Section):
    """How often each source is read.

    Attributes:
        gpu_interval_seconds: period of the GPU tick (NVML power, energy,
            utilization, memory, processes), in seconds.
    """

    gpu_interval_seconds: float = Field(default=1.0, ge=0.1, le=60.0)


class NvmlSettings(_Section):
    """How the daemon deals with NVML.

    Attributes:
        retry_initial_seconds: first delay before retrying a failed NVML start.
        retry_max_seconds: longest delay between retries (the backoff doubles).
    """

    retry_initial_seconds: float = Field(default=1.0, gt=0.0)
    retry_max_seconds: float = Field(default=60.0, gt=0.0)


class ProcessSettings(_Section):
    """Where process information comes from.

    Attributes:
        proc_root: the host's ``/proc``; in a container, the host's mounted there.
    """

    proc_root: Path = Path("/proc")


class EngineTargetSettings(_Section):
    """An inference server named in the configuration.

    Attributes:
        url: ``http://HOST:PORT``, or the full metrics URL when it is not at one
            of the dialect's usual paths.
        name: the ``engine`` label; defaults to HOST:PORT.
        kind: the dialect (vllm, tgi, sglang, llamacpp, nim); detected when unset.
    """

    url: str
    name: str | None = None
    kind: Literal["vllm", "tgi", "sglang", "llamacpp", "nim"] | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http://HOST:PORT[/PATH], got {value!r}")
        return value


class EngineSettings(_Section):
    """How inference servers are found and read.

    Attributes:
        interval_seconds: period of the engine tick, in seconds.
        discovery: find servers that own GPU processes through /proc.
        connect_timeout_seconds: limit for opening a connection, in seconds.
        timeout_seconds: limit for a whole request, in seconds.
        max_body_bytes: a larger response is refused.
        concurrency: requests in flight at once, at most.
        targets: servers to read whether or not they are discovered.
    """

    interval_seconds: float = Field(default=5.0, ge=0.5, le=300.0)
    discovery: bool = True
    connect_timeout_seconds: float = Field(default=2.0, gt=0.0)
    timeout_seconds: float = Field(default=5.0, gt=0.0)
    max_body_bytes: int = Field(default=16 * 2**20, ge=4096)
    concurrency: int = Field(default=8, ge=1, le=256)
    targets: tuple[EngineTargetSettings, ...] = ()


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day names of tariff periods, Monday first (``datetime.weekday()`` order)."""

_CLOCK_TIME = re.compile(r"(\d\d):(\d\d)")
_DAY_S = 86_400
_WEEK_S = 7 * _DAY_S


def _clock_minutes(value: str) -> int:
    """Minutes after midnight of ``HH:MM``; ``24:00`` is the end of the day."""
    found = _CLOCK_TIME.fullmatch(value)
    if found is None:
        raise ValueError("expected HH:MM")
    hours, minutes = int(found[1]), int(found[2])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes > 0):
        raise ValueError("not a time of day from 00:00 to 24:00")
    return hours * 60 + minutes


def _week_time(week_s: int) -> str:
    day, rest = divmod(week_s % _WEEK_S, _DAY_S)
    return f"{WEEKDAYS[day]} {rest // 3600:02d}:{rest % 3600 // 60:02d}"


class TariffPeriodSettings(_Section):
    """One price period of a time-of-use tariff, repeated every week.

    A period whose end is not after its start runs past midnight: ``fri``,
    22:00 to 06:00 covers Friday night and Saturday morning.

    Attributes:
        days: the days on which the period starts, ``mon`` to ``sun``.
        start: local clock time at which it starts, ``HH:MM``.
        end: local clock time at which it ends, ``HH:MM``; ``24:00`` is midnight
            at the end of the day.
        price_per_kwh: price of energy during the period, per kWh.
    """

    days: tuple[Weekday, ...] = Field(min_length=1)
    start: str
    end: str
    price_per_kwh: float = Field(ge=0.0)

    @field_validator("days")
    @classmethod
    def _check_days(cls, value: tuple[Weekday, ...]) -> tuple[Weekday, ...]:
        repeated = sorted({day for day in value if value.count(day) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once")
        return value

    @field_validator("start")
    @classmethod
    def _check_start(cls, value: str) -> str:
        if _clock_minutes(value) == 24 * 60:
            raise ValueError("a period cannot start at 24:00; use 00:00")
        return value

    @field_validator("end")
    @classmethod
    def _check_end(cls, value: str) -> str:
        _clock_minutes(value)
        return value

    @model_validator(mode="after")
    def _check_length(self) -> TariffPeriodSettings:
        if _clock_minutes(self.start) == _clock_minutes(self.end):
            raise ValueError(
                f"start and end are both {self.start}; a whole day is 00:00 to 24:00"
            )
        return self

    def weekly_spans_s(self) -> list[tuple[int, int]]:
        """The period as spans of the local week, in seconds after Monday 00:00.

        Returns:
            Half-open ``(start_s, end_s)`` spans within ``0`` to ``604800``; a
            period that runs past Sunday midnight is split in two.
        """
        start_s = _clock_minutes(self.start) * 60
        end_s = _clock_minutes(self.end) * 60
        if end_s <= start_s:
            end_s += _DAY_S
        spans: list[tuple[int, int]] = []
        for day in self.days:
            begin = WEEKDAYS.index(day) * _DAY_S + start_s
            finish = begin + end_s - start_s
            if finish <= _WEEK_S:
                spans.append((begin, finish))
            else:
                spans += [(begin, _WEEK_S), (0, finish - _WEEK_S)]
        return spans


class TariffSettings(_Section):
    """The price of electricity: flat, or by time of use.

    Attributes:
        price_per_kwh: price per kWh at the meter; under a time-of-use tariff,
            the price of any time no period covers.
        timezone: IANA time zone of the periods' clock times (``Europe/Paris``);
            required when there are periods.
        periods: time-of-use periods; they may not overlap.
    """

    price_per_kwh: float = Field(default=0.13, ge=0.0)
    timezone: str | None = None
    periods: tuple[TariffPeriodSettings, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                raise ValueError("unknown time zone") from None
        return value

    @field_validator("periods")
    @classmethod
    def _check_overlaps(
        cls, value: tuple[TariffPeriodSettings, ...]
    ) -> tuple[TariffPeriodSettings, ...]:
        spans = sorted(
            (start, end, index)
            for index, period in enumerate(value)
            for start, end in period.weekly_spans_s()
        )
        for (_, end, first), (start, _, second) in itertools.pairwise(spans):
            if start < end:
                low, high = sorted((first, second))
                raise ValueError(
                    f"periods {low} and {high} overlap at {_week_time(start)}"
                )
        return value

    @model_validator(mode="after")
    def _check_zone_given(self) -> TariffSettings:
        if self.periods and self.timezone is None:
            raise ValueError("timezone is required when periods are set")
        return self


class HardwarePriceSettings(_Section):
    """What holding one GPU costs, apart from its energy.

    Either the GPU is owned, and its share of the server is amortized
    straight-line over its lifetime down to its residual value, or it is rented
    and ``rent_per_hour`` replaces the amortization. Amounts are in the
    configured currency.

    Attributes:
        purchase_price: the GPU's purchase price.
        server_multiplier: the node's capital cost per GPU as a multiple of the
            GPU's price (CPUs, memory, network, chassis); 1 prices the GPU alone.
        lifetime_years: years over which the capital cost is amortized.
        residual_value: what the GPU's share of the server is worth at the end.
        fixed_per_hour: other costs of holding the GPU per hour (support, rack
            space, staff), owned or rented.
        rent_per_hour: hourly rent of a rented GPU; unset for an owned one.
    """

    purchase_price: float = Field(default=0.0, ge=0.0)
    server_multiplier: float = Field(default=1.5, ge=1.0)
    lifetime_years: float = Field(default=5.0, gt=0.0)
    residual_value: float = Field(default=0.0, ge=0.0)
    fixed_per_hour: float = Field(default=0.0, ge=0.0)
    rent_per_hour: float | None = Field(default=None, ge=0.0)

    @model_validator(mode="after")
    def _check_amounts(self) -> HardwarePriceSettings:
        capital = self.purchase_price * self.server_multiplier
        if self.rent_per_hour is not None and (
            self.purchase_price > 0 or self.residual_value > 0
        ):
            raise ValueError(
                "rent_per_hour replaces amortization; leave purchase_price and "
                "residual_value out for a rented GPU"
            )
        if self.residual_value > capital:
            raise ValueError(
                f"residual_value {self.residual_value} exceeds purchase_price times "
                f"server_multiplier ({capital})"
            )
        return self


class GpuPriceSettings(HardwarePriceSettings):
    """The price of the GPUs whose name matches.

    Attributes:
        match: words of the GPU's name as NVML reports it, case aside
            (``H100`` matches ``NVIDIA H100 80GB HBM3``, not ``NVIDIA GH100``).
    """

    match: str = Field(min_length=1)

    @field_validator("match")
    @classmethod
    def _check_match(cls, value: str) -> str:
        if not re.search(r"[0-9A-Za-z]", value):
            raise ValueError("expected words of a GPU's name")
        return value


BUILTIN_GPU_PRICES: tuple[GpuPriceSettings, ...] = (
    GpuPriceSettings(match="H100", purchase_price=30_000.0),
    GpuPriceSettings(match="H200", purchase_price=35_000.0),
    GpuPriceSettings(match="B200", purchase_price=40_000.0),
    GpuPriceSettings(match="A100", purchase_price=12_000.0),
    GpuPriceSettings(match="L40S", purchase_price=7_500.0),
    GpuPriceSettings(match="RTX 4090", purchase_price=1_599.0),
)
"""Prices of common GPUs in USD, used after the configured ``pricing.gpus``.

Mid-2020s street prices (the RTX 4090 at its launch list price), a server
multiplier of 1.5, five years, no residual value. In another currency, configure
the GPUs in use.
"""


class PricingSettings(_Section):
    """How energy and hardware become money.

    Attributes:
        currency: ISO 4217 code of every amount in the configuration and of
            every cost exported; amounts are never converted.
        pue: power usage effectiveness of the facility: its total energy over
            its IT equipment's energy.
        node_overhead: the node's energy over its GPUs' energy (CPUs, memory,
            fans, network, power supply losses), charged per GPU.
        tariff: the price of electricity.
        gpus: prices of GPUs by name; the most specific match wins, and these
            come before the built-in table.
        default_gpu: the price of a GPU that nothing matches; zero unless set,
            so such a GPU costs only its energy.
    """

    currency: str = "USD"
    pue: float = Field(default=1.56, ge=1.0, le=3.0)
    node_overhead: float = Field(default=1.3, ge=1.0, le=3.0)
    tariff: TariffSettings = TariffSettings()
    gpus: tuple[GpuPriceSettings, ...] = ()
    default_gpu: HardwarePriceSettings = HardwarePriceSettings()

    @field_validator("currency")
    @classmethod
    def _check_currency(cls, value: str) -> str:
        if re.fullmatch(r"[A-Z]{3}", value) is None:
            raise ValueError("expected a three-letter ISO 4217 code")
        return value


class AttributionSettings(_Section):
    """How a GPU's energy and cost are divided among workloads and tokens.

    Attributes:
        idle_policy: ``share`` splits a GPU's idle energy and holding cost among
            its resident processes by memory; ``separate`` books them to an
            ``idle`` workload.
        idle_watts: idle power by GPU, keyed by UUID or index label (``"0"``);
            a GPU not listed has its idle power learned from its quiet periods.
        window_seconds: the sliding window over which cost per million tokens
            is computed, in seconds.
        prefill_weight: the cost of a prompt token relative to a generated one,
            used when the engine reports no prefill and decode times. A
            convention, not a measurement: 0.25 follows the 4:1 output to input
            price ratio most common in hosted model APIs.
    """

    idle_policy: Literal["share", "separate"] = "share"
    idle_watts: dict[str, Annotated[float, Field(ge=0.0, le=5000.0)]] = Field(
        default_factory=dict
    )
    window_seconds: float = Field(default=900.0, ge=60.0, le=86_400.0)
    prefill_weight: float = Field(default=0.25, ge=0.0, le=10.0)

    @field_validator("idle_watts")
    @classmethod
    def _check_labels(cls, value: dict[str, float]) -> dict[str, float]:
        if any(not label.strip() for label in value):
            raise ValueError("a GPU label is empty; use the UUID or the index")
        return value


class Settings(BaseSettings):
    """The effective configuration of one gpumeter daemon.

    Attributes:
        listen: HOST:PORT of the metrics endpoint.
        log_level: ``debug``, ``info``, ``warning`` or ``error``.
        state_dir: directory for the daemon's state.
        sampling: sampling periods.
        nvml: NVML retry policy.
        processes: process information source.
        engines: inference servers.
        pricing: prices of energy and hardware.
        attribution: how energy and cost are divided among workloads.
    """

    model_config = SettingsConfigDict(
        env_prefix="GPUMETER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    listen: str = DEFAULT_LISTEN
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    state_dir: Path = Path("/var/lib/gpumeter")
    sampling: SamplingSettings = SamplingSettings()
    nvml: NvmlSettings = NvmlSettings()
    processes: ProcessSettings = ProcessSettings()
    engines: EngineSettings = EngineSettings()
    pricing: PricingSettings = PricingSettings()
    attribution: AttributionSettings = AttributionSettings()

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the file's values (passed as init values)."""
        return env_settings, init_settings


def load_settings(path: Path | None = None, *, explicit: bool = False) -> Settings:
    """Reads the configuration file, applies the environment, and validates.

    Args:
        path: the TOML file; None means the default path, used when it exists.
        explicit: the user named the file, so a missing file is an error.

    Returns:
        The effective settings.

    Raises:
        ConfigError: one problem per line, each naming the field or the file.
    """
    if path is None:
        path = DEFAULT_CONFIG_PATH
    data: dict[str, Any] = {}
    if path.exists() or explicit:
        data = _read_toml(path)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError([_describe(error) for error in exc.errors()]) from exc


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return dict(tomllib.load(f))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc


def _is_structure(value: Any) -> bool:
    """A table or an array of tables: too long to repeat in a message."""
    if isinstance(value, list | tuple):
        return any(isinstance(item, dict) for item in value)
    return isinstance(value, dict)


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown setting"
    if error["type"] == "missing":
        return f"{where}: required"
    if _is_structure(error["input"]):
        return f"{where}: {message}"
    return f"{where}: {message} (got {error['input']!r})"
