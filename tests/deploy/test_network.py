"""Free loopback ports and waiting for a server to listen."""

import socket
import time

from fedwon.deploy.network import free_ports, is_listening, wait_listening


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_wait_listening_sees_a_server_and_gives_up_when_it_died() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert is_listening(port) and wait_listening(port, 5)
    assert not is_listening(port)
    start = time.monotonic()
    assert not wait_listening(port, 30, alive=lambda: False)
    assert time.monotonic() - start < 1
