"""gpumeter's own exceptions; foreign errors are translated at the boundary.

The tree::

    GpumeterError
    ├── ConfigError              bad configuration; the message names the field
    ├── ListenError              the metrics address cannot be bound
    └── SourceError              a data source failed; the daemon carries on
        ├── ScrapeError          an engine's endpoint could not be read (``reason``)
        └── NvmlError            an NVML call failed (``call`` and ``code`` kept)
            ├── NvmlUnavailable  no library, no driver, or init failed
            ├── NvmlNotSupported the device has no such capability
            └── GpuLost          the GPU fell off the bus or needs a reset

Every translated error is raised ``from`` the original, so the cause stays in the
traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "GpuLost",
    "GpumeterError",
    "ListenError",
    "NvmlError",
    "NvmlNotSupported",
    "NvmlUnavailable",
    "ScrapeError",
    "SourceError",
]


class GpumeterError(Exception):
    """Base of every error gpumeter raises on purpose."""


class ConfigError(GpumeterError):
    """The configuration is invalid.

    Attributes:
        problems: one line per problem, each naming the field and the value.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ListenError(GpumeterError):
    """The metrics endpoint cannot listen on its address (in use, no permission)."""


class SourceError(GpumeterError):
    """A data source (NVML, /proc, an engine's endpoint) failed."""


class ScrapeError(SourceError):
    """An inference server's endpoint could not be read or understood.

    Attributes:
        reason: a short, stable name for what went wrong, used as a metric label:
            ``refused``, ``timeout``, ``http_<status>``, ``too_large``,
            ``truncated``, ``not_metrics``, ``unrecognized``, ``bad_response``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NvmlError(SourceError):
    """An NVML call failed.

    Attributes:
        call: the NVML function that failed, without the ``nvml`` prefix.
        code: a short, stable name for the error (``not_supported``, ``gpu_lost``).
    """

    def __init__(self, call: str, code: str, message: str) -> None:
        super().__init__(f"{call}: {message}")
        self.call = call
        self.code = code


class NvmlUnavailable(NvmlError):
    """NVML cannot be used at all: library missing, driver not loaded, bad init."""


class NvmlNotSupported(NvmlError):
    """The device does not support the call; not a failure, a missing capability."""


class GpuLost(NvmlError):
    """The GPU is lost or needs a reset; every call on it fails until it returns."""
