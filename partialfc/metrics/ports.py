"""Where the metrics server listens, and why it cannot: one description of a failed bind, shared by
the server itself and by checks made before any work (the preflight calls :func:`port_problem`)."""

from __future__ import annotations

import errno
import socket

from partialfc.errors import UserError

# Failures that say the address, not the port, is wrong.
_HOST_ERRNOS = {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}


class MetricsPortError(UserError, OSError):
    """The metrics server cannot listen on ``host:port``.

    Attributes:
        host: the address it tried.
        port: the port it tried.
        problem: what was found and what to do, one sentence naming the port or the host.
        about_host: the address is at fault (``metrics.host``), not the port.
    """

    def __init__(self, host: str, port: int, problem: str, *, about_host: bool = False) -> None:
        super().__init__(f"cannot serve metrics on {host}:{port}: {problem}")
        self.host, self.port, self.problem, self.about_host = host, port, problem, about_host


def address_family(host: str) -> socket.AddressFamily:
    """IPv6 for an address with a colon (``::``, ``::1``), IPv4 otherwise."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_error(host: str, port: int, err: OSError) -> MetricsPortError:
    """The user error for a failed ``bind((host, port))``."""
    if isinstance(err, socket.gaierror) or err.errno in _HOST_ERRNOS:
        return MetricsPortError(
            host,
            port,
            f"{host!r} is not an address of this machine ({err.strerror or err}); set metrics.host "
            "to 0.0.0.0 (every interface), 127.0.0.1 (this machine only) or one of its addresses",
            about_host=True,
        )
    if err.errno == errno.EADDRINUSE:
        found = f"port {port} on {host} is already in use by another process"
    elif err.errno == errno.EACCES:
        found = f"port {port} is privileged (below 1024) and this user may not listen on it"
    else:
        found = f"listening on port {port} at {host} failed ({err.strerror or err})"
    return MetricsPortError(
        host,
        port,
        f"{found}; stop what holds it, or set metrics.port to a free port (local rank r serves "
        "on metrics.port + r; 0 turns the server off)",
    )


def bind_socket(sock: socket.socket, host: str, port: int) -> None:
    """``sock.bind((host, port))`` with the options of the metrics server (Python's HTTP server).

    SO_REUSEADDR, as that server sets it: a port left in TIME_WAIT by the previous process of a
    restarted run is free, a port another process listens on is not. No SO_REUSEPORT, which
    would let two servers share a port.

    Raises:
        MetricsPortError: the bind failed; the message names the port or the host.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        raise bind_error(host, port, err) from None


def port_problem(host: str, port: int) -> str | None:
    """Why the metrics server could not listen on ``host:port`` now, or None when it could.

    The answer is a sentence naming the port (or the host) and what to do; the caller prefixes the
    config key and the rank. A free port may still be taken before the server starts: the server's
    own bind reports that case with the same sentence.
    """
    try:
        with socket.socket(address_family(host), socket.SOCK_STREAM) as sock:
            bind_socket(sock, host, port)
    except MetricsPortError as err:
        return err.problem
    return None
