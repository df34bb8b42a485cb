"""A clock the test moves by hand, for the simulation and anything it drives."""

from __future__ import annotations

WALL_START = 1_700_000_000.0
"""Wall-clock time at which every fake clock starts, in Unix seconds."""


class FakeClock:
    """Both clocks move together, only when the test says so."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = WALL_START

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def now_us(self) -> int:
        return round(self.wall * 1_000_000)
