"""The Omnisend sink: turns changes into batch upserts and tag calls, as fast as the brand's
budget allows, and reports each record's fate.

It runs on an asyncio loop in a thread of its own or shared with the process's other
connections (`connector.omnisend.loop`), so many requests are in flight at once while the Kafka
loop keeps polling. The Kafka side talks to it through three thread-safe calls: `submit` (new
changes), `take_outcomes` (records whose fate is known) and `drain` (finish what was submitted,
within a deadline). Nothing here blocks the caller for longer than a queue operation.

Every request's answer arrives typed (`connector.omnisend.answers`) or as an error that says what
to do; a task that fails any other way is a bug, and stops the connector (exit 1) rather than
leaving its records unfinished and its partition's commits pinned.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import structlog

from connector.core.clock import Clock
from connector.core.coalesce import Coalescer, Outcome, TagIntent, UpsertIntent
from connector.core.errors import Crashed, Fatal, Retriable
from connector.core.events import ContactChange
from connector.core.mapping import contact_request
from connector.metrics import Metrics
from connector.omnisend.answers import BatchStatus, UnexpectedAnswer
from connector.omnisend.batches import (
    LIST_POLL_LIMIT,
    BatchTracker,
    InFlightBatch,
    TrackerConfig,
)
from connector.omnisend.budget import Budget, Request
from connector.omnisend.client import OmnisendClient, RateLimited, Rejected
from connector.omnisend.loop import SinkLoop
from connector.omnisend.sender import Sender, SenderConfig

log = structlog.get_logger("connector.sink")

# Requests a batch costs: its POST, about one status read, and a margin so that batches use no
# more than 80 % of the budget left after tag calls.
UPSERT_REQUEST_COST = 2.5
# The requests the sink makes, as the budget sees them: full ones go whenever the window has
# room, part-full ones are paced, reads have a reserve.
READ = Request(read=True)
BATCH, FULL_BATCH = Request(), Request(full=True)
TAGS, FULL_TAGS = Request(tag_call=True), Request(tag_call=True, full=True)
# How long a sink with nothing to do sleeps unless woken (new work and shares wake it): its
# gauges are refreshed this often while idle.
QUIET_WAKE_S = 5.0
# How often ghosts (upserts of unknown fate) are looked at for expiry.
GHOST_CHECK_S = 1.0


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
    # A batch Omnisend has not finished after this long is stuck: its contacts go again (and
    # it is still watched, in case it lands later over newer fields).
    batch_deadline_s: float = 600.0
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
    # The exports whose changes this connection receives (the parts an upsert may carry).
    exports: tuple[int, ...] = (0,)
    # What the coalescer remembers between changes (see `connector.core.recent` for the cost).
    known_cache_size: int = 1_000_000
    applied_cache_size: int = 1_000_000

    def tracker(self) -> TrackerConfig:
        return TrackerConfig(
            first_poll_s=self.first_poll_s,
            max_poll_interval_s=self.max_poll_interval_s,
            tick_s=self.tick_s,
            deadline_s=self.batch_deadline_s,
            stuck_poll_s=min(60.0, self.batch_deadline_s),
            max_item_attempts=self.max_item_attempts,
            retry_base_s=self.retry_base_s,
        )


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
        loop: SinkLoop | None = None,
    ) -> None:
        self.config = config or SinkConfig()
        self.budget = budget
        self.clock = clock
        self.metrics = metrics
        self.connection = connection
        self._api_key, self._base_url, self._transport = api_key, base_url, transport
        # Both ways, work is stamped with the epoch it belongs to: `reset` starts a new one, and
        # what belongs to an older epoch is dropped wherever it is met, so no reset can lose
        # changes submitted after it, nor deliver outcomes of records forgotten before it.
        self._inbox: queue.SimpleQueue[tuple[int, list[ContactChange]]] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[tuple[int, list[Outcome]]] = queue.SimpleQueue()
        self._epoch = 0  # the Kafka side's; the loop's is `_generation`, which follows it
        # The loop it runs on: shared by every connection of the process, or its own.
        self._owns_loop = loop is None
        self._shared = loop or SinkLoop(
            f"omnisend-sink-{connection}", connections=self.config.max_concurrent_requests
        )
        self._loop = self._shared.loop
        self._running: concurrent.futures.Future[None] | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._flushing = False
        self._stopping = False
        self.fatal: Fatal | None = None
        self._coalescer = self._new_coalescer()
        self._batches = BatchTracker(self.config.tracker())
        # Halves of a batch Omnisend refused as a whole, to send before anything new; their
        # contacts stay in flight meanwhile.
        self._splits: deque[list[UpsertIntent]] = deque()
        self._tag_splits: deque[tuple[bool, str, list[TagIntent]]] = deque()  # and of tag calls
        self._sender = Sender(
            self._loop,
            budget,
            clock,
            metrics,
            connection,
            SenderConfig(
                self.config.max_concurrent_requests,
                self.config.retry_base_s,
                self.config.retry_max_s,
            ),
            fail=self._fail,
            poke=self._poke,
        )
        self._generation = 0
        self._wake: asyncio.Event | None = None
        self._wake_at = 0.0  # the loop's next timer: a linger, a read, the budget, a back-off
        # Called on the sink's thread with the end-to-end latencies of accepted tag changes.
        self.on_accepted: Callable[[list[float]], None] | None = None

    def _new_coalescer(self) -> Coalescer:
        config = self.config
        return Coalescer(
            settle_s=config.settle_s,
            exports=config.exports,
            known_size=config.known_cache_size,
            applied_size=config.applied_cache_size,
        )

    # ---- the Kafka side (any thread) ---------------------------------------------------------

    def start(self) -> OmnisendSink:
        self._shared.start()
        self._running = self._shared.submit(self._run())
        return self

    def submit(self, changes: list[ContactChange], wake: bool = True) -> None:
        """Hand changes to the loop; `wake` False when the caller wakes it (one wake-up for
        every sink given work in one turn, not one each)."""
        if changes:
            # In this order: cleared first, the loop could find the inbox still empty and say
            # idle while these wait in it.
            self._inbox.put((self._epoch, changes))
            self._idle.clear()
            if wake:
                self._call(self._poke)

    def take_outcomes(self) -> list[Outcome]:
        if self._outbox.empty():
            return []  # most connections of a process serving many brands, most turns
        out: list[Outcome] = []
        while True:
            try:
                epoch, outcomes = self._outbox.get_nowait()
            except queue.Empty:
                return out
            if epoch == self._epoch:
                out.extend(outcomes)

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
        """Forget every unfinished change (after a rebalance); requests in flight are
        cancelled. Does not wait for the loop: changes submitted from now on belong to the new
        epoch."""
        self._epoch += 1
        epoch = self._epoch
        self._call(lambda: self._reset_to(epoch))

    def _reset_to(self, epoch: int) -> None:
        """On the loop: start `epoch`, unless it started already."""
        if self._generation >= epoch:
            return
        self._generation = epoch
        # What this process knows of Omnisend's contacts goes too: while the partitions are
        # elsewhere, another member may write the same contacts, and a stale "already has
        # these fields" would skip a needed upsert (found by the rebalance test).
        self._coalescer = self._new_coalescer()
        self._batches = BatchTracker(self.config.tracker())
        self._splits.clear()
        self._tag_splits.clear()
        self._count_batches()
        # Requests in flight belong to the old epoch: their answers must not reach the new
        # coalescer and tracker. Cancelled, they never do (an answer already in hand too: a
        # cancelled task's next step raises instead of resuming), so no handler checks.
        self._sender.cancel_all()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_soon()
        self.wait_stopped(timeout_s)

    def stop_soon(self) -> None:
        """Ask the loop to stop this sink (in-flight requests are cancelled); returns at once."""
        self._stopping = True
        self._call(self._poke)

    def wait_stopped(self, timeout_s: float) -> None:
        if self._running is not None:
            with contextlib.suppress(Exception):  # a crash is reported by `fatal`
                self._running.result(timeout=timeout_s)
        if self._owns_loop:
            self._shared.stop()

    @property
    def uncertain(self) -> int:
        """Upserts whose fate is still unknown and watched: stuck batches and lost answers."""
        return self._coalescer.ghosts

    def saturated(self, fraction: float = 1.0) -> bool:
        """Whether enough unsent work waits that reading more would only cost CPU (which the
        sink's own thread needs) without sending anything sooner. Safe from any thread: it reads
        two sizes."""
        c = self._coalescer
        upserts = len(c.upserts) >= self.config.saturation_upserts * fraction
        return upserts or c.ready_count >= self.config.saturation_tags * fraction

    def poke(self) -> None:
        """Look at the budget again now (its share changed), from any thread."""
        self._call(self._poke)

    def _call(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to do
            self._loop.call_soon_threadsafe(fn)

    # ---- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._main()
        except Exception as exc:
            log.exception("sink_crashed")
            self.fatal = Crashed(
                f"the Omnisend sink stopped unexpectedly: {type(exc).__name__}: {exc}"
            )

    def _fail(self, exc: Fatal) -> bool:
        """A request's task ended the sync: a `Fatal` answer always, a crash unless something
        ended it first. Whether `exc` is now the reason."""
        if isinstance(exc, Crashed) and self.fatal is not None:
            return False
        self.fatal = exc
        return True

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    poke_now = _poke  # on the loop's thread (`poke` from any other)

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        timeout = httpx.Timeout(
            self.config.request_timeout_s, connect=min(5.0, self.config.request_timeout_s)
        )
        # The pool of its loop for this host (shared by the process's sinks, and outliving
        # this client), or the transport it was given.
        own = self._transport
        transport, gate = (own, None) if own is not None else self._shared.transport(self._base_url)
        http = httpx.AsyncClient(timeout=timeout, transport=transport)
        try:
            self._client = OmnisendClient(
                http,
                self._api_key,
                self._base_url,
                observe=self._sender.observe,
                deadline_s=3 * self.config.request_timeout_s,
                gate=gate,
            )
            while not self._stopping and self.fatal is None:
                self._ingest()
                self._dispatch()
                self._publish()
                self._wake.clear()
                # Until the next timer, if any: an answer, new work or a new share wake it
                # sooner. Idle connections of a process serving many brands cost nothing.
                sleep_s = min(QUIET_WAKE_S, max(0.0, self._wake_at - self.clock.now()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), sleep_s)
        finally:
            await self._sender.stop()  # a crash too leaves nothing running on the loop
            if own is not None:
                await http.aclose()

    def _ingest(self) -> None:
        now = self.clock.now()
        while True:
            try:
                epoch, changes = self._inbox.get_nowait()
            except queue.Empty:
                return
            if epoch < self._generation:
                continue  # submitted before a reset: forgotten
            self._reset_to(epoch)  # submitted after a reset the loop has not met yet
            for change in changes:
                self._coalescer.add(change, now)

    def _publish(self) -> None:
        outcomes = self._coalescer.drain_outcomes()
        if outcomes:
            self._outbox.put((self._generation, outcomes))
        if self._coalescer.idle and not self._sender.tasks and self._inbox.empty():
            self._idle.set()

    def _may_send(self, now: float, request: Request) -> bool:
        """Whether the budget lets a request go now. If not, the loop wakes when it will: a
        freed place in the window is used at once, not at the next tick."""
        wait = self._sender.wait(now, request)
        if wait > 0:
            self._wake_by(now + wait)
        return wait == 0

    # ---- scheduling --------------------------------------------------------------------------

    def _count_batches(self) -> None:
        """The gauge follows every change: batches may finish within one report interval."""
        live = len(self._batches.live)
        self.metrics.batches_in_flight.labels(self.connection).set(live)

    def _dispatch(self) -> None:
        now = self.clock.now()
        self._wake_at = math.inf  # each part below says when it needs to look again
        self.budget.apply(now)  # a new share counts from its assignment, not the next request
        self._deadlines(now)
        sender = self._sender
        if now < sender.backoff.until:
            self._wake_by(sender.backoff.until)
            sender.account_wait(now, limited=False)
            return
        waits, spawned = self.budget.waits, len(sender.tasks)
        self._dispatch_polls(now)
        self._dispatch_tags(now)
        self._dispatch_upserts(now)
        if len(sender.tasks) != spawned:
            self._wake_by(now + self.config.tick_s)  # work flows: look again soon
        sender.account_wait(now, limited=self.budget.waits != waits)

    def _wake_by(self, at: float) -> None:
        self._wake_at = min(self._wake_at, at)

    def _deadlines(self, now: float) -> None:
        """Batches past the deadline go stuck (their contacts go again); stuck batches watched
        long enough, and ghosts of lost answers past their time, are given up on."""
        tracker, coalescer = self._batches, self._coalescer
        for batch in tracker.overdue(now):
            intents = list(batch.intents.values())
            ghost = coalescer.haunt(intents)
            tracker.mark_stuck(batch, ghost, now)
            for intent in intents:
                coalescer.upsert_retry(intent.email)
            self.metrics.batches_stuck.labels(self.connection).inc()
            log.warning(
                "batch_stuck",
                batch_id=batch.batch_id,
                age_s=round(now - batch.sent_at, 1),
                contacts=len(intents),
            )
            self._count_batches()
        for batch in tracker.given_up(now):
            if batch.ghost is not None:
                coalescer.ghost_gone(batch.ghost, now)
        if coalescer.ghosts:
            coalescer.expire_ghosts(now)
            self._wake_by(now + GHOST_CHECK_S)

    def _dispatch_polls(self, now: float) -> None:
        """Item reads first (they unblock tag calls), then status reads."""
        tracker = self._batches
        # A read not due yet wakes the loop when it is; one due and held back is woken by what
        # holds it: the budget (its wait), an answer (a free slot), the list read's turn.
        next_read = tracker.next_read_at()
        if next_read > now:
            self._wake_by(next_read)
        if tracker.next_list_at > now:
            self._wake_by(tracker.next_list_at)
        for batch in tracker.due_items(now):
            if not self._sender.room() or not self._may_send(now, READ):
                return
            batch.busy = True
            self._sender.spawn(self._items(batch), now, READ)
        listable, by_id = tracker.due_status(now)
        if listable and self._sender.room():
            if not self._may_send(now, READ):
                return
            for batch in listable:
                batch.busy = True
            tracker.listed(now)
            self._sender.spawn(self._list(listable), now, READ)
        for batch in by_id:
            if not self._sender.room() or not self._may_send(now, READ):
                return
            batch.busy = True
            self._sender.spawn(self._poll(batch), now, READ)

    def _dispatch_tags(self, now: float) -> None:
        while self._tag_splits and self._sender.room(tag_call=True):
            if not self._may_send(now, TAGS):
                return
            add, tag, intents = self._tag_splits.popleft()
            self._sender.spawn(self._change_tags(add, tag, intents), now, TAGS)
        size, linger = self.config.tag_batch_size, self.config.tag_linger_s
        # Oldest first: under load every group fills its calls anyway, and serving the group
        # that waited longest lets committed offsets advance (the fullest-first order starved
        # small groups, holding the commit of the records before them for the whole sync).
        groups = sorted(self._coalescer.ready_groups(), key=lambda g: g[2])
        for group, count, since in groups:
            if not self._sender.room(tag_call=True):
                return  # a call's answer wakes the loop
            if count < size and now - since < linger and not self._flushing:
                self._wake_by(since + linger)
                continue
            # Ask first: taking a call's intents and putting them back costs a millisecond
            # and sends them to the back of their group.
            # Full only if a whole call can be taken now: intents settling are not.
            full = count >= size and self._coalescer.tags_ready(group, size, now) == size
            request = FULL_TAGS if full else TAGS
            if not self._may_send(now, request):
                return
            intents = self._coalescer.take_tags(group, size, now)
            if not intents:
                # Held back while an opposite call settles: look again when the first may go.
                self._wake_by(max(self._coalescer.settled_at(group), now + self.config.tick_s))
                continue
            self._sender.spawn(self._change_tags(group[0], group[1], intents), now, request)

    def _upsert_linger(self) -> float:
        """How long a partial batch may wait to fill: the configured linger, but never so short
        that batches (each a request plus about one status read) outrun the budget for them."""
        all_limit, tag_limit = self.budget.limits()
        per_batch = (
            UPSERT_REQUEST_COST * self.budget.config.window_s / max(1, all_limit - tag_limit)
        )
        return max(self.config.upsert_linger_s, per_batch)

    def _batch_room(self) -> bool:
        return self._sender.room() and len(self._batches.live) < self.config.max_batches_in_flight

    def _dispatch_upserts(self, now: float) -> None:
        while self._splits and self._batch_room():
            if not self._may_send(now, BATCH):
                return
            self._sender.spawn(self._create_batch(self._splits.popleft()), now, BATCH)
        c, size = self._coalescer, self.config.batch_size
        linger = self._upsert_linger()
        while c.upserts and self._batch_room():
            oldest = next(iter(c.upserts.values())).since
            if len(c.upserts) < size and now - oldest < linger and not self._flushing:
                self._wake_by(oldest + linger)
                return
            # Full only if a whole batch can be taken now: emails still in a batch are not.
            full = len(c.upserts) >= size and c.upserts_ready(size) == size
            request = FULL_BATCH if full else BATCH
            if not self._may_send(now, request):
                return
            intents = c.take_upserts(size)
            if not intents:
                return  # every email still in a batch: its read's answer wakes the loop
            self._sender.spawn(self._create_batch(intents), now, request)

    # ---- requests ----------------------------------------------------------------------------

    async def _create_batch(self, intents: list[UpsertIntent]) -> None:
        items = [contact_request(i.email, i.fields) for i in intents]
        try:
            batch_id = await self._client.create_batch(items)
        except (Retriable, Rejected) as exc:
            self._create_failed(intents, exc)
            return
        self._sender.backoff.succeeded()
        self._batches.add(batch_id, intents, self.clock.now())
        self._count_batches()

    def _create_failed(self, intents: list[UpsertIntent], exc: Retriable | Rejected) -> None:
        now = self.clock.now()
        if isinstance(exc, Rejected):
            self._refused(intents, exc)
            return
        self._sender.transient(exc, now)
        if exc.maybe_applied:
            # The batch may exist (its answer was lost): it may land after the contacts' next
            # upsert, so its fields are remembered until it must have landed.
            self._coalescer.haunt(intents, until=now + self._batches.deadline_s)
        self._coalescer.untake_upserts(intents)

    def _refused(self, intents: list[UpsertIntent], exc: Rejected) -> None:
        """A batch refused as a whole (413, or a 400 for one item) is sent again in halves
        until the item it refuses is alone: only that one fails."""
        if len(intents) == 1:
            (intent,) = intents
            detail, now = f"{exc.status}: {exc.detail}", self.clock.now()
            self._coalescer.upsert_failed(intent.email, "rejected_by_omnisend", detail, now)
            return
        half = len(intents) // 2
        self._splits.extend((intents[:half], intents[half:]))
        self.metrics.batches_split.labels(self.connection).inc()
        log.warning("batch_refused_split", status=exc.status, contacts=len(intents))

    async def _poll(self, batch: InFlightBatch) -> None:
        try:
            status = await self._client.get_batch(batch.batch_id)
        except (Retriable, Rejected) as exc:
            self._read_failed([batch], exc)
            return
        self._on_status(batch, status, self.clock.now())

    async def _list(self, batches: list[InFlightBatch]) -> None:
        try:
            # Ours are the newest unless other integrations create batches too: ask for a page
            # a little larger than what is in flight, not always the maximum.
            limit = min(LIST_POLL_LIMIT, max(20, 2 * len(self._batches.live)))
            listed = await self._client.list_batches(limit)
        except (Retriable, Rejected) as exc:
            self._read_failed(batches, exc)
            return
        now = self.clock.now()
        by_id = {status.batch_id: status for status in listed}
        for batch in batches:
            if self._batches.tracked(batch):
                # Not on the newest page (other integrations created many batches since, or
                # its entry did not parse): read by its id from now on.
                self._on_status(batch, by_id.get(batch.batch_id), now)

    def _on_status(self, batch: InFlightBatch, status: BatchStatus | None, now: float) -> None:
        verdict = self._batches.on_status(batch, status, now)
        if verdict == "accepted":
            self._settle_batch(batch, list(batch.intents), [], {})
        elif verdict == "landed":
            self._batches.finish(batch)
            if batch.ghost is not None:
                self._coalescer.ghost_gone(batch.ghost, now)
            log.info("stuck_batch_landed", batch_id=batch.batch_id)

    async def _items(self, batch: InFlightBatch) -> None:
        try:
            items = await self._client.batch_items(batch.batch_id)
        except (Retriable, Rejected) as exc:
            self._read_failed([batch], exc)
            return
        if not self._batches.tracked(batch):
            return
        verdict = self._batches.sort_items(batch, items)
        self._settle_batch(
            batch, verdict.accepted, verdict.retry, verdict.failed, items.contact_ids
        )

    def _settle_batch(
        self,
        batch: InFlightBatch,
        accepted: list[str],
        retry: list[str],
        failed: dict[str, tuple[str, str]],
        contact_ids: dict[str, str] | None = None,
    ) -> None:
        now, c = self.clock.now(), self._coalescer
        self._batches.finish(batch)
        self._count_batches()
        ids = contact_ids or {}
        for email in accepted:
            c.upsert_accepted(email, now, ids.get(email))
        for email, (reason, detail) in failed.items():
            c.upsert_failed(email, reason, detail, now)
        for email in retry:
            c.upsert_retry(email)
        self.metrics.contacts_upserted.labels(self.connection).inc(len(accepted))

    def _read_failed(self, batches: list[InFlightBatch], exc: Retriable | Rejected) -> None:
        """A status or items read failed: read that batch again later (its own backoff; a
        failing read holds nothing else back), never send its contacts again while it may
        still run (the deadline decides when it is stuck)."""
        now = self.clock.now()
        if isinstance(exc, RateLimited):
            self._sender.transient(exc, now)  # the brand's budget: everything waits
        elif isinstance(exc, UnexpectedAnswer):
            self._sender.count_unexpected(exc)
        else:
            log.warning("batch_read_failed", error=str(exc), batches=len(batches))
        for batch in batches:
            self._batches.read_failed(batch, now)

    async def _change_tags(self, add: bool, tag: str, intents: list[TagIntent]) -> None:
        try:
            await self._client.change_tags(add, tag, [i.email for i in intents])
        except (Retriable, Rejected) as exc:
            if isinstance(exc, Rejected):
                self._tags_refused(add, tag, intents, exc)
            else:
                now = self.clock.now()
                self._sender.transient(exc, now)
                self._coalescer.tags_retry(intents, now, maybe_applied=exc.maybe_applied)
            return
        self._sender.backoff.succeeded()
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

    def _tags_refused(self, add: bool, tag: str, intents: list[TagIntent], exc: Rejected) -> None:
        """A tag call refused as a whole goes again in halves until the email it refuses is
        alone: only that record fails."""
        if len(intents) == 1:
            detail = f"{exc.status}: {exc.detail}"
            self._coalescer.tags_failed(intents, "rejected_by_omnisend", detail)
            return
        half = len(intents) // 2
        self._tag_splits.extend(((add, tag, intents[:half]), (add, tag, intents[half:])))
        self.metrics.tag_calls_split.labels(self.connection).inc()
        log.warning("tag_call_refused_split", status=exc.status, emails=len(intents))

    # ---- helpers -----------------------------------------------------------------------------
