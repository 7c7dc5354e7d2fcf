"""A Prometheus endpoint for one training process (``/metrics`` and ``/healthz``).

Each rank serves its own port (``metrics.port + local_rank``) with a ``rank`` label, so a
PodMonitor or a static scrape config sees every process. prometheus-client is an optional
dependency (extra ``metrics``), imported when a sink is created.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from partialfc.metrics.ports import address_family, bind_error

PREFIX = "partialfc_"
# Buckets for step-phase times: 1 ms .. ~2 min, roughly x2 apart.
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Gauges with a fixed name: the logged key, its series name and HELP text.
GAUGES = {
    "loss": ("loss", "Training loss of the last step (NaN for a skipped, non-finite step)"),
    "grad_norm": ("grad_norm", "Backbone gradient norm of the last step, before clipping"),
    "loss_scale": ("loss_scale", "fp16 loss scale of the last step"),
    "sample_rate": ("sample_rate", "Fraction of its classes each rank scores (Partial FC)"),
    "samples_per_second": ("samples_per_second", "Images per second of the last step, all ranks"),
    "memory_bytes": ("memory_bytes", "Peak accelerator (or host) memory of this process"),
}
LEARNING_RATES = {"lr": "backbone", "head_lr": "head"}
# eval/<set>/<what> -> the gauge partialfc_eval_<name>; eval/<set> alone is the accuracy.
EVAL_GAUGES = {
    "accuracy": ("accuracy", "Verification accuracy (10-fold) of the last evaluation"),
    "std": ("accuracy_std", "Standard deviation of the verification accuracy over the folds"),
    "val": ("val", "VAL (true accept rate) at the FAR of partialfc_eval_far"),
    "val_std": ("val_std", "Standard deviation of VAL over the folds"),
    "far": ("far", "False accept rate that VAL is measured at"),
    "xnorm": ("xnorm", "Mean embedding norm over the set's images"),
    "best": ("best_accuracy", "Best verification accuracy of the run so far"),
}


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_port = False  # SO_REUSEPORT would let a second run share the port silently


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood the training log


class PrometheusSink:
    """Serves the trainer's metrics for scraping, named as Prometheus' naming guide asks.

    Logged keys map onto series (every series has the ``rank`` label; the catalogue with types and
    units is ``docs/observability.md``):

    - ``rank_samples`` (images this rank trained on in the step) marks a training step: counters
      ``partialfc_steps_total`` (+1) and ``partialfc_samples_total`` (+ the value), so that
      ``sum(rate(partialfc_samples_total[5m]))`` is the run's throughput;
    - ``step`` (the argument), ``loss``, ``grad_norm``, ``loss_scale``, ``sample_rate``,
      ``samples_per_second``, ``memory_bytes`` -> gauges ``partialfc_<name>``;
    - ``lr`` and ``head_lr`` -> gauge ``partialfc_learning_rate{optimizer="backbone"|"head"}``;
    - ``time/<phase>`` -> histogram ``partialfc_step_duration_seconds{phase=...}``;
    - ``nonfinite_steps`` (a running count) -> counter ``partialfc_nonfinite_steps_total``;
    - ``checkpoint_time`` (a Unix time) -> gauge ``partialfc_last_checkpoint_timestamp_seconds``;
    - ``eval/<set>`` (accuracy) and ``eval/<set>/<what>`` -> gauges ``partialfc_eval_accuracy``,
      ``partialfc_eval_<what>`` (``best`` -> ``partialfc_eval_best_accuracy``) with a ``set``
      label;
    - anything else (``margin/t``) -> gauge ``partialfc_<key>``, non-alphanumerics as ``_``.

    The registry is the sink's own (a test may run several sinks in one process) with the
    standard ``process_*`` and ``python_*`` collectors registered on it.

    Args:
        port: TCP port to listen on (0: any free port; see ``self.port``).
        host: interface to bind.
        rank: value of the ``rank`` label.
        healthy: called by ``/healthz`` on the server's thread; a false result answers 503. It
            must not wait for the training thread (which may be the thing that is stuck).
        progress_age: seconds since the last training step (see
            :class:`partialfc.metrics.health.StallWatch`); exported as the gauge
            ``partialfc_seconds_since_step`` and quoted by an unhealthy ``/healthz``.

    Raises:
        MetricsPortError: the port is in use, privileged, or ``host`` is not an address of this
            machine (a user error naming the port or the host).
    """

    def __init__(
        self,
        port: int,
        host: str = "0.0.0.0",
        rank: int = 0,
        healthy: Callable[[], bool] | None = None,
        progress_age: Callable[[], float] | None = None,
    ) -> None:
        from prometheus_client import make_wsgi_app

        self.registry = _registry()
        self._rank = str(rank)
        self._series = _Series(self.registry, self._rank, progress_age)
        self._healthy = healthy or (lambda: True)
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                ok = self._healthy()
                start_response(
                    "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
                )
                if ok:
                    return [b"ok\n"]
                if progress_age is None:
                    return [b"unhealthy\n"]
                return [f"unhealthy: no training step for {progress_age():.0f} s\n".encode()]
            return metrics_app(environ, start_response)

        server_class = (
            _ThreadingServer6 if address_family(host) == socket.AF_INET6 else _ThreadingServer
        )
        try:
            self._server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        except OSError as err:
            raise bind_error(host, port, err) from None
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="partialfc-metrics", daemon=True
        )
        self._thread.start()

    def log(self, name: str, value: float, step: int) -> None:
        self.log_dict({name: value}, step)

    def log_dict(self, values: Mapping[str, float], step: int) -> None:
        self._series.record(values, step)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _registry() -> Any:
    """A private registry with the standard process, platform and garbage-collector collectors
    (what the default registry has), so ``process_*`` and ``python_*`` series are exported."""
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_*: only where /proc exists (Linux)
    PlatformCollector(registry=registry)  # python_info
    GCCollector(registry=registry)  # python_gc_*
    return registry


class _Series:
    """The sink's series on one registry, and the mapping of logged keys onto them."""

    def __init__(self, registry: Any, rank: str, progress_age: Callable[[], float] | None) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self._gauge_cls, self._registry, self._rank = Gauge, registry, rank
        rank_only = ("rank",)

        def counter(name: str, help_: str) -> Any:
            metric = Counter(f"{PREFIX}{name}", help_, rank_only, registry=registry)
            metric.labels(rank)  # the series exists (at 0) before the first increment
            return metric

        self.steps = counter("steps", "Optimizer steps completed by this process")
        self.samples = counter("samples", "Images this rank trained on (sum over ranks: the run's)")
        self.nonfinite = counter("nonfinite_steps", "Steps skipped for a non-finite loss")
        self._nonfinite_seen = 0.0
        self.durations = Histogram(
            f"{PREFIX}step_duration_seconds",
            "Seconds per training step, by phase (data, forward, backward, optimizer, total)",
            ("rank", "phase"),
            buckets=TIME_BUCKETS,
            registry=registry,
        )
        self.step = Gauge(f"{PREFIX}step", "Optimizer step reached", rank_only, registry=registry)
        self.checkpoint = Gauge(
            f"{PREFIX}last_checkpoint_timestamp_seconds",
            "Unix time of the last checkpoint written (or resumed from)",
            rank_only,
            registry=registry,
        )
        self.learning_rate = Gauge(
            f"{PREFIX}learning_rate",
            "Learning rate of the last step, by optimizer (backbone, head: the class centres)",
            ("rank", "optimizer"),
            registry=registry,
        )
        self.gauges = {
            key: Gauge(f"{PREFIX}{name}", help_, rank_only, registry=registry)
            for key, (name, help_) in GAUGES.items()
        }
        self.eval = {
            what: Gauge(f"{PREFIX}eval_{name}", help_, ("rank", "set"), registry=registry)
            for what, (name, help_) in EVAL_GAUGES.items()
        }
        self.others: dict[str, Any] = {}
        if progress_age is not None:
            since = Gauge(
                f"{PREFIX}seconds_since_step",
                "Seconds since this process last completed a training step (or started)",
                rank_only,
                registry=registry,
            )
            since.labels(rank).set_function(progress_age)

    def record(self, values: Mapping[str, float], step: int) -> None:
        """Puts one logged record onto the series."""
        rank = self._rank
        self.step.labels(rank).set(step)
        for key, value in values.items():
            if key == "rank_samples":
                self.steps.labels(rank).inc()
                self.samples.labels(rank).inc(value)
            elif key.startswith("time/"):
                self.durations.labels(rank, key[5:]).observe(value)
            elif key == "nonfinite_steps":
                if value > self._nonfinite_seen:  # a running count: the counter takes the rise
                    self.nonfinite.labels(rank).inc(value - self._nonfinite_seen)
                    self._nonfinite_seen = value
            elif key == "checkpoint_time":
                self.checkpoint.labels(rank).set(value)
            elif key in LEARNING_RATES:
                self.learning_rate.labels(rank, LEARNING_RATES[key]).set(value)
            elif key in self.gauges:
                self.gauges[key].labels(rank).set(value)
            elif key.startswith("eval/"):
                set_name, _, what = key[5:].partition("/")
                self._eval_gauge(what or "accuracy").labels(rank, set_name).set(value)
            else:
                self._other(key).labels(rank).set(value)

    def _eval_gauge(self, what: str) -> Any:
        if what not in self.eval:
            name = _series_name(what)
            self.eval[what] = self._gauge_cls(
                f"{PREFIX}eval_{name}",
                f"Evaluation result '{what}'",
                ("rank", "set"),
                registry=self._registry,
            )
        return self.eval[what]

    def _other(self, key: str) -> Any:
        if key not in self.others:
            self.others[key] = self._gauge_cls(
                f"{PREFIX}{_series_name(key)}",
                f"Trainer value '{key}'",
                ("rank",),
                registry=self._registry,
            )
        return self.others[key]


def _series_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)
