"""Local checkpoints of changelog partitions: a restore reads the checkpoint and the
changelog's tail past it, not the changelog's history.

Kafka compacts a changelog only behind its active segment, so for an hour or more a restore
from offset 0 reads every change ever made, not the live keys (71,000 records a partition for
0.67 MB of live state in ``bench soak``). A checkpoint is the fold of one changelog partition
up to an offset: the latest record of each live key, written when its stage stops cleanly
(after its last commit, so nothing in it is uncommitted). Folding the records after that
offset on top of it gives what a fold from the start gives, because a fold keeps the latest
record per key, whoever wrote the tail (another worker after a rebalance included).

Two things make a checkpoint unusable, and a restore then reads from the start:

- It is older than ``MAX_AGE_S``: the changelog may have dropped tombstones written after it
  (both transports keep them 24 hours), and a key deleted since would come back.
- Its offset is past the changelog's end: the topic was deleted and created again.

The file is written beside the worker's other local state (``state_dir``), replaced
atomically, and checked by length and CRC when read; a damaged one is ignored with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from streamflow.model import Message

log = logging.getLogger("streamflow.state")

MAX_AGE_S = 12 * 3600.0
"""Half the tombstone retention of both transports (``delete.retention.ms``, 24 hours)."""
MAGIC = b"SFCKPT1\n"
_LEN = struct.Struct(">II")
CHUNK = 5000
"""Records per chunk handed to a fold, as ``scan_topic`` does."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A checkpoint as read back: the changelog offset it covers (exclusive) and its records."""

    offset: int
    written_ms: int
    records: list[tuple[bytes, bytes]]

    def chunks(self, topic: str, partition: int) -> Iterator[list[Message]]:
        """The records as changelog messages, in chunks (a fold's input)."""
        at = self.offset - 1
        for i in range(0, len(self.records), CHUNK):
            yield [Message(topic, partition, at, k, v, [], self.written_ms)
                   for k, v in self.records[i:i + CHUNK]]


class Checkpoints:
    """The checkpoint files of one worker's transport and namespace."""

    def __init__(self, root: Path, max_age_s: float = MAX_AGE_S) -> None:
        self.root, self.max_age_s = root, max_age_s

    @classmethod
    def under(cls, state_dir: Path, namespace: str, kafka_bootstrap: str | None) -> Checkpoints:
        """One folder per log: checkpoints of one Kafka cluster never meet another's."""
        log_id = "embedded" if kafka_bootstrap is None else "kafka-" + hashlib.blake2b(
            kafka_bootstrap.encode(), digest_size=6).hexdigest()
        return cls(state_dir / namespace / "checkpoints" / log_id)

    def path(self, topic: str, partition: int) -> Path:
        return self.root / topic / f"{partition}.ckpt"

    def save(self, topic: str, partition: int, offset: int,
             records: Sequence[tuple[bytes, bytes]]) -> int:
        """Write (replacing) the checkpoint of ``topic``/``partition`` at ``offset``; the
        bytes written. Blocking: run it in a thread."""
        body = bytearray()
        for k, v in records:
            body += _LEN.pack(len(k), len(v))
            body += k
            body += v
        head = orjson.dumps({"topic": topic, "partition": partition, "offset": offset,
                             "written_ms": int(time.time() * 1000), "records": len(records),
                             "bytes": len(body), "crc": zlib.crc32(body)})
        path = self.path(topic, partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC + head + b"\n")
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return len(MAGIC) + len(head) + 1 + len(body)

    def load(self, topic: str, partition: int) -> Snapshot | None:
        """The checkpoint if there is a usable one (None: restore from the start). Blocking."""
        path = self.path(topic, partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("checkpoint %s unreadable (%s); restoring from the changelog", path, e)
            return None
        try:
            snap = _parse(data, topic, partition)
        except (ValueError, KeyError, struct.error) as e:
            log.warning("checkpoint %s is damaged (%s); restoring from the changelog's start",
                        path, e)
            return None
        age_s = time.time() - snap.written_ms / 1000
        if age_s > self.max_age_s:
            log.info("checkpoint %s is %.1f h old (more than %.1f h): restoring from the "
                     "changelog's start", path, age_s / 3600, self.max_age_s / 3600)
            return None
        return snap


def _parse(data: bytes, topic: str, partition: int) -> Snapshot:
    if not data.startswith(MAGIC):
        raise ValueError("not a StreamFlow checkpoint")
    nl = data.index(b"\n", len(MAGIC))
    head = orjson.loads(data[len(MAGIC):nl])
    if head["topic"] != topic or head["partition"] != partition:
        raise ValueError(f"written for {head['topic']}/{head['partition']}")
    body = memoryview(data)[nl + 1:]
    if len(body) != head["bytes"] or zlib.crc32(body) != head["crc"]:
        raise ValueError("length or CRC mismatch (a partial or altered file)")
    records: list[tuple[bytes, bytes]] = []
    at, end = 0, len(body)
    while at < end:
        kl, vl = _LEN.unpack_from(body, at)
        at += _LEN.size
        records.append((bytes(body[at:at + kl]), bytes(body[at + kl:at + kl + vl])))
        at += kl + vl
    if at != end or len(records) != head["records"]:
        raise ValueError("record count mismatch")
    return Snapshot(int(head["offset"]), int(head["written_ms"]), records)
