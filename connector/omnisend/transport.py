"""The HTTP transport of the sink: httpx's own, with a cheaper liveness check of idle connections.

Before every request httpcore's connection pool asks each pooled connection whether it expired,
and for an idle one whether its socket became readable (the server closed it). With the anyio
backend that question builds anyio's whole table of socket attributes, `getpeername` included,
every time: with 16 pooled connections a fifth of the sink's CPU went there (encode/httpx#3215,
encode/httpcore#928). Here each connection looks its socket up once and the check is one
`poll`. Everything else is httpx's transport unchanged: timeouts, errors, TLS, limits, proxies.
"""

from __future__ import annotations

import select
import socket
import ssl
import typing

import httpcore
import httpx


class SocketCheckingBackend(httpcore.AsyncNetworkBackend):
    """Wraps a network backend; its streams answer `is_readable` from a socket looked up once."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return SocketCheckingStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return SocketCheckingStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class SocketCheckingStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return SocketCheckingStream(tls)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            return is_readable(self._socket)
        return self._inner.get_extra_info(info)


def is_readable(sock: socket.socket | None) -> bool:
    """Whether `sock` has data (or end of file) to read now; what httpcore checks, minus the
    attribute lookups. Without a socket, say readable: the pool then drops the connection."""
    if sock is None or sock.fileno() == -1:
        return True
    if not hasattr(select, "poll"):  # Windows
        return bool(select.select([sock], [], [], 0)[0])
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class SinkTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (direct or through `proxy`) with `SocketCheckingBackend` under its
    connection pool."""

    def __init__(
        self,
        limits: httpx.Limits,
        proxy: httpx.Proxy | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        super().__init__(limits=limits, proxy=proxy, verify=verify)
        # httpx builds its pool without a way to choose the network backend: wrap the one it
        # chose (the pool passes it to every connection, tunnelled through a proxy or not).
        pool = self._pool
        pool._network_backend = SocketCheckingBackend(pool._network_backend)
