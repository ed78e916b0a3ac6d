"""Several connections (brands) behind the interface the pipeline uses for one: each keeps its
own client, coalescer and budget; changes go to the sink of their connection."""

from __future__ import annotations

import time
from collections.abc import Iterator

from connector.core.errors import Fatal
from connector.core.events import ContactChange
from connector.core.intents import Outcome
from connector.omnisend.loop import SinkLoop
from connector.omnisend.sink import OmnisendSink


class Sinks:
    def __init__(self, sinks: dict[str, OmnisendSink], loop: SinkLoop | None = None) -> None:
        if not sinks:
            raise ValueError("at least one sink is needed")
        self.by_connection = sinks
        self._loop = loop  # the one the sinks share, stopped after them

    def __iter__(self) -> Iterator[OmnisendSink]:
        return iter(self.by_connection.values())

    def start(self) -> Sinks:
        for sink in self.by_connection.values():
            sink.start()
        return self

    def submit(self, changes: list[tuple[str, ContactChange]]) -> None:
        grouped: dict[str, list[ContactChange]] = {}
        for connection, change in changes:
            group = grouped.get(connection)
            if group is None:
                group = grouped[connection] = []
            group.append(change)
        if self._loop is None or len(grouped) == 1:
            for connection, group in grouped.items():
                self.by_connection[connection].submit(group)
            return
        touched = [self.by_connection[connection] for connection in grouped]
        for sink, group in zip(touched, grouped.values(), strict=True):
            sink.submit(group, wake=False)
        self._loop.call(lambda: [sink.poke_now() for sink in touched])

    def take_outcomes(self) -> list[Outcome]:
        """What the sinks decided; with several, each outcome names its connection (for the
        metrics of its dead letters and skips)."""
        if len(self.by_connection) == 1:
            return next(iter(self.by_connection.values())).take_outcomes()
        taken: list[Outcome] = []
        for name, sink in self.by_connection.items():
            for outcome in sink.take_outcomes():
                outcome.connection = name
                taken.append(outcome)
        return taken

    def saturated(self, fraction: float = 1.0) -> bool:
        """Any connection has all the unsent work it can use: reading more would only pile up
        behind it (the records it needs are shared with the others)."""
        return any(sink.saturated(fraction) for sink in self.by_connection.values())

    def drain(self, timeout_s: float) -> bool:
        """Every sink stops lingering at once and they drain in parallel, on their own threads,
        within one shared deadline; True if all of them finished in time."""
        deadline = time.monotonic() + timeout_s
        sinks = list(self.by_connection.values())
        for sink in sinks:
            sink.flush(True)
        try:
            finished = [sink.wait_idle(max(0.0, deadline - time.monotonic())) for sink in sinks]
            return all(finished)  # every sink waited for, even after one did not finish
        finally:
            for sink in sinks:
                sink.flush(False)

    def reset(self) -> None:
        for sink in self.by_connection.values():
            sink.reset()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Every sink asked at once, then waited for within one deadline."""
        deadline = time.monotonic() + timeout_s
        for sink in self.by_connection.values():
            sink.stop_soon()
        for sink in self.by_connection.values():
            sink.wait_stopped(max(0.0, deadline - time.monotonic()))
        if self._loop is not None:
            self._loop.stop()

    @property
    def fatal(self) -> Fatal | None:
        return next((s.fatal for s in self.by_connection.values() if s.fatal is not None), None)

    def set_budget_share(self, share: float) -> None:
        """A job's fixed share of every brand's budget, from the start."""
        for sink in self.by_connection.values():
            sink.budget.share = share
            sink.poke()

    def reassign_budget(self, share: float) -> None:
        """The consumer group gave this replica `share` of its partitions, and so of every
        brand's budget (see `Budget.reassign`)."""
        for sink in self.by_connection.values():
            sink.budget.reassign(share)
            sink.poke()
