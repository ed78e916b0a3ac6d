"""What a sink's requests are, and what their answers mean: a batch created, read by its
status or its items, listed with the brand's newest batches; tags added or removed. Each
answer is applied to the sink's state of the epoch (`SyncState`): contacts accepted, retried or
failed, halves of a request Omnisend refused as a whole queued to go first, a transient failure
handed to the sender's back-off. A reset cancels requests in flight (`Sender.cancel_all`), so
no answer reaches the state of a later epoch.

Batches and tag calls that keep failing as a whole are set apart (`connector.omnisend.apart`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from connector.core.clock import Clock
from connector.core.coalesce import Coalescer
from connector.core.errors import Retriable
from connector.core.intents import Key, TagIntent, UpsertIntent
from connector.metrics import Metrics
from connector.omnisend.answers import BatchStatus, UnexpectedAnswer
from connector.omnisend.apart import WHOLE_FAILURES, Apart, Group
from connector.omnisend.batches import LIST_POLL_LIMIT, BatchTracker, InFlightBatch, TrackerConfig
from connector.omnisend.client import OmnisendClient, RateLimited, Rejected, contact_request
from connector.omnisend.sender import Sender

log = structlog.get_logger("connector.sink")

Tags = tuple[bool, str]  # what a tag call needs besides its emails: add or remove, the tag


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
        # Batches and tag calls that kept failing as a whole: their items, set apart.
        self.upserts_apart: Apart[None, UpsertIntent, str] = Apart(_email)
        self.tags_apart: Apart[Tags, TagIntent, Key] = Apart(_key)


def _email(intent: UpsertIntent) -> str:
    return intent.email


def _key(intent: TagIntent) -> Key:
    return intent.key


class Isolation:
    """What a request failing as a whole means for its items (set apart, or put back), and the
    gauge of the items isolated."""

    def __init__(
        self, state: SyncState, sender: Sender, metrics: Metrics, connection: str, clock: Clock
    ) -> None:
        self._state = state
        self._sender = sender
        self._metrics = metrics
        self._connection = connection
        self._clock = clock
        self._retry_s = sender.config.retry_max_s
        self._woken_at = -math.inf

    def failed(
        self,
        apart: Apart[Any, Any, Any],
        head: Any,
        items: list[Any],
        exc: Retriable,
        group: Group[Any, Any] | None,
        alone: bool,
    ) -> bool:
        """A transient failure of a whole request (`group`: of a group apart; `alone`: of an
        isolated item): backed off, then set apart (see `connector.omnisend.apart`). True if
        the items are apart; False if the caller puts them back in line."""
        now = self._clock.now()
        retry_at = now + self._retry_s
        if alone and apart.again(items, retry_at):
            if isinstance(exc, RateLimited):
                self._sender.transient(exc, now)  # the brand's budget holds for every request
            return True  # else its own failure again: says nothing of Omnisend's health
        self._sender.transient(exc, now)
        if isinstance(exc, RateLimited):  # the budget's, not theirs: as they were
            if group is not None:
                apart.waiting.append(group)
            return group is not None
        what = apart.failed(head, items, group, retry_at)
        kind = "tag_call" if head is not None else "batch"
        if what == "isolated":
            self.count()
            log.warning("request_isolated", request=kind, isolated=len(apart.isolated))
        elif what == "split":
            split = (
                self._metrics.tag_calls_split if head is not None else self._metrics.batches_split
            )
            split.labels(self._connection).inc()
            log.warning("failing_request_split", request=kind, items=len(items))
        return what != "back"

    def recovered(self) -> None:
        """A request went through. After a run of failures (an outage, if not a firewall's
        rule), isolated items try again now, at most once per `retry_max_s`: else requests
        that keep failing apart would wake them at every success."""
        now, backoff = self._clock.now(), self._sender.backoff
        if backoff.failures >= WHOLE_FAILURES and now >= self._woken_at + self._retry_s:
            self._woken_at = now
            self._state.upserts_apart.wake(now)
            self._state.tags_apart.wake(now)
        backoff.succeeded()

    def count(self) -> None:
        isolated = self._metrics.contacts_isolated
        isolated.labels(self._connection, "batch").set(len(self._state.upserts_apart.isolated))
        isolated.labels(self._connection, "tag_call").set(len(self._state.tags_apart.isolated))


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
        self.isolation = Isolation(state, sender, metrics, connection, clock)

    def count_batches(self) -> None:
        """The gauge follows every change: batches may finish within one report interval."""
        live = len(self._state.batches.live)
        self._metrics.batches_in_flight.labels(self._connection).set(live)

    async def create_batch(
        self,
        intents: list[UpsertIntent],
        group: Group[None, UpsertIntent] | None = None,
        alone: bool = False,
    ) -> None:
        """`group`: a group set apart; `alone`: an isolated contact (else the line's)."""
        items = [contact_request(i.email, i.fields) for i in intents]
        try:
            batch_id = await self._client.create_batch(items)
            if self._state.batches.knows(batch_id):
                # Another batch's answer (a cache, a proxy): this one's id is unknown, so it is
                # as if its answer were lost, though the batch may exist.
                raise UnexpectedAnswer("batches.create", 201, "the id of a batch in flight")
        except (Retriable, Rejected) as exc:
            if group is not None:
                self._state.upserts_apart.answered()
            self._create_failed(intents, exc, group, alone)
            return
        if group is not None:
            self._state.upserts_apart.answered()
        self.isolation.recovered()
        if self._state.upserts_apart.through(intents):
            self.isolation.count()
        self._state.batches.add(batch_id, intents, self._clock.now())
        self.count_batches()

    def _create_failed(
        self,
        intents: list[UpsertIntent],
        exc: Retriable | Rejected,
        group: Group[None, UpsertIntent] | None,
        alone: bool,
    ) -> None:
        now, state = self._clock.now(), self._state
        if isinstance(exc, Rejected):
            if state.upserts_apart.through(intents):  # out of isolation: refused or halved
                self.isolation.count()
            self._refused(intents, exc)
            return
        if exc.maybe_applied:
            # The batch may exist (its answer was lost): it may land after the contacts' next
            # upsert, so its fields are remembered until it must have landed.
            state.coalescer.haunt(intents, until=now + state.batches.deadline_s)
        if not self.isolation.failed(state.upserts_apart, None, intents, exc, group, alone):
            state.coalescer.untake_upserts(intents)

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

    async def change_tags(
        self,
        add: bool,
        tag: str,
        intents: list[TagIntent],
        group: Group[Tags, TagIntent] | None = None,
        alone: bool = False,
    ) -> None:
        """`group`: a group set apart; `alone`: an isolated email's call (else the line's)."""
        try:
            await self._client.change_tags(add, tag, [i.email for i in intents])
        except (Retriable, Rejected) as exc:
            if group is not None:
                self._state.tags_apart.answered()
            self._tags_failed(add, tag, intents, exc, group, alone)
            return
        if group is not None:
            self._state.tags_apart.answered()
        self.isolation.recovered()
        if self._state.tags_apart.through(intents):
            self.isolation.count()
        now = self._clock.now()
        self._state.coalescer.tags_accepted(intents, now)
        operation = "add" if add else "remove"
        self._metrics.tags_changed.labels(self._connection, operation).inc(len(intents))
        # From the change to Omnisend's acceptance; clock skew must not make it negative.
        latencies = [max(0.0, now - i.occurred_at_ms / 1000) for i in intents]
        self._metrics.end_to_end_latency.observe_many(self._connection, latencies)
        self._on_accepted(latencies)

    def _tags_failed(
        self,
        add: bool,
        tag: str,
        intents: list[TagIntent],
        exc: Retriable | Rejected,
        group: Group[Tags, TagIntent] | None,
        alone: bool,
    ) -> None:
        state, now = self._state, self._clock.now()
        if isinstance(exc, Rejected):
            if state.tags_apart.through(intents):
                self.isolation.count()
            self._tags_refused(add, tag, intents, exc)
            return
        if exc.maybe_applied:  # Omnisend may have taken it: the opposite call waits
            state.coalescer.tags_maybe_applied(intents, now)
        if not self.isolation.failed(state.tags_apart, (add, tag), intents, exc, group, alone):
            state.coalescer.tags_retry(intents, now)

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
