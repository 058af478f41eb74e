"""Runs, retries and dead letters on both transports: the ledger, the retry lane, replay."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from streamflow import Asset, Pipeline, RetryPolicy, Settings, run_pipeline
from streamflow.cli import main
from streamflow.connectors.testing import MemorySink, MemorySource
from streamflow.model import runs_topic
from streamflow.ops import list_dead_letters, list_runs, replay
from streamflow.state import fold_raw

from .helpers import memory_source, read_topic, values


class Item(BaseModel):
    id: int
    day: str


items = Asset("items", Item, key="id", partition_by="day")
done = Asset("done", Item, key="id", partition_by="day")


Out = dict[str, dict[str, Any]]


def pipeline(fn: object, source: MemorySource, out: Out, retry: RetryPolicy) -> Pipeline:
    """items → work → a memory sink storing into ``out`` (shared by the runs of one test)."""
    p = Pipeline("runs")
    p.source(source, asset=items)
    p.stage(inputs=[items], output=done, name="work", retry=retry)(fn)  # type: ignore[arg-type]
    p.sink(MemorySink(out), asset=done)
    return p


@pytest.fixture
def out() -> Out:
    """What the memory sink stored, shared by the runs (restarts) of one test."""
    return {}


def rows(out: Out) -> list[dict[str, Any]]:
    return list(out.values())


FAST = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.05)


async def test_a_flaky_stage_succeeds_on_a_later_attempt(settings: Settings,
                                                          out: Out) -> None:
    tries: dict[int, int] = {}

    def flaky(x: Item) -> Item:
        tries[x.id] = tries.get(x.id, 0) + 1
        if tries[x.id] < 3:
            raise ConnectionError(f"upstream busy for {x.id}")
        return x

    src = memory_source([[{"id": i, "day": f"d{i % 2}"} for i in range(5)]])
    summary = await run_pipeline(pipeline(flaky, src, out, FAST), settings)

    assert (summary.records_out, summary.dead_lettered, summary.retried) == (5, 0, 10)
    assert sorted(int(r["id"]) for r in rows(out)) == list(range(5))
    runs = await list_runs(settings)
    assert len(runs) == 5
    assert {(r.status, r.attempt, r.max_attempts) for r in runs} == {("succeeded", 3, 3)}
    assert all(r.inputs[0].asset == "items" and len(r.outputs) == 1 for r in runs)


async def test_exhausted_retries_dead_letter_with_run_attempts_and_traceback(
    settings: Settings, out: Out
) -> None:
    def broken(x: Item) -> Item:
        raise RuntimeError(f"cannot work on {x.id}")

    src = memory_source([[{"id": 1, "day": "d1"}, {"id": 2, "day": "d2"}]])
    summary = await run_pipeline(pipeline(broken, src, out, FAST), settings)

    assert (summary.records_out, summary.dead_lettered, summary.retried) == (0, 2, 4)
    dead = sorted(values(await read_topic(settings, settings.dead_letter_topic)),
                  key=lambda d: str(d["payload"]))
    runs = {r.run_id: r for r in await list_runs(settings)}
    for d, item_id in zip(dead, (1, 2), strict=True):
        assert d["kind"] == "stage" and d["stage"] == "work" and d["attempts"] == 3
        assert runs[str(d["run_id"])].status == "dead-lettered"
        err = d["error"]
        assert isinstance(err, dict)
        assert err["type"] == "RuntimeError" and err["message"] == f"cannot work on {item_id}"
        assert "Traceback" in err["traceback"] and "broken" in err["traceback"]
        assert "attempt 3 of 3" in str(d["reason"])


async def test_a_run_waiting_to_retry_does_not_hold_up_other_partitions(
    settings: Settings, out: Out
) -> None:
    failed_once: set[int] = set()

    def slow_to_heal(x: Item) -> Item:
        if x.id == 0 and x.id not in failed_once:
            failed_once.add(x.id)
            raise TimeoutError("first attempt times out")
        return x

    policy = RetryPolicy(attempts=2, backoff_s=1.5, jitter=0)
    src = memory_source([[{"id": i, "day": f"d{i}"} for i in range(6)]])
    summary = await run_pipeline(pipeline(slow_to_heal, src, out, policy), settings)

    assert (summary.records_out, summary.retried) == (6, 1)
    runs = await list_runs(settings)
    slow = next(r for r in runs if r.partition == "d0")
    others = [r for r in runs if r.partition != "d0"]
    assert slow.attempt == 2 and slow.status == "succeeded"
    # Every other partition finished long before the waiting run's backoff ran out.
    assert max(r.ended_ms for r in others) + 1000 < slow.ended_ms


async def test_a_duplicated_arrival_never_runs_twice(settings: Settings, out: Out) -> None:
    calls: list[int] = []

    def count(x: Item) -> Item:
        calls.append(x.id)
        return x

    same = {"id": 7, "day": "d7"}
    src = memory_source([[same], [same, {"id": 8, "day": "d8"}]])
    p = pipeline(count, src, out, FAST)
    summary = await run_pipeline(p, settings)
    assert sorted(calls) == [7, 8] and summary.deduped == 1

    # A later worker (a restart) learns the fired runs from the ledger.
    again = await run_pipeline(pipeline(count, memory_source([[same]]), out, FAST), settings)
    assert again.deduped == 1 and sorted(calls) == [7, 8]
    assert len(await list_runs(settings)) == 2


async def test_an_attempt_that_exceeds_its_timeout_fails(settings: Settings,
                                                         out: Out) -> None:
    async def hangs(x: Item) -> Item:
        await asyncio.sleep(30)
        return x

    policy = RetryPolicy(attempts=1, timeout_s=0.2)
    summary = await run_pipeline(
        pipeline(hangs, memory_source([[{"id": 1, "day": "d"}]]), out, policy), settings)
    assert summary.dead_lettered == 1
    (d,) = values(await read_topic(settings, settings.dead_letter_topic))
    assert d["error"]["type"] == "TimeoutError"  # type: ignore[index]


async def test_replay_after_a_fix_runs_again_once(settings: Settings, out: Out,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fixed = False

    def needs_fix(x: Item) -> Item:
        if not fixed:
            raise ValueError("no rate for this currency")
        return x

    src = memory_source([[{"id": 1, "day": "d1"}, {"id": 2, "day": "d2"}]])
    first = await run_pipeline(pipeline(needs_fix, src, out, FAST), settings)
    assert first.dead_lettered == 2 and first.records_out == 0

    # The CLI (in a thread: it runs its own event loop) reads what the workers wrote.
    cli = ["--namespace", settings.namespace, "--state-dir", str(settings.state_dir)]
    if settings.kafka_bootstrap:
        cli += ["--kafka", settings.kafka_bootstrap]
    assert await asyncio.to_thread(main, ["dlq", "list", "--json", *cli]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [d["kind"] for d in listed] == ["stage", "stage"]
    dead_only = ["runs", "list", "--json", "--status", "dead-lettered", *cli]
    assert await asyncio.to_thread(main, dead_only) == 0
    dead_runs = orjson.loads(capsys.readouterr().out)
    assert len(dead_runs) == 2

    fixed = True
    retry = ["runs", "retry", dead_runs[0]["run_id"][:12], *cli]
    assert await asyncio.to_thread(main, retry) == 0
    entries = await list_dead_letters(settings)
    other = next(e for e in entries if e.body["run_id"] != dead_runs[0]["run_id"])
    await replay(settings, [other])
    await replay(settings, [other])  # the same replay twice is one run

    src_again = memory_source([])
    second = await run_pipeline(pipeline(needs_fix, src_again, out, FAST), settings)
    assert (second.records_out, second.deduped) == (2, 1)
    assert sorted(int(r["id"]) for r in rows(out)) == [1, 2]
    runs = await list_runs(settings)
    assert sorted((r.status, r.replay) for r in runs) == [
        ("dead-lettered", 0), ("dead-lettered", 0), ("succeeded", 1), ("succeeded", 1)]
    # Replayed, the dead-lettered runs left the ledger's compacted topic (open runs only) for
    # its retained one, where they stay listed until retention.
    open_runs = fold_raw(await read_topic(settings, runs_topic(settings.namespace)))
    assert not open_runs


async def test_source_dead_letters_are_not_replayable(settings: Settings,
                                                      out: Out) -> None:
    src = memory_source([[{"id": "not-a-number", "day": "d"}]])
    await run_pipeline(pipeline(lambda x: x, src, out, FAST), settings)
    (entry,) = await list_dead_letters(settings)
    assert entry.kind == "source" and not entry.replayable
    from streamflow.errors import OpsError

    with pytest.raises(OpsError, match="rejected by a source"):
        await replay(settings, [entry])


def test_retry_policy_backoff_and_validation() -> None:
    p = RetryPolicy(attempts=4, backoff_s=1, max_backoff_s=3, jitter=0.5)
    assert [p.delay_s(n, rand=lambda: 0.0) for n in (1, 2, 3)] == [1, 2, 3]
    assert p.delay_s(2, rand=lambda: 1.0) == 1.0
    assert p.should_retry(ValueError(), 3) and not p.should_retry(ValueError(), 4)
    assert not RetryPolicy(attempts=3, retry_on=(ConnectionError,)).should_retry(ValueError(), 1)
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize("settings", ["kafka"], indirect=True)
async def test_the_ledger_topic_is_compacted_on_kafka(
    settings: Settings, out: Out
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    await run_pipeline(pipeline(lambda x: x, memory_source([[{"id": 1, "day": "d"}]]), out,
                                FAST), settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (resp,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, f"{settings.namespace}.runs")])
    finally:
        await admin.close()
    configs = {c[0]: c[1] for c in resp.resources[0][4]}
    assert configs["cleanup.policy"] == "compact"
