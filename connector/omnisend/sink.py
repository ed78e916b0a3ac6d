"""The Omnisend sink: turns changes into batch upserts and tag calls, as fast as the brand's
budget allows, and reports each record's fate.

It runs on an asyncio loop in a thread of its own or shared with the process's other
connections (`connector.omnisend.loop`), so many requests are in flight at once while the Kafka
loop keeps polling. The Kafka side talks to it through three thread-safe calls: `submit` (new
changes), `take_outcomes` (records whose fate is known) and `drain` (finish what was submitted,
within a deadline). Nothing here blocks the caller for longer than a queue operation.

This module is the bridge between the two threads and the loop's turn (take new changes, send
what may go, hand back outcomes, sleep until the next timer). The rest is in four parts:
`exchanges.SyncState` (what one epoch knows: the coalescer, the batches in flight),
`dispatch.Dispatcher` (when each request goes), `exchanges.Exchanges` (each request and what its
answer means) and `sender.Sender` (the budget's slots, the request tasks, the back-off).

Every request's answer arrives typed (`connector.omnisend.answers`) or as an error that says what
to do; a task that fails any other way is a bug, and stops the connector (exit 1) rather than
leaving its records unfinished and its partition's commits pinned.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from asyncio import Semaphore
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import structlog

from connector.core.clock import Clock
from connector.core.coalesce import Coalescer
from connector.core.errors import Crashed, Fatal
from connector.core.events import ContactChange
from connector.core.intents import Outcome
from connector.metrics import Metrics
from connector.omnisend.batches import (
    TrackerConfig,
)
from connector.omnisend.budget import Budget
from connector.omnisend.client import OmnisendClient
from connector.omnisend.dispatch import Dispatcher
from connector.omnisend.exchanges import Exchanges, SyncState
from connector.omnisend.loop import SinkLoop
from connector.omnisend.sender import Sender, SenderConfig

if TYPE_CHECKING:
    from connector.settings import Settings

log = structlog.get_logger("connector.sink")

# How long a sink with nothing to do sleeps unless woken (new work and shares wake it): its
# gauges are refreshed this often while idle.
QUIET_WAKE_S = 5.0


class Mailbox:
    """Changes in and outcomes out, between the Kafka side and the loop. Both ways, work is
    stamped with the epoch it belongs to: a reset starts a new one, and what belongs to an older
    epoch is dropped wherever it is met, so no reset can lose changes submitted after it, nor
    deliver outcomes of records forgotten before it."""

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[tuple[int, list[ContactChange]]] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[tuple[int, list[Outcome]]] = queue.SimpleQueue()
        self._epoch = 0  # the Kafka side's; the loop's is `_generation`, which follows it
        self._generation = 0
        # Set while the loop has nothing left. Cleared with every send and set only if the inbox
        # is empty, both under the lock: the loop cannot find the inbox empty and say idle over
        # changes sent meanwhile.
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()

    # The Kafka side

    def send(self, changes: list[ContactChange]) -> None:
        with self._lock:
            self._inbox.put((self._epoch, changes))
            self._idle.clear()

    def wait_idle(self, timeout_s: float) -> bool:
        return self._idle.wait(timeout_s)

    def new_epoch(self) -> int:
        self._epoch += 1
        return self._epoch

    def outcomes(self) -> list[Outcome]:
        """Outcomes of the current epoch; older ones are dropped."""
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

    # The loop

    def meet(self, epoch: int) -> bool:
        """Whether `epoch` is new to the loop (it then starts it)."""
        if self._generation >= epoch:
            return False
        self._generation = epoch
        return True

    def received(self) -> Iterator[tuple[int, list[ContactChange]]]:
        """Changes submitted since, with their epoch; those of a forgotten epoch are dropped."""
        while True:
            try:
                epoch, changes = self._inbox.get_nowait()
            except queue.Empty:
                return
            if epoch >= self._generation:
                yield epoch, changes

    def answer(self, outcomes: list[Outcome]) -> None:
        self._outbox.put((self._generation, outcomes))

    def say_idle(self) -> None:
        """The loop has nothing left to do: idle, unless changes were sent meanwhile."""
        with self._lock:
            if self._inbox.empty():
                self._idle.set()


@dataclass(frozen=True)
class SinkConfig:
    # From the settings (`from_settings`), which hold their defaults and meaning.
    # How long a change may wait for more to share its request. Under load requests fill up
    # long before; in a trickle this is the latency it costs.
    upsert_linger_s: float
    tag_linger_s: float
    settle_s: float  # an opposite tag operation waits this long after the earlier one
    request_timeout_s: float
    # A batch Omnisend has not finished after this long is stuck: its contacts go again (and
    # it is still watched, in case it lands later over newer fields).
    batch_deadline_s: float
    # What the coalescer remembers between changes (see `connector.core.recent` for the cost).
    known_cache_size: int
    applied_cache_size: int
    # The exports whose changes this connection receives (the parts an upsert may carry).
    exports: tuple[int, ...] = (0,)
    # The sink's own constants.
    batch_size: int = 100  # Omnisend's maximum items per batch
    tag_batch_size: int = 250  # Omnisend's maximum emails per tag call
    max_batches_in_flight: int = 50
    max_concurrent_requests: int = 16
    # First guess of a batch's processing time, until one was observed. Low on purpose: a few
    # early status reads cost less than tag calls that wait for a late one.
    first_poll_s: float = 0.25
    max_poll_interval_s: float = 10.0
    max_item_attempts: int = 6
    retry_base_s: float = 0.5  # back-off after 5xx or timeouts, doubled each time, jittered
    retry_max_s: float = 30.0
    tick_s: float = 0.02  # re-check timers at least this often
    # Unsent work at which the Kafka side pauses: 50 full batches, 60 full tag calls. The Kafka
    # side resumes at half of it, and refilling (resume, fetch, decode, upsert, poll) must finish
    # before the half that is left has gone out; more only competes for the CPU, which the sink
    # needs to keep requests going out on time.
    saturation_upserts: int = 5000
    saturation_tags: int = 15000

    @classmethod
    def from_settings(cls, settings: Settings, exports: tuple[int, ...] = (0,)) -> SinkConfig:
        return cls(
            upsert_linger_s=settings.upsert_linger_s,
            tag_linger_s=settings.tag_linger_s,
            settle_s=settings.tag_settle_s,
            request_timeout_s=settings.request_timeout_s,
            batch_deadline_s=settings.batch_deadline_s,
            known_cache_size=settings.known_contacts_cache_size,
            applied_cache_size=settings.applied_changes_cache_size,
            exports=exports,
        )

    def coalescer(self) -> Coalescer:
        """A new coalescer (a rebalance starts another)."""
        return Coalescer(
            settle_s=self.settle_s,
            exports=self.exports,
            known_size=self.known_cache_size,
            applied_size=self.applied_cache_size,
        )

    def sender(self) -> SenderConfig:
        return SenderConfig(self.max_concurrent_requests, self.retry_base_s, self.retry_max_s)

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
        config: SinkConfig,
        transport: httpx.AsyncBaseTransport | None = None,
        loop: SinkLoop | None = None,
    ) -> None:
        self.config = config
        self.budget = budget
        self.clock = clock
        self.metrics = metrics
        self.connection = connection
        self._api_key, self._base_url, self._transport = api_key, base_url, transport
        self._mail = Mailbox()  # changes in, outcomes out, each stamped with its epoch
        # The loop it runs on: shared by every connection of the process, or its own.
        self._owns_loop = loop is None
        self._shared = loop or SinkLoop(
            f"omnisend-sink-{connection}", connections=self.config.max_concurrent_requests
        )
        self._loop = self._shared.loop
        self._running: concurrent.futures.Future[None] | None = None
        self._flushing = False
        self._stopping = False
        self.fatal: Fatal | None = None
        self._state = SyncState(self.config.coalescer, self.config.tracker())
        self._sender = Sender(
            self._loop,
            budget,
            clock,
            metrics,
            connection,
            self.config.sender(),
            fail=self._fail,
            poke=self._poke,
        )
        self._wake: asyncio.Event | None = None
        self._dispatcher: Dispatcher | None = None  # once the loop runs
        # Called on the sink's thread with the end-to-end latencies of accepted tag changes.
        self.on_accepted: Callable[[list[float]], None] | None = None

    # ---- the Kafka side (any thread) ---------------------------------------------------------

    def start(self) -> OmnisendSink:
        self._shared.start()
        self._running = self._shared.submit(self._run())
        return self

    def submit(self, changes: list[ContactChange], wake: bool = True) -> None:
        """Hand changes to the loop; `wake` False when the caller wakes it (one wake-up for
        every sink given work in one turn, not one each)."""
        if changes:
            self._mail.send(changes)  # no longer idle
            if wake:
                self._call(self._poke)

    def take_outcomes(self) -> list[Outcome]:
        return self._mail.outcomes()

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
        return self._mail.wait_idle(timeout_s)

    def reset(self) -> None:
        """Forget every unfinished change (after a rebalance); requests in flight are
        cancelled. Does not wait for the loop: changes submitted from now on belong to the new
        epoch."""
        epoch = self._mail.new_epoch()
        self._call(lambda: self._reset_to(epoch))

    def _reset_to(self, epoch: int) -> None:
        """On the loop: start `epoch`, unless it started already."""
        if not self._mail.meet(epoch):
            return
        # What this process knows of Omnisend's contacts goes too: while the partitions are
        # elsewhere, another member may write the same contacts, and a stale "already has
        # these fields" would skip a needed upsert (found by the rebalance test).
        self._state.reset(self.clock.now())  # the tag calls' waits are carried over
        self.metrics.batches_in_flight.labels(self.connection).set(0)
        for request in ("batch", "tag_call"):
            self.metrics.contacts_isolated.labels(self.connection, request).set(0)
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
        return self._state.coalescer.ghosts

    def saturated(self, fraction: float = 1.0) -> bool:
        """Whether enough unsent work waits that reading more would only cost CPU (which the
        sink's own thread needs) without sending anything sooner. Safe from any thread: it reads
        two sizes."""
        c = self._state.coalescer
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

    def _accepted(self, latencies: list[float]) -> None:
        if self.on_accepted is not None:
            self.on_accepted(latencies)

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    poke_now = _poke  # on the loop's thread (`poke` from any other)

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        # The pool of its loop for this host (shared by the process's sinks, and outliving
        # this client), or the transport it was given.
        own = self._transport
        transport, gate = (own, None) if own is not None else self._shared.transport(self._base_url)
        try:
            dispatcher = self._dispatcher = self._parts(transport, gate)
            while not self._stopping and self.fatal is None:
                self._ingest()
                dispatcher.dispatch()
                self._publish()
                self._wake.clear()
                # Until the next timer, if any: an answer, new work or a new share wake it
                # sooner. Idle connections of a process serving many brands cost nothing.
                sleep_s = min(QUIET_WAKE_S, max(0.0, dispatcher.wake_at - self.clock.now()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), sleep_s)
        finally:
            await self._sender.stop()  # a crash too leaves nothing running on the loop
            if own is not None:
                await own.aclose()

    def _parts(self, transport: httpx.AsyncBaseTransport, gate: Semaphore | None) -> Dispatcher:
        """The client, what its answers mean, and when each request goes."""
        timeout_s = self.config.request_timeout_s
        client = OmnisendClient(
            transport,
            self._api_key,
            self._base_url,
            observe=self._sender.observe,
            deadline_s=3 * timeout_s,
            gate=gate,
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
        )
        exchanges = Exchanges(
            self._state,
            client,
            self._sender,
            self.metrics,
            self.connection,
            self.clock,
            self._accepted,
        )
        return Dispatcher(
            self._state,
            exchanges,
            self._sender,
            self.budget,
            self.config,
            self.metrics,
            self.connection,
            self.clock,
            lambda: self._flushing,
        )

    def _ingest(self) -> None:
        now = self.clock.now()
        for epoch, changes in self._mail.received():
            self._reset_to(epoch)  # submitted after a reset the loop has not met yet
            for change in changes:
                self._state.coalescer.add(change, now)

    def _publish(self) -> None:
        outcomes = self._state.coalescer.drain_outcomes()
        if outcomes:
            self._mail.answer(outcomes)
        if self._state.coalescer.idle and not self._sender.tasks:
            self._mail.say_idle()
