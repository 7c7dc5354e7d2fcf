"""A Prometheus endpoint for one training process (``/metrics`` and ``/healthz``).

Each rank serves its own port (``metrics.port + local_rank``) with a ``rank`` label, so a
PodMonitor or a static scrape config sees every process. prometheus-client is an optional
dependency (extra ``metrics``), imported when a sink is created.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from partialfc.metrics.ports import address_family, bind_error

PREFIX = "partialfc_"
# Buckets for step-phase times: 1 ms .. ~2 min, roughly x2 apart.
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_port = False  # SO_REUSEPORT would let a second run share the port silently


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood the training log


class PrometheusSink:
    """Serves the trainer's metrics for scraping.

    Logged keys map onto metrics as follows: ``step``, ``loss``, ``lr``, ``samples_per_second``,
    ``grad_norm``, ``memory_bytes`` -> gauges ``partialfc_<name>`` (``lr`` is exported as
    ``partialfc_learning_rate``); ``time/<phase>`` for phase in data, forward, backward, optimizer,
    total -> histogram ``partialfc_step_seconds{phase=...}``; ``nonfinite_steps`` (a running count)
    -> counter ``partialfc_nonfinite_steps_total``; ``checkpoint_time`` (a Unix time) -> gauge
    ``partialfc_checkpoint_age_seconds``, computed at scrape time. Other keys become gauges
    ``partialfc_<key>`` with non-alphanumerics replaced by ``_``.

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
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

        self.registry = CollectorRegistry()
        labels = ("rank",)
        self._rank = str(rank)
        self._gauges: dict[str, Any] = {}
        self._gauge_cls = Gauge
        self._steps = Histogram(
            f"{PREFIX}step_seconds", "Seconds per training step, by phase", ("rank", "phase"),
            buckets=TIME_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._nonfinite = Counter(
            f"{PREFIX}nonfinite_steps",
            "Steps skipped for a non-finite loss",
            labels,
            registry=self.registry,
        )
        self._nonfinite.labels(self._rank)  # the series exists (at 0) before the first bad step
        self._nonfinite_seen = 0.0
        self._checkpoint_time: float | None = None
        age = Gauge(
            f"{PREFIX}checkpoint_age_seconds",
            "Seconds since the last checkpoint",
            labels,
            registry=self.registry,
        )
        age.labels(self._rank).set_function(self._checkpoint_age)
        for name, help_ in (
            ("step", "Optimizer steps done"),
            ("loss", "Training loss of the last step"),
            ("learning_rate", "Learning rate of the last step"),
            ("samples_per_second", "Training throughput over all ranks"),
            ("grad_norm", "Backbone gradient norm before clipping"),
            ("memory_bytes", "Peak accelerator (or host) memory of this process"),
        ):
            self._gauges[name] = Gauge(f"{PREFIX}{name}", help_, labels, registry=self.registry)
        if progress_age is not None:
            since = Gauge(
                f"{PREFIX}seconds_since_step",
                "Seconds since this process last completed a training step",
                labels,
                registry=self.registry,
            )
            since.labels(self._rank).set_function(progress_age)
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

    def _checkpoint_age(self) -> float:
        return math.nan if self._checkpoint_time is None else time.time() - self._checkpoint_time

    def _gauge(self, key: str) -> Any:
        name = {"lr": "learning_rate"}.get(key, key)
        name = "".join(c if c.isalnum() else "_" for c in name)
        if name not in self._gauges:
            self._gauges[name] = self._gauge_cls(
                f"{PREFIX}{name}", f"Trainer value '{key}'", ("rank",), registry=self.registry
            )
        return self._gauges[name]

    def log(self, name: str, value: float, step: int) -> None:
        self.log_dict({name: value}, step)

    def log_dict(self, values: Mapping[str, float], step: int) -> None:
        self._gauges["step"].labels(self._rank).set(step)
        for key, value in values.items():
            if key.startswith("time/"):
                self._steps.labels(self._rank, key[5:]).observe(value)
            elif key == "nonfinite_steps":
                if value > self._nonfinite_seen:
                    self._nonfinite.labels(self._rank).inc(value - self._nonfinite_seen)
                    self._nonfinite_seen = value
            elif key == "checkpoint_time":
                self._checkpoint_time = value
            else:
                self._gauge(key).labels(self._rank).set(value)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
