"""The simulator as an httpx transport, without a socket: the dry run's in-memory Omnisend, and
the tests' fast one. Answer faults behave as over a socket: a lost answer is a reset connection
after the request was carried out, a slow answer takes its time (the client's own deadline
decides), a garbled one arrives garbled."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl

import httpx

from connector.simulator.app import Simulator
from connector.simulator.messages import Request
from connector.simulator.wire import render


class SimulatorTransport(httpx.AsyncBaseTransport):
    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        answer = self.simulator.handle(
            Request(
                method=request.method,
                path=request.url.path,
                query=dict(parse_qsl(request.url.query.decode(), keep_blank_values=True)),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        if answer.delay_s + answer.drip_s > 0:
            await asyncio.sleep(answer.delay_s + answer.drip_s)
        if answer.drop:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        content_type, payload = render(answer.status, answer.body, answer.garble)
        headers = {"Content-Type": content_type} if content_type else {}
        return httpx.Response(answer.status, content=payload, headers=headers)
