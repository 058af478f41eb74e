"""One place turns a source record into an arrival: the source runner (live) and the backfill
planner (history) read the same sources and must derive the same ids, partition keys and
reasons, so a record read live and again by a backfill is recognised as the same arrival."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from streamflow.connectors import SourceRecord

from ._arrivals import Arrival
from ._assets import Asset, stable_id
from ._deadletters import describe_validation
from ._headers import Mode
from ._sensitive import sensitive_fields


def origin_text(origin: dict[str, Any]) -> str:
    """Where a record came from, for a reason: ``file line n``, else its origin's fields."""
    if "file" in origin and "line" in origin:
        return f"{origin['file']} line {origin['line']}"
    return ", ".join(f"{k}={v}" for k, v in origin.items()) or "record"


def too_large(size: int, limit: int) -> str:
    """Why a record of ``size`` bytes is dead-lettered instead of published or processed."""
    return (f"record of {size} bytes exceeds max_record_bytes ({limit}); raise "
            "STREAMFLOW_MAX_RECORD_BYTES if such records are expected")


def source_arrival_id(asset: Asset[Any], rec: SourceRecord) -> str:
    return stable_id(asset.name, rec.record_id)


def reject_id(asset: Asset[Any], origin: dict[str, Any]) -> str:
    """A rejected row's dead-letter id: the same reject read again gets the same id."""
    return stable_id(asset.name, "reject", str(origin))


def check_record(asset: Asset[Any], rec: SourceRecord) -> BaseModel | str:
    """The record as its asset's contract, or why it is not one (without where it came from)."""
    try:
        record: BaseModel = asset.contract.model_validate(rec.data)
    except ValidationError as e:
        return describe_validation(e, asset.contract.__name__, asset.version,
                                   sensitive_fields(asset.contract))
    return record


def source_arrival(asset: Asset[Any], arrival_id: str, record: BaseModel, source: str,
                   mode: Mode, *, key: bytes | None, event_time_ms: int | None = None,
                   traceparent: bytes | None = None) -> Arrival:
    """The arrival of a checked source record; ``key`` is ``asset.key_bytes(record)``, passed
    in because the caller needed it first (the send span's attributes)."""
    return Arrival(arrival_id, asset.name, asset.partition_of(record), asset.version,
                   asset.event_time_ms(record) if event_time_ms is None else event_time_ms,
                   f"source:{source}", mode, key, record.model_dump_json().encode(),
                   traceparent)
