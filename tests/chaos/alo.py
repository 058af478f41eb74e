"""At least once under the same chaos (issue 17, item 7): a second fleet, started without
``--exactly-once`` in a namespace of its own, gets the same input and is SIGKILLed after the
exactly-once fleet is, once that one has recovered (the broker kill hits both), and its outputs
are judged per kill.

Why duplicates are bounded. At least once, a consumer publishes what it handled and commits
its input offsets once the publish is acknowledged, at most every ``commit_interval_s`` while
busy (``_Consumer.run``). A SIGKILL loses the commit of everything handled since the last
completed one, and the partition's next owner reads it again from the committed offset. So a
kill duplicates at most the inputs that were past the committed offsets of the partitions the
killed worker owned (every partition, for a broker kill): measured here, after the run, as the
records on each input partition produced up to the kill's time, less that group's offset
committed at the kill. Stages skip runs they already fired (by run id, from the ledger), so
their duplicates are rare (a ledger write lost while its outputs landed); dead letters of
rejected records and a ``kafka`` sink's writes are repeated for every such input. An output
duplicated upstream is a new input downstream (a priced order a ``kafka`` sink exports), so a
group's bound also counts the duplicates its input topics got at that kill. A ``files`` source
(the embedded transport) republishes the records of files it had claimed but not acknowledged:
their count at the kill is the sources' bound (their arrivals and their own dead letters).

Each duplicate (two consecutive copies of one output) is put on the first kill between the
two copies whose scope holds the input partition it came from; one that no kill explains
counts against a bound of 0.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson

from streamflow.model import Message

from .harness import CommitWatch, Fleet
from .oracle import POISON_ID

Offsets = dict[tuple[str, str, int], int]  # (group, topic, partition) -> committed offset
OUTPUTS = ("priced", "settled", "export.priced", "dead-letters")
INPUTS = ("orders", "payments")
NO_KILL = "(no kill)"
SOURCES = "sources"  # the group name the sources' writes are judged under
REBALANCE_S = 30.0  # how long after a kill a rebalance it caused is looked for


@dataclass
class Kill:
    fault: str
    at: float
    t_s: float
    worker: str | None
    scope: dict[str, list[int]] | None  # partitions owned per group; None: all of them
    committed: Offsets = field(default_factory=dict)
    recovery_s: float | None = None
    unacked: int | None = None  # records of files the dead worker's sources had claimed

    def covers(self, group: str, partition: int) -> bool:
        if group.endswith(SOURCES):
            return self.unacked is not None
        return self.scope is None or partition in self.scope.get(group, ())


class AtLeastOnce:
    """The at-least-once fleet's kills, each taken once the exactly-once fleet recovered from
    the same kill."""

    def __init__(self, fleet: Fleet, watch: CommitWatch,
                 claimed: Callable[[], int] | None = None) -> None:
        self.fleet, self.watch, self.claimed = fleet, watch, claimed
        self.t0 = time.time()
        self.kills: list[Kill] = []
        self._owned: dict[str, dict[str, list[int]]] = {}
        self._after: list[asyncio.Task[None]] = []

    async def kill(self, worker_id: str, fault: str = "sigkill") -> None:
        """SIGKILL and restart at once with the same id, as the exactly-once worker is."""
        proc = self.fleet.current[worker_id]
        # A worker killed before its /status showed anything owns what its previous
        # incarnation did (static membership gives it the same partitions back).
        owned = await self.fleet.fresh_assignments(proc) or self._owned.get(worker_id, {})
        self._owned[worker_id] = owned
        at = await self.fleet.kill(proc)
        k = Kill(fault, at, round(at - self.t0, 2), worker_id, owned)
        if self.claimed is not None:  # counted before the restart moves them back
            k.unacked = self.claimed()
        self.kills.append(k)
        self.fleet.start(worker_id)
        self._after.append(asyncio.create_task(self._recover(k)))

    def committed_now(self) -> Offsets:
        """What was committed when last seen: taken just before the broker dies."""
        return dict(self.watch.offsets)

    def broker_killed(self, at: float, committed: Offsets) -> None:
        k = Kill("broker-sigkill", at, round(at - self.t0, 2), None, None, committed)
        self.kills.append(k)
        self._after.append(asyncio.create_task(self._recover(k, timeout=180)))

    async def _recover(self, k: Kill, timeout: float = 60) -> None:
        """Recovery: the first commit on the kill's partitions past what a poll begun after
        the kill read. A worker's committed offsets at its kill are read that way too; the
        broker's were taken just before it died."""
        base = await self.watch.baseline(k.at, timeout=timeout)
        if k.scope is not None:
            k.committed = base
        scope = k.scope or {g: list(range(64)) for g in self.watch.groups}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.watch.first_after(k.at, scope, base)
            if r is not None:
                k.recovery_s = round(r, 3)
                return
            await asyncio.sleep(0.1)

    async def settled(self) -> None:
        await asyncio.gather(*self._after)

    def check_alive(self) -> None:
        self.fleet.check_alive()


def claimed_records(landing: Path) -> int:
    """Lines of the files a dead worker's ``files`` sources had claimed and not acknowledged
    (``<landing>/<asset>/.claimed/``): what its next start republishes."""
    return sum(len(f.read_bytes().splitlines()) for f in landing.glob("*/.claimed/*")
               if f.is_file())


# ------------------------------------------------------------------------------- the judgement

def uncommitted(k: Kill, inputs: dict[str, list[str]],
                topics: dict[str, list[Message]]) -> dict[str, int]:
    """Per group: records on its input partitions in the kill's scope that were produced up to
    the kill (by their timestamps; an in-flight one counts) and not committed at the kill."""
    at_ms = int(k.at * 1000)
    out: dict[str, int] = {}
    for group, names in inputs.items():
        n = 0
        for t in names:
            ends: dict[int, int] = {}
            for m in topics[t]:
                if m.timestamp_ms <= at_ms and k.covers(group, m.partition):
                    ends[m.partition] = max(ends.get(m.partition, 0), m.offset + 1)
            n += sum(max(0, end - k.committed.get((group, t, p), 0)) for p, end in ends.items())
        out[group] = n
    return out


def _group_of(name: str, row: dict[str, Any], ns: str) -> str:
    """The group that wrote a record of ``<ns>.<name>``."""
    if name in INPUTS or (name == "dead-letters" and row.get("kind") == "source"):
        return f"{ns}.{SOURCES}"
    if name == "dead-letters":
        stage = str(row.get("stage"))
        return f"{ns}.stage.{stage}" if stage in ("price", "settle") else f"{ns}.sink.{stage}"
    return {"priced": f"{ns}.stage.price", "settled": f"{ns}.stage.settle",
            "export.priced": f"{ns}.sink.kafka-priced"}[name]


def _copies(name: str, msgs: list[Message], ns: str, partition_of: Callable[[str], int]
            ) -> dict[str, list[tuple[int, int, str, int]]]:
    """Copies of each record of ``<ns>.<name>``, by its key: (timestamp, offset, the group
    that wrote it, the input partition it came from), in the order they were written."""
    by_key: dict[str, list[tuple[int, int, str, int]]] = defaultdict(list)
    for m in msgs:
        if name in INPUTS:  # the key: an order id, or a poison id
            key = m.key.decode() if m.key is not None else f"?{m.partition}:{m.offset}"
            by_key[key].append((m.timestamp_ms, m.offset, f"{ns}.{SOURCES}", m.partition))
            continue
        row = orjson.loads(m.value)
        if name == "dead-letters":
            found = POISON_ID.search(str(row.get("payload", "")))
            key = found.group() if found else f"?{m.partition}:{m.offset}"
            origin = row.get("origin") or {}
            by_key[key].append((m.timestamp_ms, m.offset, _group_of(name, row, ns),
                                int(origin.get("partition", -1))))
        else:
            key = str(row.get("order_id"))
            by_key[key].append((m.timestamp_ms, m.offset, _group_of(name, row, ns),
                                partition_of(key)))
    for copies in by_key.values():
        copies.sort()
    return by_key


Dups = dict[tuple[str, str, bool], int]  # (topic, group, at a rebalance) -> duplicates


def attribute(kills: list[Kill], written: dict[str, list[Message]], ns: str,
              inputs_of: dict[str, list[str]], partition_of: Callable[[str], int]
              ) -> dict[str, Dups]:
    """Duplicates per kill label and (topic, group, at a rebalance). One no kill lies between
    goes with the kill that duplicated the same key on an input topic of its group (cascade),
    else, if both copies came within ``REBALANCE_S`` after a kill, with that kill as a batch
    in hand at a rebalance the restart caused."""
    out: dict[str, Dups] = defaultdict(lambda: defaultdict(int))
    labels: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name in (*INPUTS, *OUTPUTS):  # upstream first: a cascade looks its input up
        for key, copies in _copies(name, written.get(name, []), ns, partition_of).items():
            for a, b in pairwise(copies):
                k = next((k for k in kills if a[0] <= k.at * 1000 < b[0]
                          and k.covers(b[2], b[3])), None)
                label = label_of(k) if k is not None else next(
                    (x for t in inputs_of.get(b[2], ()) for x in labels.get((t, key), ())),
                    NO_KILL)
                rebalance = False
                if label == NO_KILL:
                    after = [k for k in kills if k.at * 1000 <= a[0] <= b[0]
                             <= (k.at + REBALANCE_S) * 1000]
                    if after:
                        label, rebalance = label_of(after[-1]), True
                labels[(name, key)].append(label)
                out[label][(name, b[2], rebalance)] += 1
    return out


def label_of(k: Kill) -> str:
    return f"{k.fault} {k.worker or 'broker'} @{k.t_s}s"


def per_kill(kills: list[Kill], inputs: dict[str, list[str]], ns: str,
             written: dict[str, list[Message]], partition_of: Callable[[str], int],
             in_hand: int = 0) -> list[dict[str, Any]]:
    """One row per kill (and one for duplicates no kill explains). ``inputs``: each group's
    input topics; ``written``: the records of ``<ns>.<name>``, inputs and outputs;
    ``in_hand``: the most a group may redo at the rebalances one kill causes."""
    short = len(ns) + 1
    inputs_of = {g: [t[short:] for t in ts] for g, ts in inputs.items()}
    topics = {f"{ns}.{n}": ms for n, ms in written.items()}
    dups = attribute(kills, written, ns, inputs_of, partition_of)
    rows = []
    for k in kills:
        label = label_of(k)
        bound = {**uncommitted(k, inputs, topics), f"{ns}.{SOURCES}": k.unacked or 0}
        rows.append(_row(label, k.recovery_s, bound, dups.get(label, {}), inputs_of, short,
                         in_hand))
    rows.append(_row(NO_KILL, None, {}, dups.get(NO_KILL, {}), inputs_of, short, 0))
    return rows


def _row(label: str, recovery: float | None, uncommitted: dict[str, int], dups: Dups,
         inputs_of: dict[str, list[str]], short: int, in_hand: int) -> dict[str, Any]:
    """A group's bound: its inputs left uncommitted, plus the duplicates its input topics got
    at the same kill (each is handled again); at a rebalance, ``in_hand``."""
    wrote: dict[str, int] = defaultdict(int)
    redone: dict[str, int] = defaultdict(int)
    got: dict[str, int] = defaultdict(int)
    for (topic, g, rebalance), n in dups.items():
        (redone if rebalance else wrote)[g] += n
        got[topic] += n
    bound = {g: n + sum(got[t] for t in inputs_of.get(g, ())) for g, n in uncommitted.items()}
    over = {g[short:]: n for g, n in wrote.items() if n > bound.get(g, 0)}
    over.update({f"{g[short:]} at a rebalance": n for g, n in redone.items() if n > in_hand})
    return {"kill": label, "recovery_s": recovery,
            "uncommitted": {g[short:]: n for g, n in uncommitted.items() if n},
            "duplicated": {f"{t} ({g[short:]}){' at a rebalance' if r else ''}": n
                           for (t, g, r), n in sorted(dups.items())},
            "bound": sum(bound.values()),
            "total": sum(dups.values()),
            "at_rebalance": sum(redone.values()),
            "republished": sum(n for (t, _, _), n in dups.items() if t in INPUTS),
            "over": over}


def table(rows: list[dict[str, Any]], poll_batch: int, partitions: int) -> str:
    lines = [f"{'kill':<28} {'duplicates':>10} {'bound':>6} {'rebalance':>9} {'recovery_s':>10}"
             f"  (poll_batch x partitions = {poll_batch * partitions})"]
    for r in rows:
        lines.append(f"{r['kill']:<28} {r['total'] - r['at_rebalance']:>10} {r['bound']:>6} "
                     f"{r['at_rebalance']:>9} "
                     f"{r['recovery_s'] if r['recovery_s'] is not None else '-':>10}  "
                     f"uncommitted {r['uncommitted']} duplicated {r['duplicated']}")
    return "\n".join(lines)


def check_at_least_once(report: dict[str, Any], kills: int) -> None:
    """Nothing lost, the table holds each key once, every poison record dead-lettered, and
    every kill's duplicates within what it left uncommitted."""
    outcome = {k: report[k] for k in ("lost", "unexpected", "mismatched", "dead_letter_stray",
                                      "dead_letter_without_reason", "poison_blocking")}
    assert outcome == dict.fromkeys(outcome, 0), (outcome, report["outputs"])
    pg = report["outputs"]["postgres"]
    assert pg["duplicated"] == pg["lost"] == pg["unexpected"] == 0, pg
    assert report["dead_lettered"] == report["poison"], report["dead_letter_missing"]
    rows = report["kills"]
    assert len(rows) == kills + 1, rows
    assert all(r["recovery_s"] is not None for r in rows[:-1]), rows
    assert all(not r["over"] and r["total"] - r["at_rebalance"] <= r["bound"]
               for r in rows), rows
    assert rows[-1]["total"] == 0, f"duplicates no kill explains: {rows[-1]}"
    counted = report["duplicated"] + report["dead_letter_duplicated"]
    assert sum(r["total"] - r["republished"] for r in rows) == counted, (rows, counted)
    assert sum(r["bound"] for r in rows) > 0, "no kill left any input uncommitted"
