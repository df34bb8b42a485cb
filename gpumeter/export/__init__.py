"""Exports the node's state: Prometheus metrics over HTTP."""

from gpumeter.export.collector import SnapshotCollector
from gpumeter.export.server import MetricsServer

__all__ = ["MetricsServer", "SnapshotCollector"]
