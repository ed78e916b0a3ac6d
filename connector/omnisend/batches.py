"""The life of a batch upsert, as a pure tracker: no loop, no I/O, time passed in.

A batch is *live* from its `POST /batches` until Omnisend says it ended, polled when it is likely
done (how long batches take is learned). Its answers sort its contacts into accepted, retried and
refused. A batch that has not ended by the deadline is *stuck*: its contacts go again (the sink
does that), and the batch is still watched, slowly, because it may land later over newer
fields (the coalescer's ghosts). A failed status read never releases a batch's contacts: the
batch may still run, and a second upsert of its contacts could race it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

from connector.core.intents import UpsertIntent
from connector.omnisend.answers import BatchItems, BatchStatus

# Batch item codes worth another try: timeouts, throttling, server trouble; older API versions
# also used 403 for throttling inside batches.
RETRY_ITEM_CODES = frozenset({403, 408, 429})
# With this many batches due for a status check, one `GET /batches` (newest first, up to 250)
# answers for all of them instead of one `GET /batches/{id}` each.
LIST_POLL_MIN_BATCHES = 2
LIST_POLL_LIMIT = 250
# List reads failed in a row for a batch before it is read by its id.
LIST_FAILURES_BEFORE_BY_ID = 2

# A batch is stuck only once it took this many times longer than batches take now.
DEADLINE_FACTOR = 4.0

Verdict = Literal["wait", "accepted", "items", "landed"]


@dataclass(frozen=True)
class TrackerConfig:
    # First guess of a batch's processing time, until one was observed. Low on purpose: a few
    # early status reads cost less than tag calls that wait for a late one.
    first_poll_s: float = 0.25
    max_poll_interval_s: float = 10.0
    tick_s: float = 0.02
    # A batch not ended this long after it was sent is stuck: its contacts go again.
    deadline_s: float = 600.0
    # A stuck batch is read this often, and given up on after `watch_s`.
    stuck_poll_s: float = 60.0
    watch_s: float = 24 * 3600.0
    max_item_attempts: int = 6
    # A failed read of a batch is tried again after this, doubled each time (up to
    # `max_poll_interval_s`, or `stuck_poll_s` for a stuck batch).
    retry_base_s: float = 0.5


@dataclass(eq=False)
class InFlightBatch:
    batch_id: str
    intents: dict[str, UpsertIntent]  # empty once stuck: its contacts went again
    sent_at: float
    next_poll_at: float
    polls: int = 0
    need_items: bool = False
    busy: bool = False  # a read of it is on its way
    unlisted: bool = False  # not on the newest page of the batch list: read by its id
    ghost: int | None = None  # once stuck: the coalescer's ghost of what it carried
    read_failures: int = 0  # failed reads in a row


@dataclass
class Sorted:
    """A finished batch's contacts: accepted, to retry, and refused (reason, detail)."""

    accepted: list[str] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)


class BatchTracker:
    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.live: dict[str, InFlightBatch] = {}
        self.stuck: dict[str, InFlightBatch] = {}
        self.batch_seconds = self.config.first_poll_s  # learned: how long batches take
        self.next_list_at = 0.0

    def add(self, batch_id: str, intents: list[UpsertIntent], now: float) -> InFlightBatch:
        batch = InFlightBatch(batch_id, {i.email: i for i in intents}, now, now + self._expected_s)
        self.live[batch_id] = batch
        return batch

    # ---- what to read, and when ----------------------------------------------------------------

    def due_items(self, now: float) -> list[InFlightBatch]:
        """Batches that ended with errors: their items are read first (they unblock tags)."""
        return [
            b for b in self.live.values() if b.need_items and not b.busy and b.next_poll_at <= now
        ]

    def due_status(self, now: float) -> tuple[list[InFlightBatch], list[InFlightBatch]]:
        """(batches one list read answers for, if it is due; batches read by their id). While
        several batches are in flight one list call covers them, at most every half batch
        duration; a lone batch, one that fell off the list's newest page, or a stuck one is
        read by its id."""
        pending = [b for b in self.live.values() if not b.busy and not b.need_items]
        listable = [b for b in pending if not b.unlisted]
        by_id = [b for b in pending if b.unlisted or len(listable) < LIST_POLL_MIN_BATCHES]
        by_id += [b for b in self.stuck.values() if not b.busy]
        list_due = (
            len(listable) >= LIST_POLL_MIN_BATCHES
            and now >= self.next_list_at
            and any(b.next_poll_at <= now for b in listable)
        )
        return (listable if list_due else []), [b for b in by_id if b.next_poll_at <= now]

    def next_read_at(self) -> float:
        """When a status or items read is next due (inf: none is; a read in flight wakes the
        loop with its answer)."""
        idle = [b.next_poll_at for b in (*self.live.values(), *self.stuck.values()) if not b.busy]
        return min(idle, default=math.inf)

    def listed(self, now: float) -> None:
        """A list read was sent."""
        self.next_list_at = now + max(self.config.tick_s, 0.5 * self.batch_seconds)

    # ---- answers ---------------------------------------------------------------------------------

    def on_status(self, batch: InFlightBatch, status: BatchStatus | None, now: float) -> Verdict:
        """A status read answered (None: the batch was not on the list page): `accepted` (every
        contact), `items` (read them next), `landed` (a stuck batch ended) or `wait`."""
        batch.busy, batch.read_failures = False, 0
        if status is None:
            batch.unlisted, batch.next_poll_at = True, now
            return "wait"
        if batch.ghost is not None:
            return self._stuck_status(batch, status, now)
        if not status.ended:
            self._poll_again(batch, now)
            return "wait"
        self._learn_duration(status, now - batch.sent_at)
        if status.status == "finished" and status.errors_count == 0:
            return "accepted"
        batch.need_items, batch.next_poll_at = True, now
        return "items"

    @property
    def _expected_s(self) -> float:
        """When a new batch is likely done, but never later than the longest poll interval:
        one odd duration must not leave every later batch unread for hours."""
        return min(self.batch_seconds, self.config.max_poll_interval_s)

    def _poll_again(self, batch: InFlightBatch, now: float) -> None:
        expected = batch.sent_at + self._expected_s
        if now < expected:
            # Answered early because a list call covered it: wait for its own time.
            batch.next_poll_at = expected
            return
        batch.polls += 1
        doubled = 0.1 * self.batch_seconds * 2 ** min(batch.polls, 30)
        delay = min(self.config.max_poll_interval_s, doubled)
        batch.next_poll_at = now + max(delay, self.config.tick_s)

    def _stuck_status(self, batch: InFlightBatch, status: BatchStatus, now: float) -> Verdict:
        batch.next_poll_at = now + self.config.stuck_poll_s
        if not status.ended:
            return "wait"
        # Batches take this long now: the deadline grows with them, so a slow Omnisend does
        # not get every batch sent twice.
        self._learn_duration(status, now - batch.sent_at)
        return "landed"

    def items_not_ended(self, batch: InFlightBatch, now: float) -> None:
        """Its items say the batch still runs, though its status said it ended (a lagging
        copy): its status is read again, and decides again."""
        batch.busy, batch.need_items = False, False
        self._poll_again(batch, now)

    def sort_items(self, batch: InFlightBatch, items: BatchItems) -> Sorted:
        """Who was accepted, who is retried (not processed, or a transient code, attempts
        left), who is refused (another 4xx, or retries exhausted)."""
        batch.busy, batch.read_failures = False, 0
        out = Sorted()
        for email, intent in batch.intents.items():
            if email in items.accepted:
                out.accepted.append(email)
                continue
            code, detail = items.refused.get(email, (0, "not processed: the batch was stopped"))
            if not (code == 0 or code in RETRY_ITEM_CODES or code >= 500):
                out.failed[email] = ("rejected_by_omnisend", f"{code}: {detail}")
            elif intent.attempts + 1 >= self.config.max_item_attempts:
                out.failed[email] = ("omnisend_retries_exhausted", f"{code}: {detail}")
            else:
                out.retry.append(email)
        return out

    def read_failed(
        self,
        batch: InFlightBatch,
        now: float,
        listed: bool = False,
        refused: bool = False,
    ) -> None:
        """A read about `batch` failed (any error, a 404 too): read it again later, later each
        time. Its contacts stay with it: the batch may still run. A list read that Omnisend
        refused (`refused`: a 4xx, which will not change), or that failed twice in a row for
        this batch, leaves it read by its id: a list that keeps failing must not hold every
        batch until its deadline."""
        config = self.config
        batch.busy = False
        batch.read_failures += 1
        if listed and (refused or batch.read_failures >= LIST_FAILURES_BEFORE_BY_ID):
            batch.unlisted = True
        delay = config.retry_base_s * 2 ** min(batch.read_failures - 1, 30)
        cap = config.stuck_poll_s if batch.ghost is not None else config.max_poll_interval_s
        delay = min(delay, cap) * (0.5 + random.random())  # jittered: reads spread out
        if batch.ghost is not None:
            delay = max(delay, config.stuck_poll_s)
        batch.next_poll_at = now + max(delay, config.tick_s)

    def _learn_duration(self, status: BatchStatus, observed_s: float) -> None:
        # An exponentially weighted mean of how long batches take, so the first poll of the
        # next batch comes when it is likely done rather than wasting budget on "pending".
        # Omnisend's own createdAt/endedAt say it exactly; our observation is an upper bound.
        server_s = status.duration_s
        sample = observed_s * 0.9 if server_s is None else min(server_s * 1.05, observed_s)
        # However slow batches get, the deadline stays within four times the configured one.
        sample = min(sample, self.config.deadline_s)
        self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * max(sample, self.config.tick_s)

    # ---- deadlines -------------------------------------------------------------------------------

    @property
    def deadline_s(self) -> float:
        """The configured deadline, or four times what batches take now, if that is longer."""
        return max(self.config.deadline_s, DEADLINE_FACTOR * self.batch_seconds)

    def overdue(self, now: float) -> list[InFlightBatch]:
        """Live batches past the deadline (not in the middle of a read)."""
        deadline = self.deadline_s
        return [b for b in self.live.values() if not b.busy and now - b.sent_at >= deadline]

    def mark_stuck(self, batch: InFlightBatch, ghost: int, now: float) -> None:
        """Its contacts went again; watch it for `watch_s` in case it lands."""
        del self.live[batch.batch_id]
        batch.intents, batch.ghost, batch.need_items = {}, ghost, False
        batch.unlisted, batch.next_poll_at = True, now + self.config.stuck_poll_s
        self.stuck[batch.batch_id] = batch

    def given_up(self, now: float) -> list[InFlightBatch]:
        """Stuck batches watched long enough: forget them."""
        limit = self.deadline_s + self.config.watch_s
        gone = [b for b in self.stuck.values() if not b.busy and now - b.sent_at >= limit]
        for batch in gone:
            del self.stuck[batch.batch_id]
        return gone

    def finish(self, batch: InFlightBatch) -> None:
        self.live.pop(batch.batch_id, None)
        self.stuck.pop(batch.batch_id, None)

    def knows(self, batch_id: str) -> bool:
        """A batch of this id is live or watched."""
        return batch_id in self.live or batch_id in self.stuck
