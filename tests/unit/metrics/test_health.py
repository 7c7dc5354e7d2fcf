"""Health as progress (StallWatch, with an injected clock) and the metrics server's bind errors."""

import errno
import os
import socket
from pathlib import Path

import pytest

from partialfc.errors import UserError
from partialfc.metrics import MetricsPortError, StallWatch, port_problem
from partialfc.metrics.ports import bind_error
from partialfc.train.config import Config
from tests.http import http_get

DEMO = Path(__file__).resolve().parents[3] / "partialfc" / "configs" / "demo_cpu.toml"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_stall_clock_starts_at_creation_and_restarts_at_each_completed_step() -> None:
    clock = Clock()
    watch = StallWatch(60.0, clock=clock)
    clock.now += 59.5  # startup (and resume) may take up to stall_seconds before the first step
    assert watch.healthy() and watch.seconds_since_progress() == 59.5
    clock.now += 0.5
    assert not watch.healthy(), "60 s without a step is a stall"
    watch.step_completed()
    assert watch.healthy() and watch.seconds_since_progress() == 0.0
    # An evaluation plus a checkpoint between two steps: healthy while within stall_seconds.
    clock.now += 45.0
    assert watch.healthy()
    watch.step_completed()
    clock.now += 59.0
    assert watch.healthy() and watch.seconds_since_progress() == 59.0
    clock.now += 1.0
    assert not watch.healthy()
    watch.step_completed()  # a stall that ends (a slow peer catches up) is healthy again
    assert watch.healthy()


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_stall_seconds_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="stall_seconds"):
        StallWatch(bad)


def test_metrics_config_has_host_and_stall_seconds_with_their_defaults_and_checks() -> None:
    cfg = Config.load(DEMO, ["--metrics.host", "127.0.0.1", "--metrics.stall_seconds", "90"])
    assert (cfg.metrics.host, cfg.metrics.stall_seconds) == ("127.0.0.1", 90.0)
    default = Config.load(DEMO, [])
    assert (default.metrics.host, default.metrics.stall_seconds) == ("0.0.0.0", 1800.0)
    for key, value, accepted in [
        ("stall_seconds", "0", "> 0, got 0.0"),
        ("stall_seconds", "-5", "> 0, got -5.0"),
        ("stall_seconds", "nan", "> 0, got nan"),
        ("host", "", "such as 0.0.0.0, 127.0.0.1 or ::, got ''"),
        ("host", "127.0.0.1 9100", "got '127.0.0.1 9100'"),
    ]:
        with pytest.raises(UserError, match=f"^metrics.{key}: must be .*{accepted}"):
            Config.load(DEMO, [f"--metrics.{key}", value])


def test_prometheus_healthz_follows_the_stall_watch() -> None:
    pytest.importorskip("prometheus_client")
    from partialfc.metrics import PrometheusSink

    clock = Clock()
    watch = StallWatch(30.0, clock=clock)
    sink = PrometheusSink(
        0, host="127.0.0.1", healthy=watch.healthy, progress_age=watch.seconds_since_progress
    )
    url = f"http://127.0.0.1:{sink.port}"
    try:
        clock.now += 12.0
        assert http_get(url + "/healthz") == (200, "ok\n")
        assert 'partialfc_seconds_since_step{rank="0"} 12.0' in http_get(url + "/metrics")[1]
        clock.now += 18.0
        assert http_get(url + "/healthz") == (503, "unhealthy: no training step for 30 s\n")
        watch.step_completed()
        assert http_get(url + "/healthz") == (200, "ok\n")
    finally:
        sink.close()


def _in_use(port: int, host: str) -> str:
    return (
        f"port {port} on {host} is already in use by another process; stop what holds it, or set "
        "metrics.port to a free port (local rank r serves on metrics.port + r; 0 turns the server "
        "off)"
    )


def _listener(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen()
    return sock


def test_port_problem_names_a_busy_port_and_what_to_do() -> None:
    with _listener() as busy:
        port = busy.getsockname()[1]
        # The server binds every interface by default: a listener on one of them blocks it.
        for host in ("127.0.0.1", "0.0.0.0"):
            assert port_problem(host, port) == _in_use(port, host)
    assert port_problem("127.0.0.1", port) is None, "free once the listener is closed"


def test_port_problem_names_a_host_that_is_not_this_machine() -> None:
    problem = port_problem("192.0.2.1", 0)  # TEST-NET-1: documentation only, never local
    assert problem is not None
    assert problem.startswith("'192.0.2.1' is not an address of this machine (")
    advice = "set metrics.host to 0.0.0.0 (every interface), 127.0.0.1 (this machine only)"
    assert problem.endswith(f"; {advice} or one of its addresses")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may listen on privileged ports")
def test_port_problem_names_a_privileged_port() -> None:
    assert port_problem("127.0.0.1", 80).startswith(
        "port 80 is privileged (below 1024) and this user may not listen on it;"
    )


def test_bind_error_sorts_host_and_port_failures() -> None:
    in_use = bind_error("0.0.0.0", 9100, OSError(errno.EADDRINUSE, "Address already in use"))
    assert isinstance(in_use, UserError) and isinstance(in_use, OSError)
    assert not in_use.about_host and in_use.port == 9100
    assert str(in_use).startswith("cannot serve metrics on 0.0.0.0:9100: port 9100 on 0.0.0.0 is")
    unknown = bind_error("nosuch.invalid", 9100, socket.gaierror(-2, "Name or service not known"))
    assert unknown.about_host
    assert unknown.problem.startswith("'nosuch.invalid' is not an address of this machine (Name")


def test_the_prometheus_sink_on_a_busy_port_raises_the_user_error() -> None:
    pytest.importorskip("prometheus_client")
    from partialfc.metrics import PrometheusSink

    with _listener() as busy:
        port = busy.getsockname()[1]
        with pytest.raises(MetricsPortError) as caught:
            PrometheusSink(port, host="127.0.0.1")
    assert caught.value.port == port and not caught.value.about_host
    assert caught.value.problem == _in_use(port, "127.0.0.1")


def test_the_prometheus_sink_listens_on_ipv6() -> None:
    pytest.importorskip("prometheus_client")
    from partialfc.metrics import PrometheusSink

    if port_problem("::1", 0) is not None:
        pytest.skip("no IPv6 loopback here")
    sink = PrometheusSink(0, host="::1")
    try:
        assert http_get(f"http://[::1]:{sink.port}/healthz") == (200, "ok\n")
    finally:
        sink.close()
