"""A small forward proxy for tests: HTTP CONNECT tunnels to the hosts it knows. It resolves
names from its own table, so a host only it knows is reachable through it and nowhere else,
like Omnisend from a pod behind an egress proxy."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ConnectProxy:
    def __init__(self, hosts: dict[str, tuple[str, int]]) -> None:
        self.hosts = hosts  # name -> the address it stands for
        self.tunnels: list[str] = []  # every CONNECT target asked for, host:port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = threading.Event()

    def start(self) -> ConnectProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            self.tunnels.append(target)
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or host not in self.hosts:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            address = self.hosts[host]
            try:
                upstream = socket.create_connection((address[0], int(port or address[1])), 5)
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with upstream:
                _pipe(client, upstream)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    def copy(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    other = threading.Thread(target=copy, args=(b, a), daemon=True)
    other.start()
    copy(a, b)
    other.join()


@contextmanager
def connect_proxy(hosts: dict[str, tuple[str, int]]) -> Iterator[ConnectProxy]:
    proxy = ConnectProxy(hosts).start()
    try:
        yield proxy
    finally:
        proxy.close()
