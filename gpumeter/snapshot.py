"""The node's latest state: what every reader (exporter, table, report) sees."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gpumeter.accounting.books import BooksView
from gpumeter.engines.records import EngineStatus
from gpumeter.gpus import GpuSample
from gpumeter.processes import ProcessInfo

__all__ = ["NodeSnapshot"]


@dataclass(frozen=True)
class NodeSnapshot:
    """One consistent view of the node, replaced whole after every tick.

    Attributes:
        gpus: the latest sample of every GPU and MIG instance.
        processes: what is known of each GPU process, by PID.
        nvml_up: NVML is initialized and answering.
        driver_version: the NVIDIA driver version, when known.
        nvml_errors: failed NVML calls so far, by (gpu label, call, error).
        tick_monotonic_s: monotonic time of the GPU tick that built this snapshot.
        engines: the status of every inference server.
        scrape_errors: failed scrapes so far, by (engine, reason).
        books: energy and money per workload, and cost per token, when priced.
        idle_watts: the idle baseline of each GPU in use, by GPU label.
    """

    gpus: tuple[GpuSample, ...] = ()
    processes: Mapping[int, ProcessInfo] = field(default_factory=dict)
    nvml_up: bool = False
    driver_version: str | None = None
    nvml_errors: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    tick_monotonic_s: float | None = None
    engines: tuple[EngineStatus, ...] = ()
    scrape_errors: Mapping[tuple[str, str], int] = field(default_factory=dict)
    books: BooksView | None = None
    idle_watts: Mapping[str, float] = field(default_factory=dict)
