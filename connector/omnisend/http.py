"""One HTTP setup for every call to Omnisend: the sink's requests, the credential checks of
`/readyz` and `check`, and `reconcile`'s listing all go the same way.

- Proxies come from `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` (either case), skipped for the
  hosts `NO_PROXY` names, the way curl and Python read them. Behind an egress proxy the
  credential check and the sync use the same route, so a pod is never ready while its
  requests cannot get out.
- The CA bundle is `SSL_CERT_FILE` (or `SSL_CERT_DIR`) when set, else certifi's.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx

from connector.omnisend.transport import SinkTransport
from connector.omnisend.wire import WireTransport


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> httpx.Proxy | None:
    """The proxy that `url` goes through (None: directly)."""
    env = os.environ if environ is None else environ
    # Upper case first, so that the lower-case name wins where both are set (as curl does).
    names = sorted((n for n in env if n.lower().endswith("_proxy") and env[n]), key=str.islower)
    proxies = {name[: -len("_proxy")].lower(): env[name] for name in names}
    parts = urlsplit(url)
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    no_proxy = proxies.pop("no", "")
    if no_proxy and _bypassed(parts.hostname or "", port, no_proxy):
        return None
    chosen = proxies.get(parts.scheme) or proxies.get("all")
    return httpx.Proxy(chosen) if chosen else None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """NO_PROXY as curl reads it: `*`, host names and domain suffixes (with or without a leading
    dot), IP addresses and CIDR ranges (IPv6 too, bracketed when a port follows), each
    optionally with a port."""
    host = host.lower().strip("[]")
    address = _ip(host)
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        name, entry_port = _name_and_port(entry)
        if not name or (entry_port is not None and entry_port != port):
            continue
        if address is not None:
            network = _network(name)
            if network is not None and address in network:
                return True
        else:
            name = name.lstrip(".")
            if host == name or host.endswith("." + name):
                return True
    return False


def _name_and_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [::1] or [::1]:8080
        name, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return name, int(port) if port.isdigit() else None
    if entry.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else None
    return entry, None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def ssl_context() -> ssl.SSLContext:
    """Certificates to trust: SSL_CERT_FILE / SSL_CERT_DIR when set, else certifi's. One
    context per setting, shared: building one costs about 30 ms of CPU (reading the CA
    bundle), which a process with 200 connections paid 400 times at start."""
    cert_file, cert_dir = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    return _ssl_context(cert_file, cert_dir, _changed_at(cert_file), _changed_at(cert_dir))


def _changed_at(path: str | None) -> int:
    """A rotated CA file (a Secret mounted again) gives a new context."""
    try:
        return os.stat(path).st_mtime_ns if path else 0
    except OSError:
        return 0


@functools.lru_cache(maxsize=8)
def _ssl_context(
    cert_file: str | None, cert_dir: str | None, file_at: int, dir_at: int
) -> ssl.SSLContext:
    return httpx.create_ssl_context(trust_env=True)


def sink_transport(url: str, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """The sink's transport for requests to `url`: its own lean one (`wire`) when requests go
    directly, httpx's through a proxy."""
    proxy = proxy_for(url)
    if proxy is None:
        return WireTransport(limits, verify=ssl_context())
    return SinkTransport(limits, proxy=proxy, verify=ssl_context())


def client(url: str, timeout_s: float) -> httpx.Client:
    """A blocking client for occasional requests to `url` (credential checks, `check`)."""
    transport = httpx.HTTPTransport(proxy=proxy_for(url), verify=ssl_context())
    return httpx.Client(transport=transport, timeout=httpx.Timeout(timeout_s))


def async_transport(url: str, pool: int = 10) -> httpx.AsyncBaseTransport:
    """An async transport for requests to `url` outside the sink (reconcile's listing,
    credential checks), with at most `pool` connections."""
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    return httpx.AsyncHTTPTransport(proxy=proxy_for(url), verify=ssl_context(), limits=limits)
