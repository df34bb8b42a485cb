"""Parsing a Prometheus text exposition into families keyed by normalized name."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Families", "normalize_name", "parse_exposition"]

Families = Mapping[str, Metric]
"""Metric families by normalized name (see :func:`normalize_name`)."""


def normalize_name(name: str) -> str:
    """The name a family is filed under: colons become underscores.

    Servers write ``vllm:prompt_tokens``; re-exporters and some versions write
    ``vllm_prompt_tokens``. Both are filed under the second spelling. Counter
    families are named without ``_total``, as the parser gives them.
    """
    return name.replace(":", "_")


def parse_exposition(text: str) -> dict[str, Metric]:
    """Parses Prometheus text format (0.0.4) into families.

    Args:
        text: the body of a ``/metrics`` response.

    Returns:
        Families by normalized name; samples keep the names the server wrote.

    Raises:
        ValueError: the text is not an exposition (HTML, JSON, a cut-off line).
    """
    stripped = text.lstrip()
    if stripped.startswith(("<", "{", "[", '"')):
        raise ValueError("not a Prometheus exposition: looks like HTML or JSON")
    families: dict[str, Metric] = {}
    try:
        for family in text_string_to_metric_families(text):
            families[normalize_name(family.name)] = family
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise ValueError(f"not a Prometheus exposition: {exc}") from exc
    return families
