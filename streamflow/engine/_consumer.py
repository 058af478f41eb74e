"""The poll → handle → publish → commit loop shared by stages and sinks.

Each loop handles a polled batch as a unit: publish everything it produced (outputs and dead
letters), and only then commit its input, so a crash redelivers rather than loses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from functools import partial
from typing import TypeGuard

from opentelemetry.trace import SpanKind

from streamflow.errors import TransactionFailed
from streamflow.model import (
    H_TRACEPARENT,
    Arrival,
    DeadLetter,
    DeadLetterKind,
    Message,
    OutMessage,
    dead_letter_message,
    error_info,
)
from streamflow.observability import RecSpan, fail_span, traceparent_of
from streamflow.transports import RECOVERABLE, Subscription, TransactionalSubscription
from streamflow.triggers import PartitionState

from ._context import Ctx

log = logging.getLogger("streamflow.engine")
HANDOVER_WAIT_S = 10.0
"""The longest a rebalance waits for a consumer's batch in hand (at least once)."""


class _Consumer:
    """Shared poll → handle → publish → commit loop of stages and sinks."""

    group: str
    topics: list[str]
    name: str
    kind: DeadLetterKind = "stage"
    sensitive: tuple[str, ...] = ()
    """The sensitive fields of the records it dead-letters (``dlq show`` masks them)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.sub: Subscription | None = None
        self._stop = asyncio.Event()
        self._acks: list[Awaitable[object]] = []  # publishes whose acks the next commit awaits
        # At least once: inputs handled and not committed yet, the commit on its way, what
        # failed in a commit before a rebalance (raised by the loop), and a lock held while a
        # batch is handled, so a rebalance commits it with its outputs' acks, or not at all.
        self._pending: list[Message] = []
        self._committing: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._handling = asyncio.Lock()

    async def open(self) -> None:
        self.sub = await self.ctx.transport.subscribe(self.group, self.topics,
                                                      on_revoke=self.handing_over)

    def stop(self) -> None:
        self._stop.set()

    async def lag(self) -> int:
        return 1 << 30 if self.sub is None else await self.sub.lag()

    async def run(self) -> None:
        """Poll, handle, and commit at most every ``commit_interval_s`` (and whenever idle):
        a commit is a broker round trip, and redelivery after a crash is deduped by run id."""
        sub = self.sub
        assert sub is not None, "open() first"
        if sub.exactly_once:
            await self._run_transactional()
            return
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        while not self._stop.is_set():
            if self._failed is not None:
                raise self._failed
            try:
                msgs, _ = await self.poll(sub)
            except RECOVERABLE as e:  # the broker restarting (a group still loading, say)
                log.warning("%s: poll failed (%s: %s); polling again", self.group,
                            type(e).__name__, e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.5)
                continue
            if msgs:
                async with self._handling:
                    done = await self.handle(msgs)
                    self._pending.extend(done)
            due = not msgs or loop.time() - last_commit >= self.ctx.commit_interval_s
            committing = self._committing  # one commit in flight, off the hot path
            if self._pending and due and (committing is None or committing.done()):
                if committing is not None:
                    committing.result()  # surface a failed commit or publish
                self._committing = asyncio.create_task(
                    self._commit_acked(sub, self._pending, self._acks))
                self._pending, self._acks, last_commit = [], [], loop.time()
            elif len(self._acks) > 64:  # bound what is in flight
                await self._acks.pop(0)
            await self.idle()
        if self._committing is not None:
            await self._committing
        if self._pending or self._acks:
            await self._commit_acked(sub, self._pending, self._acks)
        await self._checkpoint()
        await sub.close()

    async def handing_over(self, partitions: set[int]) -> None:
        """At least once, before a rebalance moves partitions: commit the batches handled so
        far, the one in hand included (once their outputs are acknowledged), because after
        it every consumer reads on from its committed offsets. A batch in hand longer than
        ``HANDOVER_WAIT_S`` (a retry waiting for its due time) is not waited for: nothing is
        committed then, and it is all handled again. A failed commit or publish is the loop's
        to raise: an output that did not land must not be committed past."""
        sub = self.sub
        if sub is None or sub.exactly_once:
            return
        try:
            await asyncio.wait_for(self._handling.acquire(), HANDOVER_WAIT_S)
        except TimeoutError:
            log.info("%s: a batch still in hand at a rebalance; not committing", self.group)
            return
        try:
            committing, self._committing = self._committing, None
            pending, acks = self._pending, self._acks
            self._pending, self._acks = [], []
            if committing is not None:
                await committing
            await self._commit_acked(sub, pending, acks)
        except Exception as e:
            self._failed = e
        finally:
            self._handling.release()

    @staticmethod
    async def _commit_acked(sub: Subscription, pending: list[Message],
                            acks: list[Awaitable[object]]) -> None:
        """Offsets only once every output of those inputs is durable."""
        if acks:
            await asyncio.gather(*acks)
        if pending:
            await sub.commit(pending)

    async def publish(self, out: list[OutMessage]) -> None:
        """At least once, outputs are handed to the transport and the acks awaited by the
        commit of their inputs, so the next batch is handled meanwhile (a backfill slice no
        longer idles a round trip); exactly once, they join the partition's transaction."""
        sub = self.sub
        if sub is None or sub.exactly_once:
            await self.ctx.transport.publish(out)
            return
        ack = await self.ctx.transport.publish_nowait(out)
        if ack is not None:
            self._acks.append(ack)

    async def _run_transactional(self) -> None:
        """Each polled partition is handled inside its transaction; open transactions commit
        with their input offsets when the consumer catches up or ``commit_interval_s`` passed.
        A lost transaction rewinds this consumer to its last commit."""
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        while not self._stop.is_set():
            sub = self.sub
            assert sub is not None and _transactional(sub)
            try:
                msgs, more = await self.poll(sub)
                by_partition: dict[int, list[Message]] = {}
                for m in msgs:
                    by_partition.setdefault(m.partition, []).append(m)
                for n, group in by_partition.items():
                    if not await self.wait_ready(group):
                        break  # stopping: the rest is read again by the next owner
                    async with sub.partition(n) as owned:
                        if owned:
                            done = await self.handle(group)
                            sub.mark_done(done, partial=len(done) < len(group))
                if self._stop.is_set():
                    break  # what was cut short must not be committed at the read position
                await self.idle()
                if sub.pending() and (not more or
                                      loop.time() - last_commit >= self.ctx.commit_interval_s):
                    await sub.flush()
                    self.committed()
                    last_commit = loop.time()
            except RECOVERABLE as e:
                await self._rewind(e)
        sub = self.sub
        if sub is not None and _transactional(sub):
            try:
                # Only what was handled: a batch cut short by the stop was read past.
                await sub.flush(at_position=False)
            except TransactionFailed:
                pass  # the next owner redoes it; the state held it, so no checkpoint
            else:
                await self._checkpoint()
            await sub.close()

    async def _rewind(self, e: BaseException) -> None:
        """Drop everything since the last commit and read on from there, as a new owner
        would: the transaction's outputs were discarded, so in-memory state must be too."""
        log.warning("%s: %s: %s; rewinding to the last commit", self.group, type(e).__name__, e)
        mt = self.ctx.metrics
        mt.failed(self.kind, self.name, f"transaction lost: {e}")
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.close()
            self.sub = None
        await self.rewound()
        delay = 0.5
        while not self._stop.is_set():
            try:
                await self.open()
                return
            except Exception as err:  # the broker may still be down: keep trying
                log.warning("%s: cannot rejoin yet (%s: %s); retrying in %.1fs", self.group,
                            type(err).__name__, err, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, 5.0)

    async def poll(self, sub: Subscription) -> tuple[list[Message], bool]:
        """The next records to handle, and whether more are waiting (a full batch)."""
        msgs = await sub.poll(self.ctx.poll_batch, timeout=0.2)
        return msgs, len(msgs) >= self.ctx.poll_batch

    async def rewound(self) -> None:
        """Hook: forget state derived from uncommitted work."""

    async def checkpoint(self) -> None:
        """Hook: a clean stop committed everything; local state may be checkpointed."""

    async def _checkpoint(self) -> None:
        try:
            await self.checkpoint()
        except Exception as e:  # a full disk must not fail the stop: the changelog has it all
            log.warning("%s: no checkpoint written (%s: %s); the next start restores from the "
                        "changelog", self.group, type(e).__name__, e)

    async def wait_ready(self, msgs: list[Message]) -> bool:
        """Hook: wait, outside the partition's transaction, until ``msgs`` may be handled;
        False if stopping. (A rebalance waits for the partition; aiokafka does not heartbeat
        meanwhile, so no long wait may happen inside.)"""
        return True

    def committed(self) -> None:
        """Hook: the open transactions committed."""

    @contextlib.asynccontextmanager
    async def scope(self, partition: int) -> AsyncIterator[bool]:
        """Work on input partition n outside ``handle`` (deadlines): inside n's transaction
        when exactly once; yields False if n is no longer ours."""
        sub = self.sub
        if sub is not None and _transactional(sub):
            async with sub.partition(partition) as owned:
                yield owned
        else:
            yield True

    async def handle(self, msgs: list[Message]) -> list[Message]:
        """Process ``msgs``; return those now done (a prefix, if stopping cut it short)."""
        raise NotImplementedError

    async def idle(self) -> None:
        """Called after every poll: time-driven work (deadlines) happens here."""

    def busy(self) -> bool:
        """Work is due that no input lag shows (an expired deadline): not drained yet."""
        return False

    def restoring(self) -> bool:
        """Still loading barrier state: not ready to serve."""
        return False

    def next_deadline_s(self) -> float | None:
        """Seconds until a barrier or window deadline of this consumer comes due, if any."""
        return None

    def has_gate(self) -> bool:
        return False

    def open_states(self) -> list[PartitionState]:
        """Barriers or windows waiting for inputs, for metrics and ``status``."""
        return []

    def dead_letter(self, reason: str, m: Message, arr: Arrival, parent: RecSpan | None,
              spans: list[RecSpan | None], exc: BaseException | None,
              run_id: str | None = None, attempts: int | None = None,
              kind: DeadLetterKind | None = None) -> OutMessage:
        tr, topic = self.ctx.tracing, self.ctx.dlq_topic
        if parent is None and tr.enabled:  # unsampled: its failure is exported all the same
            parent = tr.start_failure(
                f"process {m.topic}", arr.traceparent, SpanKind.CONSUMER,
                partial(tr.process_attributes, m.topic, m.partition, m.offset, self.group, m.key))
            fail_span(parent, exc, reason)
            spans.append(parent)
        send = tr.start_child(f"send {topic}", parent, SpanKind.PRODUCER,
                              partial(tr.send_attributes, topic, arr.arrival_id.encode()))
        spans.append(send)
        self.ctx.counters.dead_lettered += 1
        mt = self.ctx.metrics
        kind = kind or self.kind
        mt.add(mt.dead_letters, (kind, self.name))
        mt.failed(kind, self.name, reason, run_id)
        origin = {"topic": m.topic, "partition": m.partition, "offset": m.offset,
                  "asset": arr.asset, "partition_key": arr.partition,
                  "key": m.key.decode("utf-8", "replace") if m.key is not None else None}
        arrival = {k: v.decode("utf-8", "replace") for k, v in m.headers
                   if k.startswith("sf-") or k == H_TRACEPARENT}
        dl = DeadLetter(reason, self.name, origin, m.value.decode("utf-8", "replace"),
                        error_info(exc) if exc is not None else {}, arr.arrival_id,
                        run_id, attempts, arrival, kind, self.sensitive)
        return dead_letter_message(topic, dl, traceparent_of(send, arr.traceparent))


def _transactional(sub: Subscription) -> TypeGuard[TransactionalSubscription]:
    return sub.exactly_once
