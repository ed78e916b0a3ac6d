"""How a sink's requests go out: within the brand's budget (`connector.omnisend.budget`) and a
number of concurrent request slots, each as a task of its own on the sink's loop, with a
back-off after transient failures. What to send, and what an answer means, is the sink's.

A request's budget slot counts from its answer (`observe`, called by the client as the answer
arrives), or from when its task ended without one; a task that fails in a way no request
should (a bug) stops the connector through `fail` rather than dying silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from connector.core.clock import Clock
from connector.core.errors import Crashed, Fatal, Retriable
from connector.metrics import Metrics
from connector.omnisend.answers import UnexpectedAnswer
from connector.omnisend.budget import Budget, Request, Slot
from connector.omnisend.client import RateLimited

log = structlog.get_logger("connector.sink")

# The budget slot of the request the current task makes (a task makes one request).
_SLOT: contextvars.ContextVar[Slot | None] = contextvars.ContextVar("budget_slot", default=None)
# Concurrent request slots only tag calls may use (see `Sender.room`).
TAG_CALL_SLOTS = 2
# How often the budget gauges are refreshed.
REPORT_EVERY_S = 1.0


@dataclass
class Backoff:
    until: float = 0.0
    failures: int = 0

    def failed(self, now: float, base: float, cap: float) -> None:
        self.failures += 1
        # The exponent stops growing long before the cap: past about 1,000 failures in a row
        # (a long outage), 2.0 ** n no longer fits a float and the sink died of it.
        delay = min(cap, base * 2.0 ** min(self.failures - 1, 60))
        self.until = now + delay * (0.5 + random.random())

    def succeeded(self) -> None:
        self.failures = 0


@dataclass(frozen=True)
class SenderConfig:
    max_concurrent_requests: int = 16
    retry_base_s: float = 0.5  # back-off after 5xx or timeouts, doubled each time, jittered
    retry_max_s: float = 30.0


class Sender:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        budget: Budget,
        clock: Clock,
        metrics: Metrics,
        connection: str,
        config: SenderConfig,
        fail: Callable[[Fatal], bool],
        poke: Callable[[], None],
    ) -> None:
        """`fail(exc)` ends the sync for `exc` (False: it had ended already); `poke()` wakes
        the sink's loop."""
        self.budget = budget
        self.clock = clock
        self.config = config
        self.backoff = Backoff()
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop = loop
        self._metrics = metrics
        self._connection = connection
        self._fail = fail
        self._poke = poke
        self._limited_at: float | None = None
        self._report_at = 0.0

    def room(self, tag_call: bool = False) -> bool:
        """Whether another request may start. Tag calls bound a sync, so the last
        `TAG_CALL_SLOTS` request slots are theirs: a burst of batches and status reads never
        keeps a tag call waiting that the budget would let out."""
        limit = self.config.max_concurrent_requests
        if not tag_call:
            limit = max(1, limit - TAG_CALL_SLOTS)
        return len(self.tasks) < limit

    def wait(self, now: float, request: Request) -> float:
        """Seconds until the budget lets `request` go (0: now)."""
        return self.budget.wait(now, request.tag_call, full=request.full, read=request.read)

    def spawn(self, coro: Coroutine[Any, Any, None], now: float, request: Request) -> None:
        """Run one request; called right after `wait` allowed it: takes its budget slot."""
        context = contextvars.copy_context()
        slot = self.budget.take(now, request.tag_call, full=request.full, read=request.read)
        context.run(_SLOT.set, slot)
        task = self._loop.create_task(self._guard(coro), context=context)
        self.tasks.add(task)
        task.add_done_callback(lambda done: self._ended(done, coro, slot))

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def stop(self) -> None:
        """Cancel every request and wait for them to end."""
        self.cancel_all()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _ended(self, task: asyncio.Task[None], coro: Coroutine[Any, Any, None], slot: Slot) -> None:
        """Whatever ended the task, even a cancel before it began (a reset): its budget slot
        counts as answered and its request is closed, so neither waits forever."""
        Budget.answered(slot, self.clock.now())
        coro.close()
        self.tasks.discard(task)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Fatal as exc:
            self._fail(exc)
            log.error("omnisend_fatal", error=str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Stop first, then say why: saying it may fail too (a closed stderr).
            crash = Crashed(f"an Omnisend request failed unexpectedly: {type(exc).__name__}: {exc}")
            if self._fail(crash):
                with contextlib.suppress(Exception):
                    log.exception("sink_task_failed")
        finally:
            Budget.answered(_SLOT.get(), self.clock.now())  # no answer (cancelled): from now
            # Gone from the tasks before the loop wakes (from Python 3.12 the loop may resume
            # before the task's done callbacks run): its slot is free and idleness is seen.
            self.tasks.discard(asyncio.current_task())
            self._poke()

    # ---- answers -----------------------------------------------------------------------------

    def observe(self, endpoint: str, status: str, seconds: float) -> None:
        """Called by the client as an answer arrives (or a request fails)."""
        # The answer is here: its slot counts from now, not from when the task is done with it.
        Budget.answered(_SLOT.get(), self.clock.now())
        self._metrics.requests.labels(self._connection, endpoint, status).inc()
        self._metrics.request_seconds.labels(self._connection, endpoint).observe(seconds)

    def transient(self, exc: Retriable, now: float) -> None:
        """A failure that may pass: a 429 holds the brand's budget, anything else backs off."""
        if isinstance(exc, RateLimited):
            self.budget.rate_limited(now, exc.retry_after_s)
            self._metrics.rate_limited.labels(self._connection).inc()
            if exc.clamped_from is not None:
                self._metrics.retry_after_clamped.labels(self._connection).inc()
                log.warning(
                    "retry_after_clamped", answered=exc.clamped_from, waiting_s=exc.retry_after_s
                )
            return
        self.backoff.failed(now, self.config.retry_base_s, self.config.retry_max_s)
        if isinstance(exc, UnexpectedAnswer):
            self.count_unexpected(exc)
        else:
            backoff_s = round(self.backoff.until - now, 3)
            log.warning("omnisend_retry", error=str(exc), backoff_s=backoff_s)

    def count_unexpected(self, exc: UnexpectedAnswer) -> None:
        self._metrics.unexpected_answers.labels(self._connection, exc.endpoint).inc()
        log.warning(
            "omnisend_unexpected_answer",
            endpoint=exc.endpoint,
            status=exc.status,
            content_type=exc.content_type,
            why=exc.why,
        )

    def account_wait(self, now: float, limited: bool) -> None:
        """Time between two dispatches counts as waiting when the first was held back; the
        budget gauges are refreshed every `REPORT_EVERY_S`."""
        if self._limited_at is not None:
            self._metrics.rate_limit_wait.labels(self._connection).inc(now - self._limited_at)
        self._limited_at = now if limited else None
        if now >= self._report_at:
            self._report_at = now + REPORT_EVERY_S
            used_all, used_tags = self.budget.used(now)
            limit_all, limit_tags = self.budget.limits()
            m, c = self._metrics, self._connection
            m.budget_used.labels(c, "all").set(used_all)
            m.budget_used.labels(c, "tags").set(used_tags)
            m.budget_limit.labels(c, "all").set(limit_all)
            m.budget_limit.labels(c, "tags").set(limit_tags)
            m.budget_share.labels(c).set(self.budget.share)
