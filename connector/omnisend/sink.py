"""The Omnisend sink: turns changes into batch upserts and tag calls, as fast as the brand's
budget allows, and reports each record's fate.

It runs its own asyncio loop in a thread, so many requests are in flight at once while the Kafka
loop keeps polling. The Kafka side talks to it through three thread-safe calls: `submit` (new
changes), `take_outcomes` (records whose fate is known) and `drain` (finish what was submitted,
within a deadline). Nothing here blocks the caller for longer than a queue operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import structlog

from connector.clock import Clock
from connector.coalesce import Coalescer, Outcome, TagIntent, UpsertIntent
from connector.errors import Fatal, Retriable
from connector.events import ContactChange
from connector.mapping import contact_request
from connector.metrics import Metrics
from connector.omnisend.budget import Budget, Slot
from connector.omnisend.client import OmnisendClient, RateLimited, Rejected, describe_problem
from connector.omnisend.transport import SinkTransport

log = structlog.get_logger("connector.sink")

# Batch item codes worth another try: timeouts, throttling, server trouble; older API versions
# also used 403 for throttling inside batches.
RETRY_ITEM_CODES = frozenset({403, 408, 429})
# With this many batches due for a status check, one `GET /batches` (newest first, up to 250)
# answers for all of them instead of one `GET /batches/{id}` each.
LIST_POLL_MIN_BATCHES = 2
LIST_POLL_LIMIT = 250
# Requests a batch costs: its POST, about one status read, and a margin so that batches use no
# more than 80 % of the budget left after tag calls.
UPSERT_REQUEST_COST = 2.5
# The budget slot of the request the current task makes (a task makes one request).
_SLOT: contextvars.ContextVar[Slot | None] = contextvars.ContextVar("budget_slot", default=None)
# Concurrent request slots only tag calls may use (see `OmnisendSink._room`).
TAG_CALL_SLOTS = 2
# How often the budget and in-flight gauges are refreshed.
REPORT_EVERY_S = 1.0


@dataclass(frozen=True)
class SinkConfig:
    batch_size: int = 100  # Omnisend's maximum items per batch
    tag_batch_size: int = 250  # Omnisend's maximum emails per tag call
    # How long a change may wait for more to share its request. Under load requests fill up
    # long before; in a trickle this is the latency it costs.
    upsert_linger_s: float = 0.3
    tag_linger_s: float = 0.5
    max_batches_in_flight: int = 50
    max_concurrent_requests: int = 16
    # First guess of a batch's processing time, until one was observed. Low on purpose: a few
    # early status reads cost less than tag calls that wait for a late one.
    first_poll_s: float = 0.25
    max_poll_interval_s: float = 10.0
    max_item_attempts: int = 6
    settle_s: float = 2.0  # an opposite tag operation waits this long after the earlier one
    retry_base_s: float = 0.5  # back-off after 5xx or timeouts, doubled each time, jittered
    retry_max_s: float = 30.0
    tick_s: float = 0.02  # re-check timers at least this often
    # Unsent work at which the Kafka side pauses: 50 full batches, 60 full tag calls. The Kafka
    # side resumes at half of it, and refilling (resume, fetch, decode, upsert, poll) must finish
    # before the half that is left has gone out; more only competes for the CPU, which the sink
    # needs to keep requests going out on time.
    saturation_upserts: int = 5000
    saturation_tags: int = 15000
    # Omnisend recommends 10 s for synchronous calls; connecting should be quick.
    request_timeout_s: float = 10.0


@dataclass(eq=False)
class InFlightBatch:
    batch_id: str
    intents: dict[str, UpsertIntent]
    sent_at: float
    next_poll_at: float
    polls: int = 0
    need_items: bool = False
    busy: bool = False
    unlisted: bool = False  # not on the newest page of the batch list: poll by id


@dataclass
class _Backoff:
    until: float = 0.0
    failures: int = 0

    def failed(self, now: float, base: float, cap: float) -> None:
        self.failures += 1
        delay = min(cap, base * 2 ** (self.failures - 1))
        self.until = now + delay * (0.5 + random.random())

    def succeeded(self) -> None:
        self.failures = 0


class OmnisendSink:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        budget: Budget,
        clock: Clock,
        metrics: Metrics,
        connection: str = "default",
        config: SinkConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config or SinkConfig()
        self.budget = budget
        self.clock = clock
        self.metrics = metrics
        self.connection = connection
        self._api_key, self._base_url, self._transport = api_key, base_url, transport
        self._inbox: queue.SimpleQueue[list[ContactChange]] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[list[Outcome]] = queue.SimpleQueue()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, name=f"omnisend-sink-{connection}", daemon=True
        )
        self._idle = threading.Event()
        self._idle.set()
        self._flushing = False
        self._stopping = False
        self.fatal: Fatal | None = None
        self._coalescer = Coalescer(settle_s=self.config.settle_s)
        self._batches: dict[str, InFlightBatch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._backoff = _Backoff()
        self._batch_seconds = self.config.first_poll_s
        self._next_list_at = 0.0
        self._limited_at: float | None = None
        self._report_at = 0.0
        self._generation = 0
        self._wake: asyncio.Event | None = None
        self._wake_at = 0.0  # when the budget lets the next held-back request go
        # Called on the sink's thread with the end-to-end latencies of accepted tag changes.
        self.on_accepted: Callable[[list[float]], None] | None = None

    # ---- the Kafka side (any thread) ---------------------------------------------------------

    def start(self) -> OmnisendSink:
        self._thread.start()
        return self

    def submit(self, changes: list[ContactChange]) -> None:
        if changes:
            self._idle.clear()
            self._inbox.put(changes)
            self._call(self._poke)

    def take_outcomes(self) -> list[Outcome]:
        out: list[Outcome] = []
        while True:
            try:
                out.extend(self._outbox.get_nowait())
            except queue.Empty:
                return out

    def drain(self, timeout_s: float) -> bool:
        """Send everything submitted without lingering; True if all of it finished in time."""
        self.flush(True)
        try:
            return self.wait_idle(timeout_s)
        finally:
            self.flush(False)

    def flush(self, on: bool) -> None:
        """While on, partial batches and tag calls go out at once instead of lingering."""
        self._flushing = on
        if on:
            self._call(self._poke)

    def wait_idle(self, timeout_s: float) -> bool:
        """Whether everything submitted finished within `timeout_s`."""
        return self._idle.wait(timeout_s)

    def reset(self) -> None:
        """Forget every unfinished change (after a rebalance); late answers are ignored."""
        done = threading.Event()

        def do_reset() -> None:
            self._generation += 1
            # What this process knows of Omnisend's contacts goes too: while the partitions
            # are elsewhere, another member may write the same contacts, and a stale "already
            # has these fields" would skip a needed upsert (found by the rebalance test).
            self._coalescer = Coalescer(settle_s=self.config.settle_s)
            self._batches.clear()
            self._count_batches()
            while not self._inbox.empty():
                self._inbox.get_nowait()
            self._idle.set()
            done.set()

        self._call(do_reset)
        done.wait(5.0)

    def stop(self) -> None:
        self._stopping = True
        self._call(self._poke)
        self._thread.join(timeout=10)

    def saturated(self, fraction: float = 1.0) -> bool:
        """Whether enough unsent work waits that reading more would only cost CPU (which the
        sink's own thread needs) without sending anything sooner. Safe from any thread: it reads
        two sizes."""
        c = self._coalescer
        upserts = len(c.upserts) >= self.config.saturation_upserts * fraction
        return upserts or c.ready_count >= self.config.saturation_tags * fraction

    def _call(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to do
            self._loop.call_soon_threadsafe(fn)

    # ---- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except Exception as exc:
            log.exception("sink_crashed")
            self.fatal = Fatal(
                f"the Omnisend sink stopped unexpectedly: {type(exc).__name__}: {exc}"
            )
        finally:
            self._loop.close()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        limits = httpx.Limits(
            max_connections=self.config.max_concurrent_requests,
            max_keepalive_connections=self.config.max_concurrent_requests,
        )
        timeout = httpx.Timeout(
            self.config.request_timeout_s, connect=min(5.0, self.config.request_timeout_s)
        )
        transport = self._transport or SinkTransport(limits)
        async with httpx.AsyncClient(timeout=timeout, transport=transport) as http:
            self._client = OmnisendClient(
                http, self._api_key, self._base_url, observe=self._observe
            )
            while not self._stopping and self.fatal is None:
                self._ingest()
                self._dispatch()
                self._publish()
                self._wake.clear()
                sleep_s = min(self.config.tick_s, max(0.0, self._wake_at - self.clock.now()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), sleep_s)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _ingest(self) -> None:
        now = self.clock.now()
        while True:
            try:
                changes = self._inbox.get_nowait()
            except queue.Empty:
                return
            for change in changes:
                self._coalescer.add(change, now)

    def _publish(self) -> None:
        outcomes = self._coalescer.drain_outcomes()
        if outcomes:
            self._outbox.put(outcomes)
        if self._coalescer.idle and not self._tasks and self._inbox.empty():
            self._idle.set()

    def _may_send(self, now: float, tag_call: bool) -> bool:
        """Whether the budget lets a request go now. If not, the loop wakes when it will: a
        freed place in the window is used at once, not at the next tick."""
        wait = self.budget.wait(now, tag_call)
        if wait > 0:
            self._wake_at = min(self._wake_at, now + wait)
        return wait == 0

    def _spawn(self, coro: Coroutine[Any, Any, None], now: float, tag_call: bool = False) -> None:
        """Run one request; called right after `_may_send` allowed it: takes its budget slot."""
        context = contextvars.copy_context()
        context.run(_SLOT.set, self.budget.take(now, tag_call))
        task = self._loop.create_task(self._guard(coro, self._generation), context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Coroutine[Any, Any, None], generation: int) -> None:
        try:
            await coro
        except Fatal as exc:
            if generation == self._generation:
                self.fatal = exc
                log.error("omnisend_fatal", error=str(exc))
        finally:
            Budget.answered(_SLOT.get(), self.clock.now())  # no answer (cancelled): from now
            self._poke()

    # ---- scheduling --------------------------------------------------------------------------

    def _count_batches(self) -> None:
        """The gauge follows every change: batches may finish within one report interval."""
        self.metrics.batches_in_flight.labels(self.connection).set(len(self._batches))

    def _room(self, tag_call: bool = False) -> bool:
        """Whether another request may start. Tag calls bound a sync, so the last
        `TAG_CALL_SLOTS` request slots are theirs: a burst of batches and status reads never
        keeps a tag call waiting that the budget would let out."""
        limit = self.config.max_concurrent_requests
        if not tag_call:
            limit = max(1, limit - TAG_CALL_SLOTS)
        return len(self._tasks) < limit

    def _dispatch(self) -> None:
        now = self.clock.now()
        self._wake_at = now + self.config.tick_s
        if now < self._backoff.until:
            self._account_wait(now, limited=False)
            return
        waits = self.budget.waits
        self._dispatch_polls(now)
        self._dispatch_tags(now)
        self._dispatch_upserts(now)
        self._account_wait(now, limited=self.budget.waits != waits)

    def _account_wait(self, now: float, limited: bool) -> None:
        """Time between two dispatches counts as waiting when the first was held back."""
        if self._limited_at is not None:
            self.metrics.rate_limit_wait.labels(self.connection).inc(now - self._limited_at)
        self._limited_at = now if limited else None
        if now >= self._report_at:
            self._report_at = now + REPORT_EVERY_S
            used_all, used_tags = self.budget.used(now)
            limit_all, limit_tags = self.budget.limits()
            m, c = self.metrics, self.connection
            m.budget_used.labels(c, "all").set(used_all)
            m.budget_used.labels(c, "tags").set(used_tags)
            m.budget_limit.labels(c, "all").set(limit_all)
            m.budget_limit.labels(c, "tags").set(limit_tags)
            m.budget_share.labels(c).set(self.budget.share)

    def _dispatch_polls(self, now: float) -> None:
        """Item reads first (they unblock tag calls). Then status: while several batches are
        in flight, one list call answers for all of them, at most every half batch duration;
        a lone batch, or one that fell off the list's newest page, is read by its id."""
        idle = [b for b in self._batches.values() if not b.busy]
        for batch in [b for b in idle if b.need_items and b.next_poll_at <= now]:
            if not self._room() or not self._may_send(now, tag_call=False):
                return
            batch.busy = True
            self._spawn(self._items(batch), now)
        pending = [b for b in idle if not b.need_items]
        listable = [b for b in pending if not b.unlisted]
        by_id = [b for b in pending if b.unlisted or len(listable) < LIST_POLL_MIN_BATCHES]
        list_due = len(listable) >= LIST_POLL_MIN_BATCHES and now >= self._next_list_at
        if list_due and self._room() and any(b.next_poll_at <= now for b in listable):
            if not self._may_send(now, tag_call=False):
                return
            for batch in listable:
                batch.busy = True
            self._next_list_at = now + max(self.config.tick_s, 0.5 * self._batch_seconds)
            self._spawn(self._list(listable), now)
        for batch in by_id:
            if batch.next_poll_at > now:
                continue
            if not self._room() or not self._may_send(now, tag_call=False):
                return
            batch.busy = True
            self._spawn(self._poll(batch), now)

    def _dispatch_tags(self, now: float) -> None:
        size, linger = self.config.tag_batch_size, self.config.tag_linger_s
        # Oldest first: under load every group fills its calls anyway, and serving the group
        # that waited longest lets committed offsets advance (the fullest-first order starved
        # small groups, holding the commit of the records before them for the whole sync).
        groups = sorted(self._coalescer.ready_groups(), key=lambda g: g[2])
        for group, count, since in groups:
            if not self._room(tag_call=True):
                return
            if count < size and now - since < linger and not self._flushing:
                continue
            # Ask first: taking a call's intents and putting them back costs a millisecond
            # and sends them to the back of their group.
            if not self._may_send(now, tag_call=True):
                return
            intents = self._coalescer.take_tags(group, size, now)
            if not intents:
                continue
            self._spawn(self._change_tags(group[0], group[1], intents), now, tag_call=True)

    def _upsert_linger(self) -> float:
        """How long a partial batch may wait to fill: the configured linger, but never so short
        that batches (each a request plus about one status read) outrun the budget for them."""
        all_limit, tag_limit = self.budget.limits()
        per_batch = (
            UPSERT_REQUEST_COST * self.budget.config.window_s / max(1, all_limit - tag_limit)
        )
        return max(self.config.upsert_linger_s, per_batch)

    def _dispatch_upserts(self, now: float) -> None:
        c, size = self._coalescer, self.config.batch_size
        linger = self._upsert_linger()
        while c.upserts and self._room() and len(self._batches) < self.config.max_batches_in_flight:
            oldest = next(iter(c.upserts.values())).since
            if len(c.upserts) < size and now - oldest < linger and not self._flushing:
                return
            if not self._may_send(now, tag_call=False):
                return
            intents = c.take_upserts(size)
            if not intents:
                return
            self._spawn(self._create_batch(intents), now)

    # ---- requests ----------------------------------------------------------------------------

    async def _create_batch(self, intents: list[UpsertIntent]) -> None:
        generation = self._generation
        items = [contact_request(i.email, i.fields) for i in intents]
        try:
            batch_id = await self._client.create_batch(items)
        except (Retriable, Rejected) as exc:
            if generation == self._generation:
                self._create_failed(intents, exc)
            return
        if generation != self._generation:
            return
        now = self.clock.now()
        self._backoff.succeeded()
        self._batches[batch_id] = InFlightBatch(
            batch_id, {i.email: i for i in intents}, now, now + self._batch_seconds
        )
        self._count_batches()

    def _create_failed(self, intents: list[UpsertIntent], exc: Exception) -> None:
        now = self.clock.now()
        if isinstance(exc, Rejected):
            # The batch as a whole was refused: no item of it can be accepted as it is.
            for intent in intents:
                self._coalescer.upsert_failed(intent.email, "rejected_by_omnisend", exc.detail, now)
            return
        self._transient(exc, now)
        self._coalescer.untake_upserts(intents)

    async def _read_batch(
        self, batch: InFlightBatch, read: Callable[[str], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any] | None:
        """One read about `batch`; None when it failed (handled here) or came too late."""
        generation = self._generation
        try:
            info = await read(batch.batch_id)
        except (Retriable, Rejected) as exc:
            if generation == self._generation:
                self._poll_failed(batch, exc)
            return None
        return info if generation == self._generation else None

    async def _poll(self, batch: InFlightBatch) -> None:
        info = await self._read_batch(batch, self._client.get_batch)
        if info is not None:
            self._on_status(batch, info, self.clock.now())

    async def _list(self, batches: list[InFlightBatch]) -> None:
        generation = self._generation
        try:
            # Ours are the newest unless other integrations create batches too: ask for a page
            # a little larger than what is in flight, not always the maximum.
            limit = min(LIST_POLL_LIMIT, max(20, 2 * len(self._batches)))
            listed = await self._client.list_batches(limit)
        except (Retriable, Rejected) as exc:
            if generation == self._generation:
                for batch in batches:
                    self._poll_failed(batch, exc)
            return
        if generation != self._generation:
            return
        now = self.clock.now()
        by_id = {b.get("batchID"): b for b in listed}
        for batch in batches:
            if batch.batch_id not in self._batches:
                continue
            info = by_id.get(batch.batch_id)
            if info is None:
                # Other integrations of the brand created so many batches since that ours fell
                # off the newest page: read this one by its id from now on.
                batch.busy, batch.unlisted, batch.next_poll_at = False, True, now
            else:
                self._on_status(batch, info, now)

    def _on_status(self, batch: InFlightBatch, info: dict[str, Any], now: float) -> None:
        batch.busy = False
        status = info.get("status")
        if status not in ("finished", "stopped"):
            expected = batch.sent_at + self._batch_seconds
            if now < expected:
                # Answered early because a list call covered it: wait for its own time.
                batch.next_poll_at = expected
                return
            batch.polls += 1
            delay = min(self.config.max_poll_interval_s, 0.1 * self._batch_seconds * 2**batch.polls)
            batch.next_poll_at = now + max(delay, self.config.tick_s)
            return
        self._learn_duration(info, now - batch.sent_at)
        if status == "finished" and not info.get("errorsCount"):
            self._settle_batch(batch, {}, set(batch.intents))
        else:
            batch.need_items, batch.next_poll_at = True, now

    async def _items(self, batch: InFlightBatch) -> None:
        info = await self._read_batch(batch, self._client.batch_items)
        if info is None:
            return
        ok: set[str] = set()
        errors: dict[str, tuple[int, str]] = {}
        for item in info.get("responses") or []:
            if (email := _item_email(item)) is not None:
                ok.add(email)
        for item in info.get("errors") or []:
            if (email := _item_email(item)) is not None:
                errors[email] = (int(item.get("responseCode") or 0), _item_detail(item))
        self._settle_batch(batch, errors, ok)

    def _settle_batch(
        self, batch: InFlightBatch, errors: dict[str, tuple[int, str]], ok: set[str]
    ) -> None:
        now = self.clock.now()
        del self._batches[batch.batch_id]
        self._count_batches()
        c, accepted = self._coalescer, 0
        for email, intent in batch.intents.items():
            if email in ok:
                c.upsert_accepted(email, now)
                accepted += 1
                continue
            code, detail = errors.get(email, (0, "not processed: the batch was stopped"))
            retry = code == 0 or code in RETRY_ITEM_CODES or code >= 500
            if not retry:
                c.upsert_failed(email, "rejected_by_omnisend", f"{code}: {detail}", now)
            elif intent.attempts + 1 >= self.config.max_item_attempts:
                c.upsert_failed(email, "omnisend_retries_exhausted", f"{code}: {detail}", now)
            else:
                c.upsert_retry(email)
        self.metrics.contacts_upserted.labels(self.connection).inc(accepted)

    def _poll_failed(self, batch: InFlightBatch, exc: Exception) -> None:
        now = self.clock.now()
        batch.busy = False
        if isinstance(exc, Rejected):
            # 404: the batch is gone (Omnisend keeps them 7 days); send its contacts again.
            self._settle_batch(batch, {}, set())
            return
        self._transient(exc, now)
        batch.next_poll_at = max(now + self.config.tick_s, self._backoff.until)

    async def _change_tags(self, add: bool, tag: str, intents: list[TagIntent]) -> None:
        generation = self._generation
        try:
            await self._client.change_tags(add, tag, [i.email for i in intents])
        except (Retriable, Rejected) as exc:
            if generation != self._generation:
                return
            if isinstance(exc, Rejected):
                self._coalescer.tags_failed(intents, "rejected_by_omnisend", exc.detail)
            else:
                self._transient(exc, self.clock.now())
                self._coalescer.tags_retry(intents, self.clock.now())
            return
        if generation != self._generation:
            return
        self._backoff.succeeded()
        now = self.clock.now()
        self._coalescer.tags_accepted(intents, now)
        operation = "add" if add else "remove"
        self.metrics.tags_changed.labels(self.connection, operation).inc(len(intents))
        # From the change to Omnisend's acceptance; clock skew must not make it negative.
        latencies = [max(0.0, now - i.occurred_at_ms / 1000) for i in intents]
        histogram = self.metrics.end_to_end_latency.labels(self.connection)
        for latency in latencies:
            histogram.observe(latency)
        if self.on_accepted is not None:
            self.on_accepted(latencies)

    # ---- helpers -----------------------------------------------------------------------------

    def _transient(self, exc: Exception, now: float) -> None:
        if isinstance(exc, RateLimited):
            self.budget.rate_limited(now, exc.retry_after_s)
            self.metrics.rate_limited.labels(self.connection).inc()
        else:
            self._backoff.failed(now, self.config.retry_base_s, self.config.retry_max_s)
            log.warning(
                "omnisend_retry", error=str(exc), backoff_s=round(self._backoff.until - now, 3)
            )

    def _learn_duration(self, info: dict[str, Any], observed_s: float) -> None:
        # An exponentially weighted mean of how long batches take, so the first poll of the
        # next batch comes when it is likely done rather than wasting budget on "pending".
        # Omnisend's own createdAt/endedAt say it exactly; our observation is an upper bound.
        server_s = _duration_s(info.get("createdAt"), info.get("endedAt"))
        sample = server_s * 1.05 if server_s is not None else observed_s * 0.9
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * max(sample, self.config.tick_s)

    def _observe(self, endpoint: str, status: str, seconds: float) -> None:
        # The answer is here: its slot counts from now, not from when the task is done with it.
        Budget.answered(_SLOT.get(), self.clock.now())
        self.metrics.requests.labels(self.connection, endpoint, status).inc()
        self.metrics.request_seconds.labels(self.connection, endpoint).observe(seconds)


def _duration_s(created: Any, ended: Any) -> float | None:
    try:
        start = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(ended).replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (end - start).total_seconds())


def _item_email(item: dict[str, Any]) -> str | None:
    try:
        for ident in item["request"]["identifiers"]:
            if ident.get("type") == "email":
                return str(ident["id"])
    except (KeyError, TypeError):
        return None
    return None


def _item_detail(item: dict[str, Any]) -> str:
    response = item.get("response")
    return describe_problem(response) if isinstance(response, dict) else ""
