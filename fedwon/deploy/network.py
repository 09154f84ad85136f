"""Loopback ports for a local deployment: pick free ones, wait until a server listens, check freed.

A local deployment needs 2 + N ports (SuperLink HTTP API and Fleet API, one Runtime API per
SuperNode). They are chosen by the kernel (bind to port 0) rather than fixed, so two deployments
can run side by side; all are held open until every one is chosen, so they are distinct.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from contextlib import ExitStack

LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports that were free a moment ago on ``host``."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def is_listening(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_listening(
    port: int, timeout: float, alive: Callable[[], bool] = lambda: True, host: str = LOOPBACK
) -> bool:
    """Poll until ``host:port`` accepts connections; False on timeout or once ``alive()`` is
    False (the server died: waiting longer would only delay the error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        if is_listening(port, host):
            return True
        time.sleep(0.1)
    return False
