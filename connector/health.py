"""The metrics port: `/metrics`, `/healthz` (the loop is alive) and `/readyz` (ready to work)."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from connector.core.errors import ConfigError

Check = Callable[[], tuple[bool, dict[str, Any]]]

# A client that connects and sends nothing (or half a request) is let go after this long: each
# holds a thread and a socket until then. Probes and scrapes send their request at once.
CLIENT_TIMEOUT_S = 5.0
# Clients served at once; more are closed at once (each holds a thread and a descriptor, which
# the pod also needs for its connections to Kafka and Omnisend).
MAX_CLIENTS = 32


class _Deadline(io.RawIOBase):
    """A socket read only until `deadline` (monotonic): each read waits at most what is left."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        # The whole request within the timeout, not each read: a client dripping a byte at a
        # time would pass any per-read timeout. One request per connection (HTTP/1.0).
        deadline = time.monotonic() + self.server.client_timeout
        self.rfile = io.BufferedReader(_Deadline(self.connection, deadline))

    def do_GET(self) -> None:
        self.connection.settimeout(self.server.client_timeout)  # the answer's, after the reads
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            ok, detail = (self.server.health if path == "/healthz" else self.server.ready)()
            body = json.dumps({"status": "ok" if ok else "fail", **detail}).encode()
            self._send(200 if ok else 503, body, "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would drown the logs."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64  # the listen backlog: past it a connecting probe waits a SYN retry
    block_on_close = False  # closing never waits for a client (each ends at its deadline)

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        health: Check,
        ready: Check,
        client_timeout: float,
        max_clients: int,
    ) -> None:
        super().__init__(address, _Handler)
        self.registry, self.health, self.ready = registry, health, ready
        self.client_timeout = client_timeout
        self._slots = threading.BoundedSemaphore(max_clients)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the cap: closed, no thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class HealthServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        health: Check,
        ready: Check,
        host: str,
        port: int,
        client_timeout_s: float = CLIENT_TIMEOUT_S,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        try:
            self._server = _Server(
                (host, port), registry, health, ready, client_timeout_s, max_clients
            )
        except OSError as exc:
            raise ConfigError(
                f"METRICS_PORT {port} on {host or '*'}: {exc.strerror or exc} "
                "(another process holds it, or the address is not this machine's)"
            ) from None
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="metrics", daemon=True
        )

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
