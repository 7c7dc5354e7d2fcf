"""Metric sinks: one small Protocol, console / JSON lines / Prometheus implementations, and the
progress-based health that the Prometheus endpoint's ``/healthz`` reports."""

from partialfc.metrics.base import JsonlSink, MetricSink, MultiSink, StdoutSink
from partialfc.metrics.health import StallWatch
from partialfc.metrics.ports import MetricsPortError, port_problem
from partialfc.metrics.prometheus import PrometheusSink

__all__ = [
    "JsonlSink",
    "MetricSink",
    "MetricsPortError",
    "MultiSink",
    "PrometheusSink",
    "StallWatch",
    "StdoutSink",
    "port_problem",
]
