"""The sink's HTTP/1.1 transport: httpx's interface on asyncio's own sockets, with h11 (httpx's
own HTTP/1.1 parser) reading and writing the messages.

httpx's default transport goes through httpcore's connection pool and anyio's streams, which
cost the sink about 1.2 ms of CPU per request (1.3-1.6 ms per tag call of 250 emails against
0.1 ms for the same exchange on a bare asyncio connection; `bench/cpu`, README "Benchmarks"):
at a few thousand requests a second that was a third of the connector's CPU. Here a connection
is an `asyncio.Protocol`, so a connection the server closed while it idled is known when the
close arrives, with no check of every pooled socket before every request.

What it does, and what it leaves to httpx: it opens plain or TLS connections (the TLS context
and `server_hostname` as httpx would), keeps up to `max_keepalive_connections` of them idle for
`keepalive_expiry` seconds, bounds open connections at `max_connections`, and honours the
request's connect, read, write and pool timeouts. Errors are httpx's own (`ConnectError` and
`ConnectTimeout` only where nothing was sent). Proxies are not its job: behind one the sink
uses httpx's transport (`connector.omnisend.http.sink_transport`). The body is handed to httpx
as a stream, read as the caller reads it, so the caller's size limit holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import typing
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import h11
import httpx

Origin = tuple[str, str, int]

# Bytes received and not yet read by the caller before the socket stops being read.
_READ_HIGH_WATER = 256 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
# The largest block of answer headers read (h11 stops at 16 kB by default; httpcore at 100 kB).
MAX_HEADER_BYTES = 100 * 1024


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: bytes arrive into `_buffer`; the caller feeds them to h11 as it
    reads, so a slow reader pauses the socket instead of growing the buffer."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        # Headers up to 100 kB, as httpcore reads them: a gateway's long ones are no error.
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.idle_since = 0.0
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._eof_fed = False
        self._lost: BaseException | None = None
        self._closed = False
        self._paused = False
        self._data: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    # ---- asyncio's side ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _READ_HIGH_WATER and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._lost = exc
        self._eof = True
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _wake(self) -> None:
        if self._data is not None and not self._data.done():
            self._data.set_result(None)

    # ---- the caller's side -------------------------------------------------------------------

    def reusable(self, now: float, expiry: float) -> bool:
        """Idle, open, and nothing arrived past the last answer or while idle (a server says
        nothing unasked): bytes left over would be read as the next request's answer."""
        return (
            not self._closed
            and not self._eof
            and not self._buffer
            and not self.h11.trailing_data[0]
            and self._transport is not None
            and not self._transport.is_closing()
            and now - self.idle_since < expiry
            and self.h11.our_state is h11.IDLE
        )

    def close(self) -> None:
        """At once: `close()` would keep the socket until what is queued for a peer that no
        longer reads has gone, with no time limit, outside the pool's count."""
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    async def write(self, data: bytes, timeout: float | None, request: httpx.Request) -> None:
        if self._closed or self._transport is None or self._transport.is_closing():
            raise httpx.WriteError("the connection closed", request=request)
        self._transport.write(data)
        drained = self._drained
        if drained is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(drained)
            except TimeoutError:
                raise httpx.WriteTimeout("writing the request timed out", request=request) from None

    async def next_event(self, timeout: float | None, request: httpx.Request) -> Any:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc), request=request) from None
            if event is not h11.NEED_DATA:
                return event
            if self._buffer:
                data = bytes(self._buffer)
                self._buffer.clear()
                if self._paused and self._transport is not None:
                    self._paused = False
                    self._transport.resume_reading()
                self.h11.receive_data(data)
            elif self._eof:
                if self._lost is not None:
                    raise httpx.ReadError(f"the connection broke: {self._lost}", request=request)
                if self._eof_fed:  # h11 wants more after the end: it is not coming
                    raise httpx.RemoteProtocolError(
                        "the server closed the connection", request=request
                    )
                self._eof_fed = True
                self.h11.receive_data(b"")
            else:
                self._data = asyncio.get_running_loop().create_future()
                try:
                    async with asyncio.timeout(timeout):
                        await self._data
                except TimeoutError:
                    raise httpx.ReadTimeout("no answer in time", request=request) from None
                finally:
                    self._data = None


def _broken(message: str, request: httpx.Request) -> NoReturn:
    raise httpx.RemoteProtocolError(message, request=request)


class _Body(httpx.AsyncByteStream):
    """The answer's body, read from the connection as the caller iterates; the connection goes
    back to the pool once the whole answer was read, and is closed otherwise."""

    def __init__(
        self, pool: WireTransport, conn: _Connection, request: httpx.Request, timeout: float | None
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._request = request
        self._timeout = timeout
        self._done = False
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while not self._done:
                event = await self._conn.next_event(self._timeout, self._request)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._done = True
                else:  # ConnectionClosed before the end: h11 raises first; anything else is odd
                    _broken(f"unexpected {type(event).__name__} in a body", self._request)
        except BaseException:
            self._release(reuse=False)
            raise

    async def aclose(self) -> None:
        self._release(reuse=self._done)

    def _release(self, reuse: bool) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._conn, reuse)


class WireTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to any number of origins, without a proxy (see the module's docstring)."""

    def __init__(
        self,
        limits: httpx.Limits = httpx.Limits(max_connections=16, max_keepalive_connections=16),  # noqa: B008
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._max = limits.max_connections or 1_000_000
        self._keep = (
            self._max
            if limits.max_keepalive_connections is None
            else limits.max_keepalive_connections
        )
        self._expiry = 5.0 if limits.keepalive_expiry is None else limits.keepalive_expiry
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._open = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            if isinstance(self._verify, ssl.SSLContext):
                self._ssl = self._verify
            else:
                self._ssl = httpx.create_ssl_context(verify=self._verify)
        return self._ssl

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        origin = (url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme])
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        body = await request.aread()
        conn = await self._acquire(origin, timeouts, request)
        try:
            head = h11.Request(
                method=request.method,
                target=url.raw_path,
                headers=request.headers.raw,
            )
            data = conn.h11.send(head) or b""
            if body:
                data += conn.h11.send(h11.Data(data=body)) or b""
            data += conn.h11.send(h11.EndOfMessage()) or b""
            await conn.write(data, timeouts.get("write"), request)
            while True:
                event = await conn.next_event(timeouts.get("read"), request)
                if isinstance(event, h11.Response):
                    break
                if not isinstance(event, h11.InformationalResponse):
                    _broken("the server closed the connection without answering", request)
        except h11.LocalProtocolError as exc:  # a request h11 cannot write
            self.release(conn, reuse=False)
            raise httpx.LocalProtocolError(str(exc), request=request) from None
        except BaseException:
            self.release(conn, reuse=False)
            raise
        return httpx.Response(
            status_code=event.status_code,
            headers=event.headers.raw_items(),
            stream=_Body(self, conn, request, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": event.reason},
        )

    async def _acquire(
        self, origin: Origin, timeouts: dict[str, float | None], request: httpx.Request
    ) -> _Connection:
        """An idle live connection to `origin`, or a new one within `max_connections`, waiting
        at most the pool timeout in all."""
        conn = self._idle_to(origin)
        if conn is not None:
            return conn
        if self._open >= self._max and not self._close_one_idle():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    conn = await self._wait_for_room(origin)
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection in time", request=request) from None
            if conn is not None:
                return conn
        self._open += 1
        try:
            return await self._connect(origin, timeouts.get("connect"), request)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    def _idle_to(self, origin: Origin) -> _Connection | None:
        now = time.monotonic()
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if conn.reusable(now, self._expiry):
                return conn
            self._drop(conn)
        return None

    async def _wait_for_room(self, origin: Origin) -> _Connection | None:
        """Until a connection to `origin` is idle (returned) or one may be opened (None)."""
        while True:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                # Woken, then cancelled (a reset, a deadline) before it could use the room:
                # the next waiter gets it, or it would sleep while a connection idles.
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            conn = self._idle_to(origin)
            if conn is not None:
                return conn
            if self._open < self._max or self._close_one_idle():
                return None

    async def _connect(
        self, origin: Origin, timeout: float | None, request: httpx.Request
    ) -> _Connection:
        scheme, host, port = origin
        tls = self._tls() if scheme == "https" else None
        conn = _Connection(origin)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().create_connection(
                    lambda: conn,
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                    # The next address after 0.25 s (an IPv6 one that drops packets must not
                    # spend the whole connect timeout), as httpx's own transport does.
                    happy_eyeballs_delay=0.25,
                )
        except TimeoutError:
            conn.close()
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} timed out", request=request
            ) from None
        except (OSError, UnicodeError) as exc:  # refused, unreachable, no such name, TLS refused
            conn.close()
            raise httpx.ConnectError(
                f"connecting to {host}:{port}: {exc}", request=request
            ) from None
        return conn

    def release(self, conn: _Connection, reuse: bool) -> None:
        """A request is done with `conn`: keep it idle when it may serve another."""
        if reuse and not self._closed and self._idle_count < self._keep:
            with contextlib.suppress(h11.LocalProtocolError):
                if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
                    conn.h11.start_next_cycle()
            if conn.reusable(time.monotonic(), float("inf")):
                conn.idle_since = time.monotonic()
                self._idle.setdefault(conn.origin, []).append(conn)
                self._idle_count += 1
                self._wake_one()
                return
        self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._wake_one()

    def _close_one_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                self._idle_count -= 1
                self._drop(idle.pop(0))  # the oldest
                return True
        return False

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                self._drop(idle.pop())
        self._idle_count = 0
