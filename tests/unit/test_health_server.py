"""The metrics port against clients that do not behave: one that connects and never sends
must not hold a thread and a socket for ever (enough of them exhaust the pod's descriptors,
and with them the connections to Kafka and Omnisend)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from prometheus_client import CollectorRegistry

from connector.health import HealthServer


def healthz(port: int) -> bytes:
    """The start of the answer to a well-behaved probe."""
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        return client.recv(100)


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
        assert healthz(server.port).startswith(b"HTTP/1.0 200")  # and it still answers
    finally:
        server.close()


def test_connections_beyond_the_cap_are_closed_at_once_and_the_port_answers_after() -> None:
    """However many clients connect, at most `max_clients` hold a thread; the rest are closed
    at once (each would hold a thread and a descriptor: enough of them and the pod cannot
    open sockets to Kafka or Omnisend)."""
    ok: tuple[bool, dict[str, object]] = (True, {})
    server = HealthServer(
        CollectorRegistry(),
        lambda: ok,
        lambda: ok,
        "127.0.0.1",
        0,
        client_timeout_s=1.0,
        max_clients=4,
    ).start()
    try:
        before = threading.active_count()
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(30)]
        time.sleep(0.3)
        assert threading.active_count() <= before + 4
        closed_at_once = 0
        for client in silent:
            client.settimeout(0.05)
            with contextlib.suppress(TimeoutError):  # one of the four held, until its timeout
                closed_at_once += client.recv(1) == b""
        assert closed_at_once >= 26
        for client in silent:
            client.close()
        time.sleep(1.5)  # the held ones time out
        assert healthz(server.port).startswith(b"HTTP/1.0 200")
    finally:
        server.close()


def test_a_client_that_drips_its_request_is_let_go_at_the_deadline() -> None:
    """The timeout bounds the whole request, not each read: a byte every 0.2 s would pass
    any per-read timeout and, with 32 such clients, hold every slot for ever."""
    ok: tuple[bool, dict[str, object]] = (True, {})
    server = HealthServer(
        CollectorRegistry(), lambda: ok, lambda: ok, "127.0.0.1", 0, client_timeout_s=1.0
    ).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            started = time.monotonic()
            closed = False
            for byte in b"GET /healthz HTTP/1.0\r\nX-Slow: " + b"a" * 100:
                try:
                    client.sendall(bytes([byte]))
                except OSError:  # reset: the server closed it
                    closed = True
                    break
                time.sleep(0.2)
                client.settimeout(0.001)
                with contextlib.suppress(TimeoutError):
                    if client.recv(1) == b"":
                        closed = True
                        break
            assert closed
            assert time.monotonic() - started < 5  # sending it all would take 25 s
    finally:
        server.close()
