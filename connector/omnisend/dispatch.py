"""When a sink's requests go: status and item reads first (they release tag calls), then tag
calls (oldest group first), then batches; a part-full request lingers for more, a full one goes
as soon as the budget allows; batches past their deadline are marked stuck. Each pass says when
the sink's loop must look again (`wake_at`): a linger ending, a read due, the budget's wait, a
back-off; an answer or new work wakes it sooner.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from connector.core.clock import Clock
from connector.core.coalesce import Coalescer
from connector.core.intents import TagIntent
from connector.metrics import Metrics
from connector.omnisend.budget import Budget, Request
from connector.omnisend.exchanges import Exchanges, SyncState
from connector.omnisend.sender import Sender

if TYPE_CHECKING:
    from connector.omnisend.sink import SinkConfig

log = structlog.get_logger("connector.sink")

# Requests a batch costs: its POST, about one status read, and a margin so that batches use no
# more than 80 % of the budget left after tag calls.
UPSERT_REQUEST_COST = 2.5
# The requests the sink makes, as the budget sees them: full ones go whenever the window has
# room, part-full ones are paced, reads have a reserve.
READ = Request(read=True)
BATCH, FULL_BATCH = Request(), Request(full=True)
TAGS, FULL_TAGS = Request(tag_call=True), Request(tag_call=True, full=True)
# How often ghosts (upserts of unknown fate) are looked at for expiry.
GHOST_CHECK_S = 1.0


class Dispatcher:
    def __init__(
        self,
        state: SyncState,
        exchanges: Exchanges,
        sender: Sender,
        budget: Budget,
        config: SinkConfig,
        metrics: Metrics,
        connection: str,
        clock: Clock,
        flushing: Callable[[], bool],
    ) -> None:
        """`flushing()`: whether part-full requests go at once instead of lingering."""
        self._state = state
        self._exchanges = exchanges
        self._sender = sender
        self._budget = budget
        self._config = config
        self._metrics = metrics
        self._connection = connection
        self._clock = clock
        self._flushing = flushing
        self.wake_at = math.inf  # when the loop must look again

    def _may_send(self, now: float, request: Request) -> bool:
        """Whether the budget lets a request go now. If not, the loop wakes when it will: a
        freed place in the window is used at once, not at the next tick."""
        wait = self._sender.wait(now, request)
        if wait > 0:
            self.wake_by(now + wait)
        return wait == 0

    def dispatch(self) -> None:
        now = self._clock.now()
        self.wake_at = math.inf  # each part below says when it needs to look again
        self._budget.apply(now)  # a new share counts from its assignment, not the next request
        self._deadlines(now)
        sender = self._sender
        if now < sender.backoff.until:
            self.wake_by(sender.backoff.until)
            sender.account_wait(now, limited=False)
            return
        waits, spawned = self._budget.waits, len(sender.tasks)
        self._polls(now)
        self._tags(now)
        self._upserts(now)
        if len(sender.tasks) != spawned:
            self.wake_by(now + self._config.tick_s)  # work flows: look again soon
        sender.account_wait(now, limited=self._budget.waits != waits)

    def wake_by(self, at: float) -> None:
        self.wake_at = min(self.wake_at, at)

    def _deadlines(self, now: float) -> None:
        """Batches past the deadline go stuck (their contacts go again); stuck batches watched
        long enough, and ghosts of lost answers past their time, are given up on."""
        tracker, coalescer = self._state.batches, self._state.coalescer
        for batch in tracker.overdue(now):
            intents = list(batch.intents.values())
            ghost = coalescer.haunt(intents)
            tracker.mark_stuck(batch, ghost, now)
            for intent in intents:
                coalescer.upsert_retry(intent.email)
            self._metrics.batches_stuck.labels(self._connection).inc()
            log.warning(
                "batch_stuck",
                batch_id=batch.batch_id,
                age_s=round(now - batch.sent_at, 1),
                contacts=len(intents),
            )
            self._exchanges.count_batches()
        for batch in tracker.given_up(now):
            if batch.ghost is not None:
                coalescer.ghost_gone(batch.ghost, now)
        if coalescer.ghosts:
            coalescer.expire_ghosts(now)
            self.wake_by(now + GHOST_CHECK_S)

    def _polls(self, now: float) -> None:
        """Item reads first (they unblock tag calls), then status reads."""
        tracker = self._state.batches
        # A read not due yet wakes the loop when it is; one due and held back is woken by what
        # holds it: the budget (its wait), an answer (a free slot), the list read's turn.
        next_read = tracker.next_read_at()
        if next_read > now:
            self.wake_by(next_read)
        if tracker.next_list_at > now:
            self.wake_by(tracker.next_list_at)
        for batch in tracker.due_items(now):
            if not self._sender.room() or not self._may_send(now, READ):
                return
            batch.busy = True
            self._sender.spawn(self._exchanges.items(batch), now, READ)
        listable, by_id = tracker.due_status(now)
        if listable and self._sender.room():
            if not self._may_send(now, READ):
                return
            for batch in listable:
                batch.busy = True
            tracker.listed(now)
            self._sender.spawn(self._exchanges.read_list(listable), now, READ)
        for batch in by_id:
            if not self._sender.room() or not self._may_send(now, READ):
                return
            batch.busy = True
            self._sender.spawn(self._exchanges.poll(batch), now, READ)

    def _tags(self, now: float) -> None:
        while self._state.tag_splits and self._sender.room(tag_call=True):
            if not self._may_send(now, TAGS):
                return
            add, tag, intents = self._state.tag_splits.popleft()
            self._sender.spawn(self._exchanges.change_tags(add, tag, intents), now, TAGS)
        if not self._tags_apart(now):
            return
        size, linger = self._config.tag_batch_size, self._config.tag_linger_s
        # Oldest first: under load every group fills its calls anyway, and serving the group
        # that waited longest lets committed offsets advance (the fullest-first order starved
        # small groups, holding the commit of the records before them for the whole sync).
        groups = sorted(self._state.coalescer.ready_groups(), key=lambda g: g[2])
        coalescer, flushing = self._state.coalescer, self._flushing()
        for group, count, since in groups:
            if not self._sender.room(tag_call=True):
                return  # a call's answer wakes the loop
            if count < size and now - since < linger and not flushing:
                # The group's first intent has not waited long enough. It is usually the
                # oldest; one readied again (an add released by its upsert, a retry) goes to
                # the back with its own `since`, and may wait up to one linger more.
                self.wake_by(since + linger)
                continue
            # Ask first: taking a call's intents and putting them back costs a millisecond
            # and sends them to the back of their group. Intents settling (an opposite call
            # accepted less than `settle_s` ago) cannot go yet: a group may hold a whole
            # call's worth and still have only a few to send.
            sendable, sendable_since = coalescer.tags_sendable(group, size, now)
            if not sendable:
                # Held back while an opposite call settles: look again when the first may go.
                self.wake_by(max(coalescer.settled_at(group), now + self._config.tick_s))
                continue
            full = sendable == size
            if not full and now - sendable_since < linger and not flushing:
                self.wake_by(sendable_since + linger)  # more may settle meanwhile
                continue
            request = FULL_TAGS if full else TAGS
            if not self._may_send(now, request):
                return
            intents = coalescer.take_tags(group, size, now)
            self._sender.spawn(
                self._exchanges.change_tags(group[0], group[1], intents), now, request
            )

    def _apart(self, now: float) -> bool:
        """Send the batches set apart and the isolated contacts that are due (each with its
        newest change, still alone); False if no room is left for the queue's batches."""
        apart, coalescer = self._state.upserts_apart, self._state.coalescer
        while apart.waiting and self._batch_room():
            if not self._may_send(now, BATCH):
                return False
            group = apart.take()
            # A newer change of a contact goes in the older one's place, with its fields.
            group.items = [coalescer.take_newer(i.email) or i for i in group.items]
            self._sender.spawn(self._exchanges.create_batch(group.items, group), now, BATCH)
        for email, _, isolated in apart.due(now):
            if not self._batch_room() or not self._may_send(now, BATCH):
                return False
            intent = coalescer.take_newer(email) or isolated  # the newest fields, still alone
            apart.sending(email, None, intent)
            call = self._exchanges.create_batch([intent], alone=True)
            self._sender.spawn(call, now, BATCH)
        self.wake_by(apart.next_try())
        return True

    def _tags_apart(self, now: float) -> bool:
        """The same for tag calls (see `_apart`); False if no room is left for the queue's."""
        apart, coalescer = self._state.tags_apart, self._state.coalescer
        while apart.waiting and self._sender.room(tag_call=True):
            if not self._may_send(now, TAGS):
                return False
            group = apart.take()
            group.items = newest_tags(coalescer, group.items, now)
            if not group.items:
                apart.answered()
                continue
            (add, tag), intents = group.head, group.items
            self._sender.spawn(self._exchanges.change_tags(add, tag, intents, group), now, TAGS)
        for key, (add, tag), isolated in apart.due(now):
            if not self._sender.room(tag_call=True) or not self._may_send(now, TAGS):
                return False
            newest = newest_tags(coalescer, [isolated], now)
            if not newest:  # its opposite change went in line instead
                apart.release(key)
                self._exchanges.isolation.count()
                continue
            apart.sending(key, (add, tag), newest[0])
            call = self._exchanges.change_tags(add, tag, newest, alone=True)
            self._sender.spawn(call, now, TAGS)
        self.wake_by(apart.next_try())
        return True

    def _upsert_linger(self) -> float:
        """How long a partial batch may wait to fill: the configured linger, but never so short
        that batches (each a request plus about one status read) outrun the budget for them."""
        all_limit, tag_limit = self._budget.limits()
        per_batch = (
            UPSERT_REQUEST_COST * self._budget.config.window_s / max(1, all_limit - tag_limit)
        )
        return max(self._config.upsert_linger_s, per_batch)

    def _batch_room(self) -> bool:
        return (
            self._sender.room()
            and len(self._state.batches.live) < self._config.max_batches_in_flight
        )

    def _upserts(self, now: float) -> None:
        while self._state.splits and self._batch_room():
            if not self._may_send(now, BATCH):
                return
            self._sender.spawn(
                self._exchanges.create_batch(self._state.splits.popleft()), now, BATCH
            )
        if not self._apart(now):
            return
        c, size = self._state.coalescer, self._config.batch_size
        linger = self._upsert_linger()
        while c.upserts and self._batch_room():
            oldest = next(iter(c.upserts.values())).since
            if len(c.upserts) < size and now - oldest < linger and not self._flushing():
                self.wake_by(oldest + linger)
                return
            # Full only if a whole batch can be taken now: emails still in a batch are not.
            full = len(c.upserts) >= size and c.upserts_ready(size) == size
            request = FULL_BATCH if full else BATCH
            if not self._may_send(now, request):
                return
            intents = c.take_upserts(size)
            if not intents:
                return  # every email still in a batch: its read's answer wakes the loop
            self._sender.spawn(self._exchanges.create_batch(intents), now, request)


def newest_tags(coalescer: Coalescer, intents: list[TagIntent], now: float) -> list[TagIntent]:
    """A group's intents as they are now: a newer change of the same direction goes in
    the older one's place (with its records); one of the opposite direction goes in line
    instead (after its settle wait), taking the older one's records."""
    kept = []
    for intent in intents:
        newer = coalescer.tags_take_newer(intent.key)
        if newer is None and intent.key in coalescer.tagging.tags:
            coalescer.tags_retry([intent], now)
        else:
            kept.append(newer or intent)
    return kept
