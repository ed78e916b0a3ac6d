"""The sink's own HTTP/1.1 transport over real sockets, against servers that misbehave: every
request ends in an answer or an httpx transport error (never a hang, never another exception),
a connection is reused only when the whole answer was read and the server kept it open, and no
failure leaks a connection slot (the next request still goes)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connector.core.errors import Retriable
from connector.omnisend.client import OmnisendClient
from connector.omnisend.wire import WireTransport

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# What a server may do with one request: the bytes it sends, then whether it closes.
BEHAVIOURS: dict[str, tuple[bytes, bool]] = {
    "ok": (OK, False),
    "ok-then-close": (OK, True),
    "ok-saying-close": (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        True,
    ),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\no\r\n1\r\nk\r\n0\r\n\r\n",
        False,
    ),
    "until-close": (b"HTTP/1.1 200 OK\r\n\r\nok", True),  # no length: the body ends at close
    "early-hints": (b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK, False),
    "close-unanswered": (b"", True),
    "half-head": (b"HTTP/1.1 200 OK\r\nContent-Le", True),
    "short-body": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", True),
    "garbage": (b"<html><body>502 Bad Gateway</body></html>\r\n\r\n", True),
    "bad-chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", True),
    "hang": (b"", False),  # reads the request and says nothing
    "gateway-html": (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n"
        b"<h1>502</h1>\n",
        False,
    ),
    # Bytes past the end of the answer: the connection must not serve another request (the
    # next would read them as its status line, or as its whole answer).
    "ok-trailing-crlf": (OK + b"\r\n", False),
    "ok-overlong": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + OK, False),
    "no-content-with-body": (b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok", False),
    # A gateway's long headers (past h11's default 16 kB, within httpcore's 100 kB).
    "long-headers": (
        b"HTTP/1.1 200 OK\r\nX-Trace: " + b"t" * 20_000 + b"\r\nContent-Length: 2\r\n\r\nok",
        False,
    ),
}
ANSWERED = {
    "ok",
    "ok-then-close",
    "ok-saying-close",
    "chunked",
    "until-close",
    "early-hints",
    "ok-trailing-crlf",
    "ok-overlong",
    "long-headers",
}


class Server:
    """Answers each request with the next behaviour of `script` (then "ok"), whatever the
    connection; counts connections and requests per connection."""

    def __init__(self, script: list[str], tls: ssl.SSLContext | None = None) -> None:
        self.script = list(script)
        self.per_connection: list[int] = []
        self._lock = threading.Lock()
        self._tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._held: list[socket.socket] = []

    def _next(self) -> str:
        with self._lock:
            return self.script.pop(0) if self.script else "ok"

    def _serve(self, conn: socket.socket) -> None:
        if self._tls is not None:
            try:
                conn = self._tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                conn.close()
                return
        with self._lock:
            index = len(self.per_connection)
            self.per_connection.append(0)
        with conn, contextlib.suppress(OSError):  # the client may leave at any time
            data = b""
            while not self._stop.is_set():
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                self.per_connection[index] += 1
                answer, close = BEHAVIOURS[self._next()]
                if answer:
                    conn.sendall(answer)
                elif not close:  # hang: keep the connection, answer nothing
                    self._held.append(conn)
                    self._stop.wait()
                    return
                if close:
                    conn.shutdown(socket.SHUT_RDWR)
                    return

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @contextmanager
    def running(self) -> Iterator[Server]:
        threading.Thread(target=self._accept, daemon=True).start()
        try:
            yield self
        finally:
            self._stop.set()
            self._listener.close()


def transport(connections: int = 2) -> WireTransport:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return WireTransport(limits)


async def get(client: httpx.AsyncClient, url: str) -> str:
    response = await client.post(url, json={"emails": ["a@example.com"]})
    return f"{response.status_code} {response.text}"


def test_a_live_idle_connection_is_reused_and_one_the_server_closed_is_replaced() -> None:
    async def three(url: str) -> list[str]:
        async with httpx.AsyncClient(transport=transport()) as client:
            answers = []
            for _ in range(3):
                answers.append(await get(client, url))
                await asyncio.sleep(0.05)  # the server's close reaches us while it idles
            return answers

    with Server([]).running() as server:
        assert asyncio.run(three(f"http://127.0.0.1:{server.port}/")) == ["200 ok"] * 3
    assert server.per_connection == [3]
    with Server(["ok-then-close"] * 3).running() as server:
        assert asyncio.run(three(f"http://127.0.0.1:{server.port}/")) == ["200 ok"] * 3
    assert server.per_connection == [1, 1, 1]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@example(script=["long-headers"], connections=1, concurrent=False)
@given(
    script=st.lists(st.sampled_from(sorted(BEHAVIOURS)), min_size=1, max_size=8),
    connections=st.integers(1, 3),
    concurrent=st.booleans(),
)
def test_every_request_ends_in_an_answer_or_a_transport_error(
    script: list[str], connections: int, concurrent: bool
) -> None:
    async def run(server: Server) -> tuple[list[str], str]:
        url = f"http://127.0.0.1:{server.port}/"
        timeout = httpx.Timeout(0.3)
        wire = transport(connections)
        async with httpx.AsyncClient(transport=wire, timeout=timeout) as client:

            async def one() -> str:
                try:
                    async with asyncio.timeout(5):  # a hang past the read timeout is a bug
                        return await get(client, url)
                except httpx.TransportError as exc:
                    return type(exc).__name__
                finally:
                    # A server closing a kept connection just as a request leaves on it is a
                    # race no client wins; here the close arrives first, as when it idles.
                    await asyncio.sleep(0.02)

            if concurrent:
                fates = list(await asyncio.gather(*(one() for _ in script)))
            else:
                fates = [await one() for _ in script]
            server.script.clear()
            # Whatever happened, no slot leaked: the next request goes and is answered.
            after = await get(client, url)
        return fates, after

    with Server(script).running() as server:
        fates, after = asyncio.run(run(server))
    assert after == "200 ok"
    assert len(fates) == len(script)
    if not concurrent:  # in order, each request meets its own behaviour
        for behaviour, fate in zip(script, fates, strict=True):
            if behaviour in ANSWERED:
                assert fate == "200 ok", (behaviour, fate)
            elif behaviour == "gateway-html":
                assert fate.startswith("502 "), fate
            elif behaviour == "no-content-with-body":
                assert fate == "204 ", fate
            else:
                assert fate.endswith(("Error", "Timeout")), (behaviour, fate)
    else:  # connections race for the script: each fate is still one of the expected kinds
        for fate in fates:
            assert (
                fate in ("200 ok", "204 ")
                or fate.startswith("502 ")
                or fate.endswith(("Error", "Timeout"))
            )
        assert sum(f == "200 ok" for f in fates) <= sum(b in ANSWERED for b in script) + 1


def test_a_cancelled_request_closes_its_connection_and_frees_its_slot() -> None:
    async def run(url: str) -> str:
        async with httpx.AsyncClient(transport=transport(connections=1)) as client:
            task = asyncio.ensure_future(get(client, url))
            await asyncio.sleep(0.2)  # the request is out; the server says nothing
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await get(client, url)  # the only slot is free again

    with Server(["hang"]).running() as server:
        assert asyncio.run(run(f"http://127.0.0.1:{server.port}/")) == "200 ok"
    assert server.per_connection == [1, 1]


def test_a_waiter_cancelled_as_it_is_woken_passes_the_connection_on() -> None:
    """Two requests wait for the only connection; the first is cancelled (a reset, a deadline)
    just as the connection frees: the second must get it, not sleep while it idles."""

    async def run(url: str) -> str:
        async with httpx.AsyncClient(transport=transport(connections=1)) as client:
            held = await client.send(client.build_request("GET", url), stream=True)
            first = asyncio.ensure_future(get(client, url))
            second = asyncio.ensure_future(get(client, url))
            await asyncio.sleep(0.1)  # both wait for the pool
            await held.aclose()  # wakes the first waiter...
            first.cancel()  # ...which is cancelled before it runs again
            with pytest.raises(asyncio.CancelledError):
                await first
            return await asyncio.wait_for(second, 3)

    with Server([]).running() as server:
        assert asyncio.run(run(f"http://127.0.0.1:{server.port}/")) == "200 ok"


def test_connections_stay_within_the_limit_under_a_burst() -> None:
    async def run(url: str) -> list[str]:
        async with httpx.AsyncClient(transport=transport(connections=2)) as client:
            return list(await asyncio.gather(*(get(client, url) for _ in range(20))))

    with Server([]).running() as server:
        assert asyncio.run(run(f"http://127.0.0.1:{server.port}/")) == ["200 ok"] * 20
    assert len(server.per_connection) <= 2
    assert sum(server.per_connection) == 20


def test_a_large_answer_is_read_as_a_stream_and_the_connection_then_dropped() -> None:
    """The caller stops reading past its limit: the rest is never buffered, the connection is
    closed rather than reused."""
    big = b"x" * 5_000_000
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    BEHAVIOURS["big"] = (answer, False)

    async def run(url: str) -> tuple[int, str]:
        async with httpx.AsyncClient(transport=transport(connections=1)) as client:
            read = 0
            async with client.stream("GET", url) as response:
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read > 100_000:
                        break
            return read, await get(client, url)

    try:
        with Server(["big"]).running() as server:
            read, after = asyncio.run(run(f"http://127.0.0.1:{server.port}/"))
    finally:
        del BEHAVIOURS["big"]
    assert 100_000 < read < len(big)
    assert after == "200 ok"
    assert server.per_connection == [1, 1]


def test_nothing_sent_where_no_connection_was_made() -> None:
    """Refused: `ConnectError`, which the client reports as not applied (safe to retry)."""
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]

    async def run() -> Retriable:
        async with transport() as wire:
            client = OmnisendClient(wire, "key", f"http://127.0.0.1:{port}/api")
            with pytest.raises(Retriable) as caught:
                await client.change_tags(True, "t", ["a@example.com"])
            return caught.value

    failure = asyncio.run(run())
    assert "ConnectError" in str(failure)
    assert failure.maybe_applied is False


def test_a_lost_answer_may_have_been_applied() -> None:
    async def run(url: str) -> Retriable:
        async with transport() as wire:
            client = OmnisendClient(wire, "key", url)
            with pytest.raises(Retriable) as caught:
                await client.change_tags(True, "t", ["a@example.com"])
            return caught.value

    with Server(["close-unanswered"]).running() as server:
        failure = asyncio.run(run(f"http://127.0.0.1:{server.port}/api"))
    assert failure.maybe_applied is True


def test_tls_with_the_given_ca_and_refused_with_another(tmp_path: Path) -> None:
    def certificate(name: str) -> tuple[Path, Path]:
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
                *("-addext", "subjectAltName=DNS:localhost"),
            ],
            check=True,
            capture_output=True,
        )
        return cert, key

    cert, key = certificate("server")
    other, _ = certificate("other")
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def run(url: str, ca: Path) -> str:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        trust = ssl.create_default_context(cafile=str(ca))
        async with httpx.AsyncClient(transport=WireTransport(limits, verify=trust)) as client:
            try:
                first = await get(client, url)
                return first + " / " + await get(client, url)
            except httpx.ConnectError as exc:
                return f"ConnectError: {exc}"

    with Server([], tls=served).running() as server:
        url = f"https://localhost:{server.port}/"
        assert asyncio.run(run(url, cert)) == "200 ok / 200 ok"
        refused = asyncio.run(run(url, other))
    assert refused.startswith("ConnectError")
    assert "CERTIFICATE_VERIFY_FAILED" in refused
    assert server.per_connection[0] == 2  # the TLS connection was kept and reused


def test_a_connection_given_up_on_is_closed_at_once_not_when_its_queue_drains() -> None:
    """A peer that stops reading: after the write timeout the socket stayed open (its 20 MB
    still queued) with no limit in time, outside the pool's count of connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()

    async def run() -> None:
        timeout = httpx.Timeout(5.0, write=0.2)
        async with httpx.AsyncClient(transport=transport(), timeout=timeout) as client:
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
            with pytest.raises(httpx.WriteTimeout):
                await client.post(url, content=b"x" * 20_000_000)

    asyncio.run(run())
    (peer,) = accepted
    peer.settimeout(5)
    received = 0
    try:
        while chunk := peer.recv(1 << 20):  # read now: a socket kept sends the rest
            received += len(chunk)
    except ConnectionResetError:
        pass  # closed at once
    finally:
        peer.close()
        listener.close()
    assert received < 20_000_000, "the whole body went after the client gave up on it"
