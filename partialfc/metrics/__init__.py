"""Metric sinks: one small Protocol, console / JSON lines / Prometheus implementations."""

from partialfc.metrics.base import JsonlSink, MetricSink, MultiSink, StdoutSink
from partialfc.metrics.prometheus import PrometheusSink

__all__ = ["JsonlSink", "MetricSink", "MultiSink", "PrometheusSink", "StdoutSink"]
