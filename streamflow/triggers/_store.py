"""A trigger's changelog with bounded state: besides its partition states it keeps, per input
partition, a *mark* (the watermark and the input positions whose effects are in the changelog)
written beside the tombstones of the states it retires, and a window's records one per
changelog record, appended as they arrive instead of rewritten whole.

A retired state leaves no trace but the mark: an arrival older than the watermark is late, and
a redelivered input at or below the marked position is recognised as one and skipped.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamflow.model import OutMessage
from streamflow.state import StateStore
from streamflow.transports import Transport

from ._state import PartitionState, Slot

TRIGGER_STATE_VERSION = 2
"""v2 adds marks and a window's records as records of their own (v1: inline in the window)."""
SEP = "\x1f"
"""Joins a window's key and a record's slot key into the record's changelog key; also starts
a mark's key, so no partition key can collide with one."""
MARK = f"{SEP}mark@"


class DueHeap:
    """Keys by due time (ms). Entries may go stale: whoever pops one checks it still holds."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._h)

    def push(self, due_ms: int, key: str) -> None:
        heapq.heappush(self._h, (due_ms, key))

    def head(self) -> tuple[int, str] | None:
        return self._h[0] if self._h else None

    def pop(self) -> str:
        return heapq.heappop(self._h)[1]

    def due(self, now_ms: int) -> Iterator[str]:
        """Pops every key due at ``now_ms``, earliest first."""
        h = self._h
        while h and h[0][0] <= now_ms:
            yield heapq.heappop(h)[1]


@dataclass(slots=True)
class PartitionBook:
    """What a trigger tracks per input partition number, rebuilt when the partition is restored."""

    wm: int = 0
    """The watermark: the highest event time seen on the partition's live inputs."""
    wms: dict[str, int] = field(default_factory=dict)
    """A barrier's watermark of each input (asset name): inputs keep clocks of their own."""
    marked: dict[str, int] = field(default_factory=dict)
    """Input positions (topic: offset) in the last durable mark: a redelivery at or below one
    is skipped."""
    pos: dict[str, int] = field(default_factory=dict)
    """Input positions offered since the partition was restored (the next mark's)."""
    closing: DueHeap = field(default_factory=DueHeap)
    """Windows by when they close, in event time."""
    retire: dict[str, DueHeap] = field(default_factory=dict)
    """Fired barrier partitions, per input, by when that input's watermark lets them go."""
    retiring: list[str] = field(default_factory=list)
    """Fired and closed, to tombstone once no gate holds them."""

    def redelivered(self, topic: str, offset: int) -> bool:
        return offset <= self.marked.get(topic, -1)


class TriggerStore(StateStore[PartitionState]):
    """The changelog of a barrier or window, with the partition books that bound it."""

    version = TRIGGER_STATE_VERSION
    readable = frozenset({1, TRIGGER_STATE_VERSION})

    def __init__(self, transport: Transport, topic: str, stage: str,
                 on_settled: Callable[[int, PartitionBook], None]) -> None:
        super().__init__(transport, topic, stage, PartitionState.from_json)
        self.on_settled = on_settled
        self.books: dict[int, PartitionBook] = {}
        self.legacy: set[str] = set()
        """Windows whose records are inline in their header (written by v1): the header keeps
        them inline until the window's next record writes each as a record of its own."""
        self._marks: dict[int, tuple[int, dict[str, int], dict[str, int]]] = {}
        self._slots: dict[int, dict[str, tuple[str, str, Slot]]] = {}

    def book(self, partition: int) -> PartitionBook:
        book = self.books.get(partition)
        if book is None:
            book = self.books[partition] = PartitionBook()
        return book

    def apply(self, key: str, d: dict[str, Any], version: int, partition: int) -> None:
        if key.startswith(MARK):
            self._marks[partition] = (int(d["wm"]), {str(t): int(o) for t, o in d["pos"].items()},
                                      {str(a): int(t) for a, t in d.get("wms", {}).items()})
        elif "w" in d:  # one record of a window: attached once its window is read
            slots = self._slots.setdefault(partition, {})
            slots.pop(key, None)  # a newer version: last in arrival order
            slots[key] = (str(d["w"]), str(d["k"]), Slot.from_json(d))
        else:
            state = self.states[key] = PartitionState.from_json(d)
            if state.window_start_ms is not None and state.slots:
                self.legacy.add(key)

    def drop(self, key: str, partition: int) -> None:
        self.states.pop(key, None)
        self._slots.get(partition, {}).pop(key, None)

    def settle(self, partition: int) -> None:
        for wkey, skey, slot in self._slots.pop(partition, {}).values():
            state = self.states.get(wkey)
            if state is not None:
                state.slots[skey] = slot
        wm, marked, wms = self._marks.pop(partition, (0, {}, {}))
        book = self.books[partition] = PartitionBook(wm, wms, marked)
        self.on_settled(partition, book)  # the trigger adds what its live states have seen

    async def forget(self, partitions: set[int]) -> None:
        await super().forget(partitions)
        for p in partitions:
            self.books.pop(p, None)
            self._marks.pop(p, None)
            self._slots.pop(p, None)
        self.legacy &= set(self.states)

    def header(self, key: str, state: PartitionState, inline: bool | None = None
               ) -> OutMessage:
        """A window without its records (each is a record of its own), unless they are still
        inline (``legacy``): then with them, or writing it would lose them."""
        d = state.to_json(slots=key in self.legacy if inline is None else inline)
        d["v"] = self.version
        return OutMessage(self.topic, orjson.dumps(d), key.encode(), [],
                          partition=state.kafka_partition)

    def slot(self, wkey: str, skey: str, slot: Slot, kafka_partition: int) -> OutMessage:
        d = {**slot.to_json(), "w": wkey, "k": skey, "v": self.version}  # to_json is shared
        return OutMessage(self.topic, orjson.dumps(d), _slot_key(wkey, skey).encode(), [],
                          partition=kafka_partition)

    def drop_slot(self, wkey: str, skey: str, kafka_partition: int) -> OutMessage:
        return self.tombstone(_slot_key(wkey, skey), kafka_partition)

    def retire(self, key: str, state: PartitionState, slots: bool) -> list[OutMessage]:
        """Tombstones for a state (and, ``slots``, each of a window's records)."""
        kp = state.kafka_partition
        out = [self.drop_slot(key, s, kp) for s in state.slots] if slots else []
        out.append(self.tombstone(key, kp))
        del self.states[key]
        self.legacy.discard(key)
        return out

    def records_of(self, key: str, state: PartitionState) -> list[OutMessage]:
        """A barrier is one record; a window its header and a record per slot (inline in the
        header while ``legacy``)."""
        if state.window_start_ms is None:
            return [self.message(key, state)]
        kp = state.kafka_partition
        inline = key in self.legacy  # read once: a checkpoint encodes in a thread
        slots = [] if inline else [self.slot(key, k, s, kp) for k, s in state.slots.items()]
        return [self.header(key, state, inline), *slots]

    def partition_records(self, partition: int) -> list[OutMessage]:
        """The partition's mark: its durable positions, and the watermarks as they are now
        (a checkpoint is taken at a clean stop, when every input behind them is committed)."""
        book = self.books.get(partition)
        if book is None:
            return []
        d = {"v": self.version, "kafka_partition": partition, "wm": book.wm, "wms": book.wms,
             "pos": book.marked}
        return [OutMessage(self.topic, orjson.dumps(d), f"{MARK}{partition}".encode(), [],
                           partition=partition)]

    def mark(self, partition: int) -> OutMessage:
        """The partition's watermark and positions, durable with the changes they cover."""
        book = self.book(partition)
        book.marked.update(book.pos)
        return self.partition_records(partition)[0]


def _slot_key(wkey: str, skey: str) -> str:
    """A window record's changelog key."""
    return f"{wkey}{SEP}{skey}"
