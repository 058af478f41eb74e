"""At least once through a rebalance (found by the chaos suite, issue 17 item 7): a consumer
commits what it handled before its partitions move, and a commit that names a partition moved
away meanwhile, or that the rebalance refused, leaves it to the next owner instead of killing
the worker; a poll that fails while the broker restarts is retried. No broker: the consumer and
the subscription are stand-ins."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, GroupLoadInProgressError

from streamflow.engine import _consumer
from streamflow.engine._consumer import _Consumer
from streamflow.model import Message
from streamflow.transports.kafka._subscription import KafkaSubscription

pytestmark = pytest.mark.timeout(30)


def msg(partition: int, offset: int, topic: str = "t") -> Message:
    return Message(topic, partition, offset, None, b"{}", [], 0)


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition], fail: BaseException | None = None):
        self.assigned, self.fail = assigned, fail
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail is not None:
            raise self.fail
        self.commits.append(offsets)


def subscription(consumer: FakeConsumer) -> KafkaSubscription:
    return KafkaSubscription(cast(Any, None), lambda s: None, cast(Any, consumer), "g", ["t"])


async def test_a_commit_leaves_out_partitions_no_longer_assigned() -> None:
    consumer = FakeConsumer({TopicPartition("t", 0)})
    await subscription(consumer).commit([msg(0, 4), msg(0, 5), msg(1, 9)])
    assert consumer.commits == [{TopicPartition("t", 0): 6}]


async def test_a_commit_of_nothing_still_assigned_sends_nothing() -> None:
    consumer = FakeConsumer(set())
    await subscription(consumer).commit([msg(1, 9)])
    assert consumer.commits == []


async def test_a_commit_refused_by_a_rebalance_does_not_stop_the_consumer() -> None:
    consumer = FakeConsumer({TopicPartition("t", 0)}, CommitFailedError("rebalanced"))
    await subscription(consumer).commit([msg(0, 1)])  # no raise: the next owner redoes it


class FakeSub:
    exactly_once = False

    def __init__(self) -> None:
        self.committed: list[list[Message]] = []

    async def commit(self, messages: Sequence[Message]) -> None:
        self.committed.append(list(messages))


def consumer_with(sub: FakeSub) -> _Consumer:
    c = _Consumer(cast(Any, None))
    c.sub = cast(Any, sub)
    return c


async def test_handing_over_commits_the_handled_batches_once_their_outputs_landed() -> None:
    sub = FakeSub()
    c = consumer_with(sub)
    landed = asyncio.get_running_loop().create_future()
    c._pending, c._acks = [msg(0, 1), msg(1, 7)], [landed]
    handing = asyncio.create_task(c.handing_over({0, 1}))
    await asyncio.sleep(0.01)
    assert sub.committed == [], "committed before its outputs were acknowledged"
    landed.set_result(None)
    await handing
    assert sub.committed == [[msg(0, 1), msg(1, 7)]]
    assert c._pending == [] and c._acks == [] and c._failed is None


async def test_an_output_that_failed_to_land_is_raised_by_the_loop_not_committed() -> None:
    sub = FakeSub()
    c = consumer_with(sub)
    failed = asyncio.get_running_loop().create_future()
    failed.set_exception(ConnectionError("broker gone"))
    c._pending, c._acks = [msg(0, 1)], [failed]
    await c.handing_over({0})
    assert sub.committed == []
    assert isinstance(c._failed, ConnectionError)


async def test_handing_over_does_nothing_exactly_once() -> None:
    sub = FakeSub()
    sub.exactly_once = True
    c = consumer_with(sub)
    c._pending = [msg(0, 1)]
    await c.handing_over({0})
    assert sub.committed == [] and c._pending == [msg(0, 1)]


class FlakyPoll(_Consumer):
    """Polls fail twice as while the broker restarts (its groups loading), then one record
    comes, and the consumer is stopped."""

    def __init__(self, sub: FakeSub) -> None:
        super().__init__(cast(Any, SimpleNamespace(commit_interval_s=0.0)))
        self.sub = cast(Any, sub)
        self.group, self.polls = "g", 0

    async def poll(self, sub: Any) -> tuple[list[Message], bool]:
        self.polls += 1
        if self.polls <= 2:
            raise GroupLoadInProgressError()
        if self.polls == 3:
            return [msg(0, 41)], False
        self.stop()
        return [], False

    async def handle(self, msgs: list[Message]) -> list[Message]:
        return msgs


async def test_a_poll_failing_while_the_broker_restarts_is_retried_not_fatal() -> None:
    sub = FakeSub()
    sub.close = _noop  # type: ignore[attr-defined]
    c = FlakyPoll(sub)
    await asyncio.wait_for(c.run(), 10)
    assert c.polls == 4
    assert [m.offset for batch in sub.committed for m in batch] == [41]


async def _noop() -> None:
    return None


class SlowHandle(_Consumer):
    """One batch, whose handling waits for ``release``; then stops."""

    def __init__(self, sub: FakeSub) -> None:
        super().__init__(cast(Any, SimpleNamespace(commit_interval_s=60.0)))
        self.sub = cast(Any, sub)
        self.group, self.polls = "g", 0
        self.handling, self.release = asyncio.Event(), asyncio.Event()
        self.landed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def poll(self, sub: Any) -> tuple[list[Message], bool]:
        self.polls += 1
        if self.polls == 1:
            return [msg(0, 8)], True
        self.stop()
        return [], False

    async def handle(self, msgs: list[Message]) -> list[Message]:
        self._acks.append(self.landed)  # its output, not acknowledged yet
        self.handling.set()
        await self.release.wait()
        return msgs


async def test_handing_over_waits_for_the_batch_in_hand_and_its_outputs() -> None:
    sub = FakeSub()
    sub.close = _noop  # type: ignore[attr-defined]
    c = SlowHandle(sub)
    c._pending = [msg(0, 3)]  # handled earlier, its outputs acknowledged
    running = asyncio.create_task(c.run())
    await c.handling.wait()
    handing = asyncio.create_task(c.handing_over({0}))
    await asyncio.sleep(0.01)
    assert sub.committed == [] and not handing.done(), "committed with a batch in hand"
    c.release.set()  # the batch in hand is done: its output is not acknowledged yet
    await asyncio.sleep(0.01)
    assert sub.committed == [], "committed before the batch's output landed"
    c.landed.set_result(None)
    await asyncio.wait_for(handing, 10)
    assert sub.committed == [[msg(0, 3), msg(0, 8)]]
    await asyncio.wait_for(running, 10)
    assert sub.committed == [[msg(0, 3), msg(0, 8)]] and c._failed is None


async def test_a_batch_in_hand_too_long_is_left_to_the_next_owner(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry waiting for its due time must not hold the rebalance up: nothing is committed
    then, and what was handled is handled again after it (at least once)."""
    monkeypatch.setattr(_consumer, "HANDOVER_WAIT_S", 0.05)
    sub = FakeSub()
    sub.close = _noop  # type: ignore[attr-defined]
    c = SlowHandle(sub)
    c._pending = [msg(0, 3)]
    running = asyncio.create_task(c.run())
    await c.handling.wait()
    await asyncio.wait_for(c.handing_over({0}), 10)
    assert sub.committed == [] and c._pending == [msg(0, 3)]
    c.release.set()
    c.landed.set_result(None)
    await asyncio.wait_for(running, 10)
    assert sub.committed == [[msg(0, 3), msg(0, 8)]]
