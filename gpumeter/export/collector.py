"""Prometheus metric families built at collect time from the latest snapshot."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gpumeter import __version__
from gpumeter.accounting.books import BooksView
from gpumeter.gpus import GpuSample
from gpumeter.processes import ProcessInfo
from gpumeter.snapshot import NodeSnapshot

__all__ = ["SnapshotCollector"]

_PROCESS_LABELS = ["gpu", "pid", "command", "container", "pod", "namespace"]
_SHORT_CONTAINER_ID = 12


class SnapshotCollector(Collector):
    """Turns the daemon's latest :class:`NodeSnapshot` into metric families.

    Families are built anew on every scrape, so a GPU, process or error that is
    gone from the snapshot leaves no stale series behind.

    Args:
        snapshot: returns the latest snapshot; called once per scrape.
    """

    def __init__(self, snapshot: Callable[[], NodeSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Yields every gpumeter family for the current snapshot."""
        snap = self._snapshot()
        yield InfoMetricFamily(
            "gpumeter_build", "gpumeter's version.", value={"version": __version__}
        )
        nvml_up = GaugeMetricFamily(
            "gpumeter_nvml_up", "1 if NVML is initialized and answering, else 0."
        )
        nvml_up.add_metric([], 1.0 if snap.nvml_up else 0.0)
        yield nvml_up
        errors = CounterMetricFamily(
            "gpumeter_nvml_errors",
            "NVML calls that failed, by GPU, call and error.",
            labels=["gpu", "call", "error"],
        )
        for (gpu, call, error), count in sorted(snap.nvml_errors.items()):
            errors.add_metric([gpu, call, error], float(count))
        yield errors
        yield from _gpu_families(snap)
        yield from _process_families(snap)
        yield from _engine_families(snap)
        if snap.books is not None:
            yield from _book_families(snap.books, snap.idle_watts)


def _gpu_families(snap: NodeSnapshot) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "gpumeter_gpu_info",
        "Identity of each GPU or MIG instance; always 1.",
        labels=["gpu", "uuid", "name", "driver"],
    )
    up = GaugeMetricFamily(
        "gpumeter_gpu_up", "1 if the GPU answered this tick, else 0.", labels=["gpu"]
    )
    energy = CounterMetricFamily(
        "gpumeter_gpu_energy_joules",
        "NVML's total-energy counter: joules since the driver loaded.",
        labels=["gpu"],
    )
    gauges: dict[str, tuple[GaugeMetricFamily, Callable[[GpuSample], float | None]]]
    gauges = {
        "power": (
            _gauge("gpumeter_gpu_power_watts", "Board power draw in watts."),
            lambda s: s.power_watts,
        ),
        "util": (
            _gauge(
                "gpumeter_gpu_utilization_ratio",
                "Fraction of the last sample period in which a kernel ran.",
            ),
            lambda s: s.utilization_ratio,
        ),
        "used": (
            _gauge("gpumeter_gpu_memory_used_bytes", "GPU memory in use, in bytes."),
            lambda s: s.memory_used_bytes,
        ),
        "total": (
            _gauge("gpumeter_gpu_memory_total_bytes", "GPU memory size, in bytes."),
            lambda s: s.memory_total_bytes,
        ),
        "temperature": (
            _gauge("gpumeter_gpu_temperature_celsius", "GPU core temperature."),
            lambda s: s.temperature_celsius,
        ),
        "limit": (
            _gauge(
                "gpumeter_gpu_power_limit_watts", "Enforced board power limit in watts."
            ),
            lambda s: s.power_limit_watts,
        ),
    }
    stamp = GaugeMetricFamily(
        "gpumeter_gpu_last_sample_timestamp_seconds",
        "When the GPU's figures were read, in Unix seconds (for staleness alerts).",
        labels=["gpu"],
    )
    driver = snap.driver_version or ""
    for sample in snap.gpus:
        gpu = sample.device.label
        info.add_metric([gpu, sample.device.uuid, sample.device.name, driver], 1.0)
        up.add_metric([gpu], 1.0 if sample.up else 0.0)
        stamp.add_metric([gpu], sample.wall_time_s)
        if sample.energy_joules is not None:
            energy.add_metric([gpu], sample.energy_joules)
        for family, value_of in gauges.values():
            value = value_of(sample)
            if value is not None:
                family.add_metric([gpu], float(value))
    yield info
    yield up
    yield stamp
    yield energy
    for family, _ in gauges.values():
        yield family


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["gpu"])


def _process_families(snap: NodeSnapshot) -> Iterator[Metric]:
    memory = GaugeMetricFamily(
        "gpumeter_process_gpu_memory_bytes",
        "GPU memory held by a process, in bytes.",
        labels=_PROCESS_LABELS,
    )
    utilization = GaugeMetricFamily(
        "gpumeter_process_gpu_utilization_ratio",
        "A process's mean SM utilization since the previous tick, 0-1.",
        labels=_PROCESS_LABELS,
    )
    for sample in snap.gpus:
        for process in sample.processes:
            labels = [
                sample.device.label,
                str(process.pid),
                *_process_labels(snap.processes.get(process.pid)),
            ]
            if process.memory_bytes is not None:
                memory.add_metric(labels, float(process.memory_bytes))
            if process.sm_utilization_ratio is not None:
                utilization.add_metric(labels, process.sm_utilization_ratio)
    yield memory
    yield utilization


def _process_labels(info: ProcessInfo | None) -> list[str]:
    """The command, container, pod and namespace labels of a process."""
    if info is None:
        return ["", "", "", ""]
    container = (info.container_id or "")[:_SHORT_CONTAINER_ID]
    # The namespace needs the Kubernetes API; /proc alone cannot tell it.
    return [info.command, container, info.pod_uid or "", ""]


def _engine_families(snap: NodeSnapshot) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "gpumeter_engine_up",
        "1 if the inference server's last scrape was read and understood, else 0.",
        labels=["engine", "kind"],
    )
    tokens = CounterMetricFamily(
        "gpumeter_tokens",
        "Tokens an engine processed for a model since gpumeter started watching it.",
        labels=["engine", "model", "token_kind"],
    )
    requests = CounterMetricFamily(
        "gpumeter_requests",
        "Requests an engine finished for a model since gpumeter started watching.",
        labels=["engine", "model"],
    )
    busy = CounterMetricFamily(
        "gpumeter_engine_phase_seconds",
        "Time an engine's requests spent in prefill or decode, summed over requests.",
        labels=["engine", "model", "phase"],
    )
    running = GaugeMetricFamily(
        "gpumeter_engine_requests_running",
        "Requests in an engine's running batch.",
        labels=["engine", "model"],
    )
    waiting = GaugeMetricFamily(
        "gpumeter_engine_requests_waiting",
        "Requests queued in an engine.",
        labels=["engine", "model"],
    )
    placement = GaugeMetricFamily(
        "gpumeter_engine_gpu_info",
        "Ties an engine to each GPU process it owns and its GPU; always 1.",
        labels=["engine", "kind", "gpu", "pid"],
    )
    errors = CounterMetricFamily(
        "gpumeter_scrape_errors",
        "Failed scrapes of an engine, by reason.",
        labels=["engine", "reason"],
    )
    gpus_of = _gpus_by_pid(snap)
    for status in snap.engines:
        name, kind = status.target.name, status.kind or "unknown"
        up.add_metric([name, kind], 1.0 if status.up else 0.0)
        for model, totals in sorted(status.totals.items()):
            for family, value, extra in (
                (tokens, totals.prompt_tokens, ["prompt"]),
                (tokens, totals.generation_tokens, ["generation"]),
                (requests, totals.requests, []),
                (busy, totals.prefill_seconds, ["prefill"]),
                (busy, totals.decode_seconds, ["decode"]),
            ):
                if value is not None:
                    family.add_metric([name, model, *extra], value)
        if status.up and status.reading is not None:
            for reading in status.reading.models:
                if reading.requests_running is not None:
                    running.add_metric([name, reading.model], reading.requests_running)
                if reading.requests_waiting is not None:
                    waiting.add_metric([name, reading.model], reading.requests_waiting)
        for pid in sorted(status.target.pids):
            for gpu in gpus_of.get(pid, ()):
                placement.add_metric([name, kind, gpu, str(pid)], 1.0)
    for (engine, reason), count in sorted(snap.scrape_errors.items()):
        errors.add_metric([engine, reason], float(count))
    yield from (up, tokens, requests, busy, running, waiting, placement, errors)


def _gpus_by_pid(snap: NodeSnapshot) -> dict[int, list[str]]:
    gpus: dict[int, list[str]] = {}
    for sample in snap.gpus:
        for process in sample.processes:
            gpus.setdefault(process.pid, []).append(sample.device.label)
    return gpus


def _book_families(
    books: BooksView, idle_watts: Mapping[str, float]
) -> Iterator[Metric]:
    currency = books.currency
    energy = CounterMetricFamily(
        "gpumeter_workload_energy_joules",
        "GPU energy attributed to a workload's model on a GPU, in joules.",
        labels=["workload", "model", "gpu"],
    )
    for (workload, model, gpu), joules in sorted(books.energy_joules.items()):
        energy.add_metric([workload, model, gpu], joules)
    cost = CounterMetricFamily(
        "gpumeter_cost",
        "Money attributed to a workload's model, by component.",
        labels=["workload", "model", "component", "currency"],
    )
    for (workload, model, component), money in sorted(books.cost.items()):
        cost.add_metric([workload, model, component, currency], money)
    idle = CounterMetricFamily(
        "gpumeter_gpu_idle_cost",
        "Money booked to a GPU's idle workload (idle energy and holding cost).",
        labels=["gpu", "currency"],
    )
    for gpu, money in sorted(books.idle_cost.items()):
        idle.add_metric([gpu, currency], money)
    per_million = GaugeMetricFamily(
        "gpumeter_cost_per_million_tokens",
        "Money per million tokens over the sliding window.",
        labels=["engine", "model", "token_kind", "currency"],
    )
    per_token = GaugeMetricFamily(
        "gpumeter_energy_per_token_joules",
        "GPU energy per token over the sliding window, in joules.",
        labels=["engine", "model", "token_kind"],
    )
    split = GaugeMetricFamily(
        "gpumeter_token_split_info",
        "How an engine's cost is divided between prompt and generated tokens: "
        "phase_time, regression or weight; always 1.",
        labels=["engine", "model", "estimator"],
    )
    for price in books.token_prices:
        labels = [price.engine, price.model, price.token_kind]
        per_million.add_metric([*labels, currency], price.cost_per_million)
        per_token.add_metric(labels, price.energy_per_token_joules)
        if price.token_kind == "all":
            split.add_metric([price.engine, price.model, price.estimator], 1.0)
    method = GaugeMetricFamily(
        "gpumeter_gpu_energy_method_info",
        "How a GPU's energy is measured: counter, or power integrated; always 1.",
        labels=["gpu", "method"],
    )
    for gpu, name in sorted(books.gpu_methods.items()):
        method.add_metric([gpu, name], 1.0)
    basis = GaugeMetricFamily(
        "gpumeter_gpu_split_basis_info",
        "How a GPU's active energy is split: sm, memory, single or none; always 1.",
        labels=["gpu", "basis"],
    )
    for gpu, name in sorted(books.gpu_basis.items()):
        basis.add_metric([gpu, name], 1.0)
    baseline = GaugeMetricFamily(
        "gpumeter_gpu_idle_power_watts",
        "The idle baseline in use for a GPU, configured or learned, in watts.",
        labels=["gpu"],
    )
    for gpu, watts in sorted(idle_watts.items()):
        baseline.add_metric([gpu], watts)
    yield from (energy, cost, idle, per_million, per_token, split, method, basis)
    yield baseline
