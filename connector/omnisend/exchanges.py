"""What a sink's requests are, and what their answers mean: a batch created, read by its
status or its items, listed with the brand's newest batches; tags added or removed. Each
answer is applied to the sink's state of the epoch (`SyncState`): contacts accepted, retried or
failed, halves of a request Omnisend refused as a whole queued to go first, a transient failure
handed to the sender's back-off. A reset cancels requests in flight (`Sender.cancel_all`), so
no answer reaches the state of a later epoch.

A batch that fails as a whole `WHOLE_FAILURES` times in a row (a 5xx, a reset, a firewall's
page: not a 429, which is the brand's budget) may be failing for one contact's values, which
would stop every upsert of the connection behind it. Its contacts then go in halves, each half
failing as often before it is halved again, down to the contact that fails alone: that one is
retried on its own every `retry_max_s` (isolated), never dead-lettered, since nothing proves it
wrong (in a brownout every request fails now and then). At most `MAX_SPLIT_GROUPS` groups and
`MAX_ISOLATED` contacts are set apart at a time, so a brownout leaves few small batches behind.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import structlog

from connector.core.clock import Clock
from connector.core.coalesce import Coalescer
from connector.core.errors import Retriable
from connector.core.intents import Key, TagIntent, UpsertIntent
from connector.metrics import Metrics
from connector.omnisend.answers import BatchStatus, UnexpectedAnswer
from connector.omnisend.batches import LIST_POLL_LIMIT, BatchTracker, InFlightBatch, TrackerConfig
from connector.omnisend.client import OmnisendClient, RateLimited, Rejected, contact_request
from connector.omnisend.sender import Sender

log = structlog.get_logger("connector.sink")

# Whole failures in a row of a group's batches before its contacts go in halves.
WHOLE_FAILURES = 3
MAX_SPLIT_GROUPS = 8  # groups of contacts sent apart while failing batches are narrowed down
MAX_ISOLATED = 10  # contacts retried alone, each every retry_max_s


class SyncState:
    """What a sink knows of its work in one epoch: the coalesced changes, the batches in flight,
    and halves of requests Omnisend refused as a whole, to send before anything new (their
    contacts stay in flight meanwhile). `reset` starts afresh."""

    def __init__(self, new_coalescer: Callable[[], Coalescer], tracker: TrackerConfig) -> None:
        self._new_coalescer = new_coalescer
        self._tracker = tracker
        self._start({})

    def reset(self, now: float) -> None:
        """Start afresh at `now`, owing only the waits of opposite tag calls."""
        self._start(self.coalescer.holds(now))

    def _start(self, holds: dict[Key, tuple[bool, float]]) -> None:
        self.coalescer = self._new_coalescer()
        self.coalescer.carry_holds(holds)
        self.batches = BatchTracker(self._tracker)
        self.splits: deque[list[UpsertIntent]] = deque()
        self.tag_splits: deque[tuple[bool, str, list[TagIntent]]] = deque()
        # Groups of contacts sent apart because their batches kept failing as a whole, each
        # contact's whole failures in a row, and the contacts retried alone (when next).
        self.failing: deque[list[UpsertIntent]] = deque()
        self.strikes: dict[str, int] = {}
        self.isolated: dict[str, tuple[UpsertIntent, float]] = {}


class Exchanges:
    def __init__(
        self,
        state: SyncState,
        client: OmnisendClient,
        sender: Sender,
        metrics: Metrics,
        connection: str,
        clock: Clock,
        on_accepted: Callable[[list[float]], None],
    ) -> None:
        """`on_accepted(latencies)`: the end-to-end latencies of tag changes Omnisend accepted."""
        self._state = state
        self._client = client
        self._sender = sender
        self._metrics = metrics
        self._connection = connection
        self._clock = clock
        self._on_accepted = on_accepted

    def count_batches(self) -> None:
        """The gauge follows every change: batches may finish within one report interval."""
        live = len(self._state.batches.live)
        self._metrics.batches_in_flight.labels(self._connection).set(live)

    async def create_batch(self, intents: list[UpsertIntent], apart: bool = False) -> None:
        """`apart`: a group of `SyncState.failing` or an isolated contact, not the queue's."""
        items = [contact_request(i.email, i.fields) for i in intents]
        try:
            batch_id = await self._client.create_batch(items)
            if self._state.batches.knows(batch_id):
                # Another batch's answer (a cache, a proxy): this one's id is unknown, so it is
                # as if its answer were lost, though the batch may exist.
                raise UnexpectedAnswer("batches.create", 201, "the id of a batch in flight")
        except (Retriable, Rejected) as exc:
            self._create_failed(intents, exc, apart)
            return
        self._sender.backoff.succeeded()
        if apart or self._state.strikes:
            self._through(intents)
        self._state.batches.add(batch_id, intents, self._clock.now())
        self.count_batches()

    def _create_failed(
        self, intents: list[UpsertIntent], exc: Retriable | Rejected, apart: bool
    ) -> None:
        now, state = self._clock.now(), self._state
        if isinstance(exc, Rejected):
            self._refused(intents, exc)
            return
        if exc.maybe_applied:
            # The batch may exist (its answer was lost): it may land after the contacts' next
            # upsert, so its fields are remembered until it must have landed.
            state.coalescer.haunt(intents, until=now + state.batches.deadline_s)
        isolated = apart and len(intents) == 1 and intents[0].email in state.isolated
        if isolated:
            state.isolated[intents[0].email] = (intents[0], now + self._sender.config.retry_max_s)
            if isinstance(exc, RateLimited):
                self._sender.transient(exc, now)  # the brand's budget holds for every request
            return  # else its own failure again: says nothing of Omnisend's health
        self._sender.transient(exc, now)
        if isinstance(exc, RateLimited) or not self._narrowed(intents, now):
            if apart:
                state.failing.append(intents)  # it goes on failing apart
            else:
                state.coalescer.untake_upserts(intents)

    def _narrowed(self, intents: list[UpsertIntent], now: float) -> bool:
        """Count a whole failure against each contact; once every one of them has failed
        `WHOLE_FAILURES` times in a row, halve the group (or isolate its lone contact) if there
        is room apart. True if it was."""
        strikes, state = self._state.strikes, self._state
        for intent in intents:
            strikes[intent.email] = strikes.get(intent.email, 0) + 1
        if min(strikes[i.email] for i in intents) < WHOLE_FAILURES:
            return False
        if len(intents) == 1:
            if len(state.isolated) >= MAX_ISOLATED:
                return False
            (intent,) = intents
            del strikes[intent.email]
            state.isolated[intent.email] = (intent, now + self._sender.config.retry_max_s)
            self.count_isolated()
            log.warning("contact_isolated", isolated=len(state.isolated))
            return True
        if len(state.failing) + 2 > MAX_SPLIT_GROUPS:
            return False
        for intent in intents:  # each half earns its own failures
            del strikes[intent.email]
        half = len(intents) // 2
        state.failing.extend((intents[:half], intents[half:]))
        self._metrics.batches_split.labels(self._connection).inc()
        log.warning("failing_batch_split", contacts=len(intents), failures=WHOLE_FAILURES)
        return True

    def _through(self, intents: list[UpsertIntent]) -> None:
        """Their batch was created: no failures in a row any more, none isolated."""
        state = self._state
        for intent in intents:
            state.strikes.pop(intent.email, None)
            if state.isolated.pop(intent.email, None) is not None:
                self.count_isolated()

    def count_isolated(self) -> None:
        self._metrics.contacts_isolated.labels(self._connection).set(len(self._state.isolated))

    def _refused(self, intents: list[UpsertIntent], exc: Rejected) -> None:
        """A batch refused as a whole (413, or a 400 for one item) is sent again in halves
        until the item it refuses is alone: only that one fails."""
        if len(intents) == 1:
            (intent,) = intents
            detail, now = f"{exc.status}: {exc.detail}", self._clock.now()
            self._state.coalescer.upsert_failed(intent.email, "rejected_by_omnisend", detail, now)
            return
        half = len(intents) // 2
        self._state.splits.extend((intents[:half], intents[half:]))
        self._metrics.batches_split.labels(self._connection).inc()
        log.warning("batch_refused_split", status=exc.status, contacts=len(intents))

    async def poll(self, batch: InFlightBatch) -> None:
        try:
            status = await self._client.get_batch(batch.batch_id)
            if status.batch_id != batch.batch_id:
                raise UnexpectedAnswer("batches.get", 200, "the status of another batch")
        except (Retriable, Rejected) as exc:
            self._read_failed([batch], exc)
            return
        self._on_status(batch, status, self._clock.now())

    async def read_list(self, batches: list[InFlightBatch]) -> None:
        try:
            # Ours are the newest unless other integrations create batches too: ask for a page
            # a little larger than what is in flight, not always the maximum.
            limit = min(LIST_POLL_LIMIT, max(20, 2 * len(self._state.batches.live)))
            listed = await self._client.list_batches(limit)
        except (Retriable, Rejected) as exc:
            self._read_failed(batches, exc, listed=True)
            return
        now = self._clock.now()
        by_id = {status.batch_id: status for status in listed}
        for batch in batches:
            if self._state.batches.knows(batch.batch_id):
                # Not on the newest page (other integrations created many batches since, or
                # its entry did not parse): read by its id from now on.
                self._on_status(batch, by_id.get(batch.batch_id), now)

    def _on_status(self, batch: InFlightBatch, status: BatchStatus | None, now: float) -> None:
        verdict = self._state.batches.on_status(batch, status, now)
        if verdict == "accepted":
            self._settle_batch(batch, list(batch.intents), [], {})
        elif verdict == "landed":
            self._state.batches.finish(batch)
            if batch.ghost is not None:
                self._state.coalescer.ghost_gone(batch.ghost, now)
            log.info("stuck_batch_landed", batch_id=batch.batch_id)

    async def items(self, batch: InFlightBatch) -> None:
        try:
            items = await self._client.batch_items(batch.batch_id)
        except (Retriable, Rejected) as exc:
            self._read_failed([batch], exc)
            return
        if not self._state.batches.knows(batch.batch_id):
            return
        if items.status.batch_id != batch.batch_id:
            why = "the items of another batch"
            self._read_failed([batch], UnexpectedAnswer("batches.items", 200, why))
            return
        if not items.status.ended:  # a lagging copy: its contacts must not go again yet
            self._state.batches.items_not_ended(batch, self._clock.now())
            return
        verdict = self._state.batches.sort_items(batch, items)
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
        now, c = self._clock.now(), self._state.coalescer
        self._state.batches.finish(batch)
        self.count_batches()
        ids = contact_ids or {}
        for email in accepted:
            c.upsert_accepted(email, now, ids.get(email))
        for email, (reason, detail) in failed.items():
            c.upsert_failed(email, reason, detail, now)
        for email in retry:
            c.upsert_retry(email)
        self._metrics.contacts_upserted.labels(self._connection).inc(len(accepted))

    def _read_failed(
        self, batches: list[InFlightBatch], exc: Retriable | Rejected, listed: bool = False
    ) -> None:
        """A status or items read failed: read that batch again later (its own backoff; a
        failing read holds nothing else back), never send its contacts again while it may
        still run (the deadline decides when it is stuck)."""
        now, refused = self._clock.now(), isinstance(exc, Rejected)
        if isinstance(exc, RateLimited):
            self._sender.transient(exc, now)  # the brand's budget: everything waits
        elif isinstance(exc, UnexpectedAnswer):
            self._sender.count_unexpected(exc)
        else:
            log.warning("batch_read_failed", error=str(exc), batches=len(batches))
        listed = listed and not isinstance(exc, RateLimited)  # says nothing of the list itself
        for batch in batches:
            self._state.batches.read_failed(batch, now, listed=listed, refused=refused)

    async def change_tags(self, add: bool, tag: str, intents: list[TagIntent]) -> None:
        try:
            await self._client.change_tags(add, tag, [i.email for i in intents])
        except (Retriable, Rejected) as exc:
            if isinstance(exc, Rejected):
                self._tags_refused(add, tag, intents, exc)
            else:
                now = self._clock.now()
                self._sender.transient(exc, now)
                self._state.coalescer.tags_retry(intents, now, maybe_applied=exc.maybe_applied)
            return
        self._sender.backoff.succeeded()
        now = self._clock.now()
        self._state.coalescer.tags_accepted(intents, now)
        operation = "add" if add else "remove"
        self._metrics.tags_changed.labels(self._connection, operation).inc(len(intents))
        # From the change to Omnisend's acceptance; clock skew must not make it negative.
        latencies = [max(0.0, now - i.occurred_at_ms / 1000) for i in intents]
        self._metrics.end_to_end_latency.observe_many(self._connection, latencies)
        self._on_accepted(latencies)

    def _tags_refused(self, add: bool, tag: str, intents: list[TagIntent], exc: Rejected) -> None:
        """A tag call refused as a whole goes again in halves until the email it refuses is
        alone: only that record fails."""
        if len(intents) == 1:
            detail = f"{exc.status}: {exc.detail}"
            self._state.coalescer.tags_failed(intents, "rejected_by_omnisend", detail)
            return
        half = len(intents) // 2
        self._state.tag_splits.extend(((add, tag, intents[:half]), (add, tag, intents[half:])))
        self._metrics.tag_calls_split.labels(self._connection).inc()
        log.warning("tag_call_refused_split", status=exc.status, emails=len(intents))

    # ---- helpers -----------------------------------------------------------------------------
