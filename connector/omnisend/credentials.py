"""Is this API key accepted? One cheap authenticated request through the Omnisend client (so
through its error translation and the one HTTP setup), for `/readyz` and `check`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from connector.core.errors import Fatal, Retriable
from connector.omnisend.client import OmnisendClient, Rejected
from connector.omnisend.http import async_transport

# Credential checks in flight at once (and connections per Omnisend host for them).
CONCURRENT_CHECKS = 32


@dataclass(frozen=True)
class Verdict:
    """`ok` True: accepted; False: refused (401, 403, 410), a human must act; None: no verdict
    (Omnisend unreachable, throttled or failing: ask again later)."""

    ok: bool | None
    detail: str


def verify_credentials(base_url: str, api_key: str, timeout_s: float = 10.0) -> Verdict:
    """`GET /contacts?limit=1` with the key (reads only: the `contacts.write` scope shows at the
    first write)."""
    return verify_all({"": (base_url, api_key)}, timeout_s)[""]


def verify_all(
    connections: dict[str, tuple[str, str]], timeout_s: float = 10.0
) -> dict[str, Verdict]:
    """Every connection's key (name -> (base URL, key)) checked at once: one event loop, one
    client per base URL, at most `CONCURRENT_CHECKS` requests at a time. Two hundred brands
    take about as long as one."""

    async def all_of() -> list[Verdict]:
        urls = {url for url, _ in connections.values()}
        transports = {url: async_transport(url, pool=CONCURRENT_CHECKS) for url in urls}
        timeout = httpx.Timeout(timeout_s)
        gate = asyncio.Semaphore(CONCURRENT_CHECKS)

        async def one(url: str, key: str) -> Verdict:
            async with gate:
                client = OmnisendClient(
                    transports[url], key, url, deadline_s=timeout_s, timeout=timeout
                )
                try:
                    await client.check_credentials()
                except Fatal as exc:
                    return Verdict(False, str(exc))
                except (Retriable, Rejected) as exc:
                    return Verdict(None, str(exc))
                except Exception as exc:  # noqa: BLE001 - e.g. a key httpx cannot send
                    return Verdict(False, f"the key cannot be used: {type(exc).__name__}")
                return Verdict(True, "accepted")

        try:
            return await asyncio.gather(*(one(url, key) for url, key in connections.values()))
        finally:
            for transport in transports.values():
                await transport.aclose()

    return dict(zip(connections, asyncio.run(all_of()), strict=True))
