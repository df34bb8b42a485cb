"""Configuration: a TOML file with ``GPUMETER_…`` environment variables over it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
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
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_LISTEN",
    "EngineSettings",
    "EngineTargetSettings",
    "NvmlSettings",
    "ProcessSettings",
    "SamplingSettings",
    "Settings",
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


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown setting"
    if error["type"] == "missing":
        return f"{where}: required"
    return f"{where}: {message} (got {error['input']!r})"
