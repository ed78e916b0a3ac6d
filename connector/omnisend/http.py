"""One HTTP setup for every call to Omnisend: the sink's requests, the credential checks of
`/readyz` and `check`, and `reconcile`'s listing all go the same way.

- Proxies come from `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` (either case), skipped for the
  hosts `NO_PROXY` names, the way curl and Python read them. Behind an egress proxy the
  credential check and the sync use the same route, so a pod is never ready while its
  requests cannot get out.
- The CA bundle is `SSL_CERT_FILE` (or `SSL_CERT_DIR`) when set, else certifi's.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx

from connector.omnisend.transport import SinkTransport


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> httpx.Proxy | None:
    """The proxy that `url` goes through (None: directly)."""
    env = os.environ if environ is None else environ
    # Upper case first, so that the lower-case name wins where both are set (as curl does).
    names = sorted((n for n in env if n.lower().endswith("_proxy") and env[n]), key=str.islower)
    proxies = {name[: -len("_proxy")].lower(): env[name] for name in names}
    host = urlsplit(url).hostname or ""
    no_proxy = proxies.pop("no", "")
    if no_proxy and _bypassed(host, urlsplit(url).port, no_proxy):
        return None
    scheme = urlsplit(url).scheme
    chosen = proxies.get(scheme) or proxies.get("all")
    return httpx.Proxy(chosen) if chosen else None


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """NO_PROXY as curl reads it: `*`, host names and domain suffixes (with or without a leading
    dot), each optionally with a port."""
    host = host.lower()
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        name, _, entry_port = entry.partition(":")
        name = name.lstrip(".")
        if not name or (entry_port and port is not None and entry_port != str(port)):
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


def ssl_context() -> ssl.SSLContext:
    """Certificates to trust: SSL_CERT_FILE / SSL_CERT_DIR when set, else certifi's."""
    return httpx.create_ssl_context(trust_env=True)


def sink_transport(url: str, limits: httpx.Limits) -> SinkTransport:
    """The sink's transport for requests to `url`."""
    return SinkTransport(limits, proxy=proxy_for(url), verify=ssl_context())


def client(url: str, timeout_s: float) -> httpx.Client:
    """A blocking client for occasional requests to `url` (credential checks, `check`)."""
    transport = httpx.HTTPTransport(proxy=proxy_for(url), verify=ssl_context())
    return httpx.Client(transport=transport, timeout=httpx.Timeout(timeout_s))


def async_client(url: str, timeout_s: float) -> httpx.AsyncClient:
    """An async client for requests to `url` outside the sink (reconcile's listing)."""
    transport = httpx.AsyncHTTPTransport(proxy=proxy_for(url), verify=ssl_context())
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(timeout_s))
