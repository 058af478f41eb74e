"""Assets (named data products with a versioned contract) and deterministic ids."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from streamflow.errors import PipelineError

from ._sensitive import sensitive_fields
from ._topics import DEFAULT_NAMESPACE, asset_topic

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Asset(Generic[M]):
    """A named data product with a versioned contract; one topic each.

    ``key`` names the contract field used as the record key; ``partition_by`` names the field
    barriers align on (a date, a store); it defaults to the key.
    """

    name: str
    contract: type[M]
    key: str | None = None
    partition_by: str | None = None
    version: int = 1
    event_time: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise PipelineError(
                f"asset name {self.name!r} must be non-empty letters, digits, '_' or '-'"
            )
        # Computed fields count: a tick's day can be derived from its timestamp.
        fields = [*self.contract.model_fields, *self.contract.model_computed_fields]
        for role, fname in (("key", self.key), ("partition_by", self.partition_by),
                            ("event_time", self.event_time)):
            if fname is not None and fname not in fields:
                raise PipelineError(
                    f"asset {self.name!r}: {role}={fname!r} is not a field of "
                    f"{self.contract.__name__} (fields: {', '.join(fields)})"
                )
            if fname is not None and (fname,) in sensitive_fields(self.contract):
                raise PipelineError(
                    f"asset {self.name!r}: {role}={fname!r} is a sensitive field of "
                    f"{self.contract.__name__}; the {role} travels in clear (message keys, "
                    "headers, run ids, the ledger): use a field derived from it, such as a "
                    "hash, instead")

    def topic(self, namespace: str = DEFAULT_NAMESPACE) -> str:
        """Its topic; the namespace keeps several deployments (or tests) apart on one broker."""
        return asset_topic(namespace, self.name)

    def key_of(self, record: BaseModel) -> str | None:
        return None if self.key is None else str(getattr(record, self.key))

    def key_bytes(self, record: BaseModel) -> bytes | None:
        """The record key as a message key."""
        return None if self.key is None else str(getattr(record, self.key)).encode()

    def key_and_partition(self, record: BaseModel) -> tuple[bytes | None, bytes]:
        """``key_bytes`` and ``partition_of`` (encoded) at once: the partition key is most often
        the key itself."""
        if self.partition_by is None and self.key is not None:
            key = getattr(record, self.key)
            if isinstance(key, str | int):
                k = str(key).encode()
                return k, k
        return self.key_bytes(record), self.partition_of(record).encode()

    def partition_of(self, record: BaseModel) -> str:
        fname = self.partition_by or self.key
        if fname is None:
            return "default"
        value = getattr(record, fname)
        return value.isoformat() if hasattr(value, "isoformat") else str(value)

    def event_time_ms(self, record: BaseModel, now_ms: int | None = None) -> int:
        """Its event-time field, else ``now_ms`` (the run's start), else the time now."""
        if self.event_time is not None:
            value = getattr(record, self.event_time)
            if hasattr(value, "timestamp"):
                return int(value.timestamp() * 1000)
        return int(time.time() * 1000) if now_ms is None else now_ms


def stable_id(*parts: str | int) -> str:
    """A deterministic id: the same inputs always give the same id, so redelivery is harmless."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\x1f")
    return h.hexdigest()


def stable_id3(a: str, b: str, c: str) -> str:
    """``stable_id`` of three strings in one hash call (the same id): a run id per record."""
    return hashlib.blake2b(f"{a}\x1f{b}\x1f{c}\x1f".encode(), digest_size=16).hexdigest()


def output_id(run_id: str, i: int) -> str:
    """``stable_id(run_id, i)`` in one hash call: the id of a run's i-th output."""
    return hashlib.blake2b(f"{run_id}\x1f{i}\x1f".encode(), digest_size=16).hexdigest()
