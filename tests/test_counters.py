"""Token books: restarts lose and double nothing; totals never go down."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpumeter.engines.counters import EngineBooks
from gpumeter.engines.records import EngineReading, ModelReading

WATCH_START = 1_000.0


def _reading(
    prompt: float, generation: float, started_at: float | None = None
) -> EngineReading:
    return EngineReading(
        kind="vllm",
        models=(ModelReading("m", prompt_tokens=prompt, generation_tokens=generation),),
        started_at=started_at,
    )


def test_an_engine_older_than_the_watch_is_a_baseline() -> None:
    books = EngineBooks(WATCH_START)
    books.update(_reading(500, 900, started_at=10.0))
    assert books.totals("m").prompt_tokens == 0
    books.update(_reading(530, 950, started_at=10.0))
    assert books.totals("m").prompt_tokens == 30
    assert books.totals("m").generation_tokens == 50


def test_an_engine_started_while_watched_counts_from_zero() -> None:
    books = EngineBooks(WATCH_START)
    books.update(_reading(40, 70, started_at=WATCH_START + 5))
    assert books.totals("m").prompt_tokens == 40
    assert books.totals("m").generation_tokens == 70


def test_a_counter_going_down_is_a_restart_for_every_series() -> None:
    books = EngineBooks(WATCH_START)
    books.update(_reading(100, 100))
    books.update(_reading(150, 160))
    # The server restarted and has already counted 20 prompt tokens and 300
    # generated ones: the prompt counter went down, so the generation counter's
    # rise from 160 to 300 is not a rise of 140 but 300 new tokens.
    assert books.update(_reading(20, 300))
    totals = books.totals("m")
    assert totals.prompt_tokens == 50 + 20
    assert totals.generation_tokens == 60 + 300


def test_a_new_start_time_is_a_restart_even_when_counters_grew() -> None:
    books = EngineBooks(WATCH_START)
    books.update(_reading(100, 100, started_at=10.0))
    assert books.update(_reading(400, 500, started_at=2_000.0))
    assert books.totals("m").prompt_tokens == 400


def test_a_model_that_appears_later_counts_from_zero() -> None:
    books = EngineBooks(WATCH_START)
    books.update(_reading(100, 100))
    two = EngineReading(
        kind="vllm",
        models=(
            ModelReading("m", prompt_tokens=110),
            ModelReading("lora", prompt_tokens=7, requests=1),
        ),
    )
    books.update(two)
    assert books.totals("lora").prompt_tokens == 7
    assert books.totals("lora").requests == 1
    assert books.totals("m").prompt_tokens == 10
    assert books.models == ("lora", "m")


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_totals_are_the_true_increments_whatever_the_restarts(
    steps: list[tuple[int, bool]],
) -> None:
    """Each step adds tokens, or restarts the server, which then counts anew."""
    books = EngineBooks(WATCH_START)
    raw = 0
    true_total = 0
    books.update(_reading(raw, raw))
    for added, restart in steps:
        if restart and raw > 0:
            # Restarted, and counted fewer since than before: visible as a drop.
            raw = added % raw
            true_total += raw
        else:
            raw += added
            true_total += added
        before = books.totals("m").prompt_tokens
        books.update(_reading(raw, raw))
        assert books.totals("m").prompt_tokens >= before
    assert books.totals("m").prompt_tokens == true_total
    assert books.totals("m").generation_tokens == true_total
