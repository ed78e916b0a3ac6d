"""Is this API key accepted? One cheap authenticated request through the Omnisend client (so
through its error translation and the one HTTP setup), for `/readyz` and `check`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from connector.errors import Fatal, Retriable
from connector.omnisend.client import OmnisendClient, Rejected
from connector.omnisend.http import async_client


@dataclass(frozen=True)
class Verdict:
    """`ok` True: accepted; False: refused (401, 403, 410), a human must act; None: no verdict
    (Omnisend unreachable, throttled or failing: ask again later)."""

    ok: bool | None
    detail: str


def verify_credentials(base_url: str, api_key: str, timeout_s: float = 10.0) -> Verdict:
    """`GET /contacts?limit=1` with the key (reads only: the `contacts.write` scope shows at the
    first write)."""

    async def call() -> None:
        async with async_client(base_url, timeout_s) as http:
            await OmnisendClient(http, api_key, base_url, deadline_s=timeout_s).check_credentials()

    try:
        asyncio.run(call())
    except Fatal as exc:
        return Verdict(False, str(exc))
    except (Retriable, Rejected) as exc:
        return Verdict(None, str(exc))
    return Verdict(True, "accepted")
