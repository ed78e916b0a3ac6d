"""One asyncio loop on one thread for every connection's sink, and one HTTP connection pool per
Omnisend host for all of them: a process serving 200 brands runs one thread and one pool, not
200 of each (each idle thread woke 50 times a second, and each pool built its own TLS state).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from connector.omnisend.http import sink_transport

# Connections of one shared pool: a sink's own limit (`max_concurrent_requests`) bounds what it
# sends; the pool bounds them together.
MAX_SHARED_CONNECTIONS = 32


class SinkLoop:
    def __init__(self, name: str = "omnisend-sinks", connections: int = 16) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._lock = threading.Lock()
        self._connections = max(1, min(MAX_SHARED_CONNECTIONS, connections))
        self._transports: dict[str, httpx.AsyncBaseTransport] = {}
        self._gates: dict[str, asyncio.Semaphore] = {}

    def start(self) -> SinkLoop:
        with self._lock:
            if not self._started:
                self._started = True
                self._thread.start()
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
        """Run `coro` on the loop (from any thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[[], object]) -> None:
        """Run `fn` on the loop soon (from any thread); nothing once the loop is closed."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(fn)

    def transport(self, url: str) -> tuple[httpx.AsyncBaseTransport, asyncio.Semaphore]:
        """The connection pool for requests to `url`'s host, shared (on the loop's thread),
        and the gate its requests pass, one per connection."""
        key = str(httpx.URL(url).copy_with(path="/", query=None, fragment=None))
        if key not in self._transports:
            limits = httpx.Limits(
                max_connections=self._connections, max_keepalive_connections=self._connections
            )
            self._transports[key] = sink_transport(url, limits)
            self._gates[key] = asyncio.Semaphore(self._connections)
        return self._transports[key], self._gates[key]

    async def _close_transports(self) -> None:
        for transport in self._transports.values():
            with contextlib.suppress(Exception):
                await transport.aclose()
        self._transports.clear()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close the pools and end the loop; its sinks stopped first."""
        if not self._started or self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.submit(self._close_transports()).result(timeout_s)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
