"""HTTP adapter for the simulator: a threading HTTP/1.1 server with keep-alive, plus the
inspection API under `/_sim/`."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from connector.core.clock import Clock, SystemClock
from connector.simulator.app import Simulator
from connector.simulator.config import SimulatorConfig
from connector.simulator.messages import Request, Response
from connector.simulator.wire import render

INSPECTION_PREFIX = "/_sim/"
# How often the serving loop checks for shutdown; the stdlib's 0.5 s makes every stop slow.
_SHUTDOWN_POLL_S = 0.05
# How often the background worker applies the operations that fell due.
_ADVANCE_EVERY_S = 0.01


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm and the
        # client's delayed ACK hold every response for ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the simulator's record of requests is its inspection API."""

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=url.path,
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        if url.path.startswith(INSPECTION_PREFIX):
            response = self._inspect(request)
        elif url.path == "/api" or url.path.startswith("/api/"):
            response = self.server.simulator.handle(request)
        else:
            response = Response(404, {"title": "Not found", "status": 404, "detail": "Use /api/"})
        self._send(response)

    def _inspect(self, request: Request) -> Response:
        sim = self.server.simulator
        name = request.path.removeprefix(INSPECTION_PREFIX).rstrip("/")

        def reset() -> dict[str, str]:
            sim.reset()
            return {"status": "reset"}

        views: dict[tuple[str, str], Callable[[], Any]] = {
            ("GET", "state"): sim.state,
            ("GET", "stats"): sim.stats,
            ("GET", "requests"): lambda: {"requests": sim.request_times()},
            ("GET", "health"): lambda: {"status": "ok"},
            ("POST", "reset"): reset,
            ("POST", "faults"): lambda: {
                "faults": {
                    name: sorted(value) if isinstance(value, frozenset) else value
                    for name, value in vars(
                        sim.set_faults(json.loads(request.body or b"{}"))
                    ).items()
                }
            },
        }
        view = views.get((request.method, name))
        if view is None:
            return Response(404, {"title": "Not found", "status": 404, "detail": f"no {name}"})
        try:
            return Response(200, view())
        except (ValueError, TypeError) as exc:
            return Response(400, {"title": "Bad request", "status": 400, "detail": str(exc)})

    def _send(self, response: Response) -> None:
        if response.delay_s > 0:
            time.sleep(response.delay_s)
        if response.drop:
            self.close_connection = True
            return
        content_type, payload = render(response.status, response.body, response.garble)
        self.send_response(response.status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if response.drip_s > 0 and payload:
            self._drip(payload, response.drip_s)
        else:
            self.wfile.write(payload)

    def _drip(self, payload: bytes, seconds: float) -> None:
        """A byte at a time, spread over `seconds`: each read the client makes gets something
        soon, so only a deadline on the whole answer notices."""
        pause = seconds / len(payload)
        try:
            for index in range(len(payload)):
                self.wfile.write(payload[index : index + 1])
                self.wfile.flush()
                time.sleep(pause)
        except OSError:  # the client gave up waiting
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A burst of connections from benchmarks must not be refused by a short accept queue.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        super().__init__(address, _Handler)
        self.simulator = simulator


class SimulatorServer:
    """A running simulator. `api_url` ends in `/api`, ready for `OMNISEND_BASE_URL`."""

    def __init__(
        self,
        config: SimulatorConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.simulator = Simulator(config, clock or SystemClock())
        self._server = _Server((host, port), self.simulator)
        if tls is not None:  # HTTPS, e.g. to rehearse behind a proxy with a private CA
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.host, self.port = host, int(self._server.server_address[1])
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://{self.host}:{self.port}"
        self.api_url = f"{self.url}/api"
        self.simulator.base_url = self.api_url
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._worker = threading.Thread(target=self._advance, name="omnisend-sim-due", daemon=True)

    def start(self) -> SimulatorServer:
        """Serve from a background thread."""
        self._worker.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(_SHUTDOWN_POLL_S,),
            name="omnisend-sim",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._worker.start()
        self._server.serve_forever(_SHUTDOWN_POLL_S)

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._worker.is_alive():
            self._worker.join(timeout=5)

    def _advance(self) -> None:
        """Apply operations as they fall due, a chunk per hold of the simulator's lock."""
        while not self._closing.wait(_ADVANCE_EVERY_S):
            while self.simulator.advance_due() and not self._closing.is_set():
                pass

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
