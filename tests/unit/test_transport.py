"""The sink's transport over real sockets: connections are reused while the server keeps them,
and one the server closed while idle is replaced, not used for the next request."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from connector.omnisend.transport import SinkTransport, SocketCheckingStream, is_readable

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@contextmanager
def server(close_after_response: bool) -> Iterator[tuple[str, list[int]]]:
    """An HTTP/1.1 server answering every request with 200; yields its URL and a list that
    counts requests per connection. It may close each connection after its first answer, as a
    server whose keep-alive ran out does (without saying so in the response)."""
    listener = socket.create_server(("127.0.0.1", 0))
    per_connection: list[int] = []

    def serve(conn: socket.socket) -> None:
        index = len(per_connection)
        per_connection.append(0)
        with conn:
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                per_connection[index] += 1
                conn.sendall(RESPONSE)
                if close_after_response:
                    return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/", per_connection
    finally:
        listener.close()


async def get_three(url: str) -> list[Any]:
    streams: list[Any] = []

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            streams.append(info["return_value"])

    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(transport=SinkTransport(limits)) as client:
        for _ in range(3):
            response = await client.get(url, extensions={"trace": trace})
            assert response.text == "ok"
            await asyncio.sleep(0.05)  # the server's close reaches us while the connection idles
    return streams


def test_a_live_idle_connection_is_reused() -> None:
    with server(close_after_response=False) as (url, per_connection):
        streams = asyncio.run(get_three(url))
    assert per_connection == [3]
    assert len(streams) == 1
    assert isinstance(streams[0], SocketCheckingStream)


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    with server(close_after_response=True) as (url, per_connection):
        streams = asyncio.run(get_three(url))
    assert per_connection == [1, 1, 1]
    assert len(streams) == 3


def test_readable_means_data_or_end_of_file_waiting() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert not is_readable(left)
        right.sendall(b"x")
        assert is_readable(left)
        left.recv(1)
        right.close()
        assert is_readable(left)  # end of file: the peer closed
    assert is_readable(None)
