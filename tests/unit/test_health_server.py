"""The metrics port against clients that do not behave: one that connects and never sends
must not hold a thread and a socket for ever (enough of them exhaust the pod's descriptors,
and with them the connections to Kafka and Omnisend)."""

from __future__ import annotations

import socket
import threading
import time

from prometheus_client import CollectorRegistry

from connector.health import HealthServer


def test_a_client_that_never_sends_is_disconnected_and_its_thread_ends() -> None:
    ok: tuple[bool, dict[str, object]] = (True, {})
    server = HealthServer(
        CollectorRegistry(), lambda: ok, lambda: ok, "127.0.0.1", 0, client_timeout_s=0.3
    ).start()
    try:
        before = threading.active_count()
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        for client in silent:
            client.settimeout(5)
            assert client.recv(1) == b""  # closed by the server, not by the test's timeout
            client.close()
        deadline = time.monotonic() + 5
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= before
        # And it still answers.
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.0 200")
    finally:
        server.close()
