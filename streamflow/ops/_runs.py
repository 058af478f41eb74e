"""Operator tools over the transport: the run ledger and the dead-letter topic.

Both live on the transport (Kafka topics, or the embedded log), so these read the same truth
whichever worker wrote it and wherever the CLI runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streamflow.errors import OpsError
from streamflow.model import (
    H_ATTEMPT,
    H_PARTITION,
    H_REPLAY,
    H_RETRY_AT,
    OutMessage,
    RunRecord,
    Settings,
    mask_payload,
    replay_topic,
    runs_topic,
)
from streamflow.state import close_runs, ensure_ledger, read_ledger, validated
from streamflow.transports import Transport, make_transport

from ._payloads import read_whole


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One dead letter; its id is ``<partition>:<offset>`` on the dead-letter topic."""

    id: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", "stage"))

    @property
    def consumer(self) -> str:
        return str(self.body.get("stage", ""))

    def shown(self, reveal: bool = False) -> dict[str, Any]:
        """As an operator sees it: the payload's sensitive fields masked unless ``reveal``
        (the dead letter itself keeps them: replay needs the record)."""
        body = {"id": self.id, **self.body}
        names = body.get("sensitive")
        if not reveal and names and isinstance(body.get("payload"), str):
            body["payload"] = mask_payload(body["payload"], [str(n) for n in names])
        return body

    @property
    def replayable(self) -> bool:
        return self.kind in ("stage", "sink", "gate") and bool(self.body.get("arrival"))


async def list_runs(settings: Settings) -> list[RunRecord]:
    t = make_transport(settings)
    await t.start()
    try:
        return list(validated(await read_ledger(t, runs_topic(settings.namespace))).values())
    finally:
        await t.close()


async def list_dead_letters(settings: Settings) -> list[DeadLetterEntry]:
    t = make_transport(settings)
    await t.start()
    try:
        msgs = await t.read_topic(settings.dead_letter_topic)
    finally:
        await t.close()
    out = []
    for m in msgs:
        try:
            body = orjson.loads(m.value)
        except orjson.JSONDecodeError:
            body = {"reason": "unreadable dead letter", "payload": m.value.decode("latin-1")}
        out.append(DeadLetterEntry(f"{m.partition}:{m.offset}", body))
    return out


async def whole_payload(settings: Settings, entry: DeadLetterEntry) -> str:
    """The dead letter's payload, whole: from where it says, if its own copy was truncated."""
    if "truncated" not in entry.body:
        return str(entry.body.get("payload", ""))
    t = make_transport(settings)
    await t.start()
    try:
        return await read_whole(t, entry.id, entry.body)
    finally:
        await t.close()


def find(entries: Sequence[DeadLetterEntry], ids: Sequence[str]) -> list[DeadLetterEntry]:
    by_id = {e.id: e for e in entries}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise OpsError(f"no dead letter with id {', '.join(missing)}; "
                       "`streamflow dlq list` shows the ids")
    return [by_id[i] for i in ids]


async def replay(settings: Settings, entries: Sequence[DeadLetterEntry]) -> list[str]:
    """Re-inject dead letters into their stage's or sink's replay lane, after a fix.

    A replay is a new run (its id includes the replay generation), so it runs even though the
    failed run is final; replaying the same dead letter twice makes the same run id, which the
    ledger then dedupes.
    """
    bad = [e for e in entries if not e.replayable]
    if bad:
        raise OpsError(
            f"dead letter(s) {', '.join(e.id for e in bad)} cannot be replayed: they were "
            "rejected by a source (fix the input and let the source read it again)")
    t = make_transport(settings)
    await t.start()
    try:
        await t.ensure_topics(sorted({replay_topic(settings.namespace, e.consumer)
                                      for e in entries}))
        out = [await _replayed(t, settings, e) for e in entries]
        # The replays run under new run ids: the dead-lettered runs they replace are resolved.
        ledger = runs_topic(settings.namespace)
        await ensure_ledger(t, ledger, settings.ledger_retention_s)
        out += await close_runs(t, ledger, [str(e.body["run_id"]) for e in entries
                                            if e.kind == "stage" and e.body.get("run_id")])
        await t.publish(out)
    finally:
        await t.close()
    return [m.topic for m in out]


async def _replayed(t: Transport, settings: Settings, e: DeadLetterEntry) -> OutMessage:
    """The dead letter as its replay lane takes it, with its whole payload."""
    now_ms = str(int(time.time() * 1000)).encode()
    arrival: dict[str, str] = e.body["arrival"]
    headers = [(k, v.encode()) for k, v in arrival.items()
               if k not in (H_ATTEMPT, H_RETRY_AT, H_REPLAY)]
    generation = int(arrival.get(H_REPLAY, "0")) + 1
    headers += [(H_REPLAY, str(generation).encode()), (H_ATTEMPT, b"1"), (H_RETRY_AT, now_ms)]
    key = e.body.get("origin", {}).get("key")
    pkey = arrival.get(H_PARTITION)  # its partition number, where its barrier or hold lives
    payload = await read_whole(t, e.id, e.body)
    return OutMessage(replay_topic(settings.namespace, e.consumer), payload.encode(),
                      key.encode() if isinstance(key, str) else None, headers,
                      partition_key=pkey.encode() if pkey is not None else None)


async def retry_run(settings: Settings, run_id: str) -> list[str]:
    runs = {r.run_id: r for r in await list_runs(settings)}
    run = runs.get(run_id) or next(
        (r for r in runs.values() if r.run_id.startswith(run_id)), None)
    if run is None:
        raise OpsError(f"no run {run_id!r} in the ledger; `streamflow runs list` shows them")
    if run.status not in ("dead-lettered", "held"):
        raise OpsError(f"run {run.run_id} is {run.status}; only dead-lettered runs and runs a "
                       "quality gate holds are retried")
    entries = [e for e in await list_dead_letters(settings)
               if e.body.get("run_id") == run.run_id and e.replayable]
    if not entries:
        raise OpsError(f"run {run.run_id} has no dead letter left to replay")
    return await replay(settings, entries[-1:])
