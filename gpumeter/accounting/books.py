"""Books per workload: energy and money, and cost per token over a sliding window."""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from gpumeter.accounting.records import GpuInterval
from gpumeter.engines.records import EngineStatus, ModelTotals
from gpumeter.processes import ProcessInfo

__all__ = [
    "COMPONENTS",
    "IDLE_WORKLOAD",
    "Books",
    "BooksView",
    "Prices",
    "TokenPrice",
    "workload_of",
]

logger = logging.getLogger(__name__)

IDLE_WORKLOAD = "idle"
"""The workload that holds a GPU's idle energy and cost when no process bears it."""

COMPONENTS = ("energy", "hardware", "fixed")
"""The parts of a cost: electricity, hardware amortization, fixed hourly costs."""


class Prices(Protocol):
    """What the books need to know of prices (``accounting.pricing.Pricing``)."""

    currency: str

    def energy_cost(
        self, joules: float, start_wall_s: float, end_wall_s: float
    ) -> float:
        """The cost of energy drawn by a GPU over an interval, facility included."""
        ...

    def holding_cost(self, gpu_name: str, duration_s: float) -> tuple[float, float]:
        """The hardware and fixed costs of holding one GPU for a duration."""
        ...


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """An engine's model's cost and energy per token over the sliding window.

    Attributes:
        engine: the engine.
        model: the model.
        token_kind: ``prompt``, ``generation`` or ``all``.
        tokens: tokens of that kind in the window.
        cost_per_million: money per million tokens, in the configured currency.
        energy_per_token_joules: joules per token.
        estimator: how the cost was divided between prompt and generated tokens:
            ``phase_time`` (the engine's prefill and decode time), ``regression``
            (energy fitted on both token counts), or ``weight`` (the configured
            prompt-token weight).
    """

    engine: str
    model: str
    token_kind: str
    tokens: float
    cost_per_million: float
    energy_per_token_joules: float
    estimator: str = "weight"


def workload_of(info: ProcessInfo | None, pid: int) -> str:
    """The name of a process's workload when it belongs to no engine.

    A pod, else a container, else a systemd unit, else the command: the most
    stable name the process has, so that its restarts book to one workload.
    """
    if info is None:
        return "unknown"
    if info.pod_uid:
        return f"pod/{info.pod_uid}"
    if info.container_id:
        return f"container/{info.container_id[:12]}"
    if info.systemd_unit:
        return f"unit/{info.systemd_unit}"
    return f"command/{info.command or pid}"


@dataclass(frozen=True)
class BooksView:
    """A copy of the books at one moment, safe to read from another thread.

    Attributes:
        currency: the configured currency.
        energy_joules: energy by (workload, model, gpu), in joules.
        cost: money by (workload, model, component).
        idle_cost: money booked to each GPU's idle workload, by GPU label.
        gpu_methods: how each GPU's energy was measured (``counter``, ``power``).
        gpu_basis: how each GPU's active energy was split.
        token_prices: cost and energy per token over the window.
    """

    currency: str
    energy_joules: Mapping[tuple[str, str, str], float]
    cost: Mapping[tuple[str, str, str], float]
    idle_cost: Mapping[str, float]
    gpu_methods: Mapping[str, str]
    gpu_basis: Mapping[str, str]
    token_prices: tuple[TokenPrice, ...]


@dataclass
class _Window:
    """Sums over a sliding window of timed entries, kept as running totals."""

    seconds: float

    def __post_init__(self) -> None:
        self._entries: deque[tuple[float, tuple[str, str], tuple[float, ...]]] = deque()
        self._sums: dict[tuple[str, str], list[float]] = {}

    def add(
        self, wall_s: float, key: tuple[str, str], values: tuple[float, ...]
    ) -> None:
        self._entries.append((wall_s, key, values))
        sums = self._sums.setdefault(key, [0.0] * len(values))
        for i, value in enumerate(values):
            sums[i] += value

    def sums(self, now_wall_s: float) -> Mapping[tuple[str, str], list[float]]:
        cutoff = now_wall_s - self.seconds
        while self._entries and self._entries[0][0] <= cutoff:
            _, key, values = self._entries.popleft()
            sums = self._sums[key]
            for i, value in enumerate(values):
                sums[i] -= value
        return self._sums


class Books:
    """Cumulative energy and money per workload, and recent cost per token.

    Not thread-safe: book and read from one thread, and hand :meth:`view` copies
    to others. A workload that books nothing for ``retention_s`` (a pod long gone)
    leaves the books, so that churning pods do not grow the exported series
    without end; what it cost stays in Prometheus's history.

    Args:
        prices: turns energy and holding time into money.
        window_s: the sliding window for cost per token, in seconds.
        prefill_weight: what a prompt token weighs against a generated one when an
            engine does not report its prefill and decode time.
        retention_s: how long a workload that books nothing stays, in seconds.

    """

    def __init__(
        self,
        prices: Prices,
        window_s: float = 900.0,
        prefill_weight: float = 0.25,
        retention_s: float = 3600.0,
    ) -> None:
        self.prices = prices
        self._retention_s = retention_s
        self._last_booked: dict[tuple[str, str], float] = {}
        self._prefill_weight = prefill_weight
        self.energy_joules: defaultdict[tuple[str, str, str], float] = defaultdict(
            float
        )
        """Energy by (workload, model, gpu), in joules."""
        self.cost: defaultdict[tuple[str, str, str], float] = defaultdict(float)
        """Money by (workload, model, component)."""
        self.idle_cost: defaultdict[str, float] = defaultdict(float)
        """Money booked to each GPU's idle workload, by GPU label."""
        self.gpu_methods: dict[str, str] = {}
        """How each GPU's energy was last measured (``counter`` or ``power``)."""
        self.gpu_basis: dict[str, str] = {}
        """How each GPU's active energy was last split (``sm``, ``memory``, …)."""
        self._spend = _Window(window_s)  # (engine, model) -> (money, joules)
        self._tokens = _Window(window_s)  # (engine, model) -> prompt, gen, pre s, dec s
        self._last_totals: dict[tuple[str, str], ModelTotals] = {}
        self._model_shares: dict[str, dict[str, float]] = {}
        # Per engine: active energy since its tokens were last booked, and the
        # sums of a least-squares fit of that energy on its token counts.
        self._active_pending: defaultdict[str, float] = defaultdict(float)
        self._fit = _Window(window_s)  # (engine, "") -> pp, pg, gg, pE, gE, n

    # Booking

    def book_tokens(self, engines: Iterable[EngineStatus], wall_s: float) -> None:
        """Books each engine's tokens since the previous call, per model."""
        for status in engines:
            name = status.target.name
            deltas: dict[str, float] = {}
            prompt_sum = generation_sum = 0.0
            for model, totals in status.totals.items():
                key = (name, model)
                before = self._last_totals.get(key)
                self._last_totals[key] = totals
                if before is None:
                    continue
                values = tuple(
                    max(0.0, (_or0(getattr(totals, f)) - _or0(getattr(before, f))))
                    for f in (
                        "prompt_tokens",
                        "generation_tokens",
                        "prefill_seconds",
                        "decode_seconds",
                    )
                )
                if any(values):
                    self._tokens.add(wall_s, key, values)
                deltas[model] = values[0] + values[1]
                prompt_sum += values[0]
                generation_sum += values[1]
            energy = self._active_pending.pop(name, 0.0)
            if deltas and (prompt_sum or generation_sum):
                p, g = prompt_sum, generation_sum
                self._fit.add(
                    wall_s,
                    (name, ""),
                    (p * p, p * g, g * g, p * energy, g * energy, 1.0),
                )
            total = sum(deltas.values())
            if total > 0:
                self._model_shares[name] = {
                    m: d / total for m, d in deltas.items() if d
                }
            elif name not in self._model_shares and status.totals:
                models = sorted(status.totals)
                self._model_shares[name] = {m: 1 / len(models) for m in models}

    def book_intervals(
        self,
        intervals: Iterable[GpuInterval],
        processes: Mapping[int, ProcessInfo],
        engines: Sequence[EngineStatus],
    ) -> None:
        """Books each GPU interval's energy and money to workloads and models."""
        engine_of = {
            pid: status.target.name
            for status in engines
            for pid in (*status.target.pids, status.target.server_pid)
            if pid is not None
        }
        for interval in intervals:
            self._book_interval(interval, processes, engine_of)

    def _book_interval(
        self,
        interval: GpuInterval,
        processes: Mapping[int, ProcessInfo],
        engine_of: Mapping[int, str],
    ) -> None:
        self.gpu_methods[interval.gpu] = interval.method
        self.gpu_basis[interval.gpu] = interval.basis
        hardware, fixed = self.prices.holding_cost(interval.name, interval.duration_s)
        start, end = interval.start_wall_s, interval.end_wall_s
        for part in interval.processes:
            engine = engine_of.get(part.pid)
            workload = engine or workload_of(processes.get(part.pid), part.pid)
            joules = part.active_joules + part.idle_joules
            if engine is not None:
                self._active_pending[engine] += part.active_joules
            money = (
                self.prices.energy_cost(joules, start, end),
                hardware * part.holding_share,
                fixed * part.holding_share,
            )
            shares = self._model_shares.get(engine, {"": 1.0}) if engine else {"": 1.0}
            for model, share in shares.items():
                self._last_booked[(workload, model)] = end
                self._add(workload, model, interval.gpu, joules * share, money, share)
                if engine is not None:
                    self._spend.add(
                        end, (engine, model), (sum(money) * share, joules * share)
                    )
        idle_money = (
            self.prices.energy_cost(interval.unattributed_joules, start, end),
            hardware * interval.idle_holding_share,
            fixed * interval.idle_holding_share,
        )
        self._add(
            IDLE_WORKLOAD,
            "",
            interval.gpu,
            interval.unattributed_joules,
            idle_money,
            1.0,
        )
        self.idle_cost[interval.gpu] += sum(idle_money)

    def _add(
        self,
        workload: str,
        model: str,
        gpu: str,
        joules: float,
        money: tuple[float, float, float],
        share: float,
    ) -> None:
        self.energy_joules[(workload, model, gpu)] += joules
        for component, amount in zip(COMPONENTS, money, strict=True):
            self.cost[(workload, model, component)] += amount * share

    # Reading

    def view(self, now_wall_s: float) -> BooksView:
        """Copies the books, with cost per token as of ``now_wall_s``."""
        self._forget_gone(now_wall_s)
        return BooksView(
            currency=self.prices.currency,
            energy_joules=dict(self.energy_joules),
            cost=dict(self.cost),
            idle_cost=dict(self.idle_cost),
            gpu_methods=dict(self.gpu_methods),
            gpu_basis=dict(self.gpu_basis),
            token_prices=tuple(self.token_prices(now_wall_s)),
        )

    def _forget_gone(self, now_wall_s: float) -> None:
        cutoff = now_wall_s - self._retention_s
        gone = {key for key, last in self._last_booked.items() if last < cutoff}
        if not gone:
            return
        for key in gone:
            del self._last_booked[key]
            logger.info(
                "workload %s (model %r) left the books: nothing booked for %.0f s",
                key[0],
                key[1],
                self._retention_s,
            )
        for books in (self.energy_joules, self.cost):
            for key3 in [k for k in books if (k[0], k[1]) in gone]:
                del books[key3]

    def token_prices(self, now_wall_s: float) -> list[TokenPrice]:
        """Cost and energy per token of every engine's model over the window.

        An engine's cost is divided between prompt and generated tokens by its own
        prefill and decode time where it reports them; else by the energy each kind
        costs at the margin, fitted over the window, when the fit is sound; else by
        token counts with prompt tokens weighed by ``prefill_weight``.
        """
        spend = self._spend.sums(now_wall_s)
        tokens = self._tokens.sums(now_wall_s)
        fits = self._fit.sums(now_wall_s)
        prices: list[TokenPrice] = []
        for (engine, model), (money, joules) in sorted(spend.items()):
            prompt, generation, prefill_s, decode_s = tokens.get(
                (engine, model), [0.0] * 4
            )
            if prompt + generation <= 0:
                continue
            marginal = _marginal_joules(fits.get((engine, "")))
            if prefill_s + decode_s > 0:
                estimator = "phase_time"
                prompt_share = prefill_s / (prefill_s + decode_s)
            elif marginal is not None and (prompt or generation):
                estimator = "regression"
                prompt_cost = marginal[0] * prompt
                both = prompt_cost + marginal[1] * generation
                prompt_share = prompt_cost / both if both else 0.0
            else:
                estimator = "weight"
                weighted = prompt * self._prefill_weight
                prompt_share = (
                    weighted / (weighted + generation) if weighted + generation else 0.0
                )
            for kind, count, share in (
                ("prompt", prompt, prompt_share),
                ("generation", generation, 1 - prompt_share),
                ("all", prompt + generation, 1.0),
            ):
                if count > 0:
                    prices.append(
                        TokenPrice(
                            engine=engine,
                            model=model,
                            token_kind=kind,
                            tokens=count,
                            cost_per_million=money * share / count * 1e6,
                            energy_per_token_joules=joules * share / count,
                            estimator=estimator,
                        )
                    )
        return prices


# The fewest observations, and the least independence between prompt and generated
# token counts (1 - their squared correlation), for a fit to be trusted.
_FIT_MIN_OBSERVATIONS = 8
_FIT_MIN_INDEPENDENCE = 0.05


def _marginal_joules(sums: list[float] | None) -> tuple[float, float] | None:
    """Joules per prompt and per generated token, from least-squares sums.

    The fit is energy = a * prompt + b * generated over the window's bookings,
    with no intercept (idle energy is not in it). It is trusted only with enough
    observations, token mixes that vary independently, and both slopes positive.
    """
    if sums is None:
        return None
    pp, pg, gg, pe, ge, n = sums
    if n < _FIT_MIN_OBSERVATIONS or pp <= 0 or gg <= 0:
        return None
    det = pp * gg - pg * pg
    if det / (pp * gg) < _FIT_MIN_INDEPENDENCE:
        return None
    a = (gg * pe - pg * ge) / det
    b = (pp * ge - pg * pe) / det
    if a <= 0 or b <= 0:
        return None
    return a, b


def _or0(value: float | None) -> float:
    return 0.0 if value is None else value
