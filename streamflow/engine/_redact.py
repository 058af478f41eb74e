"""What a loop withholds while it handles a batch: the values of the sensitive fields of the
records in hand (``streamflow.model.Redaction``). Nothing is read unless a text is withheld,
so a batch without failures pays for one list append; an asset without sensitive fields, for
nothing at all."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from streamflow.connectors import SourceBatch
from streamflow.model import (
    H_ASSET,
    H_PLANNED,
    Asset,
    FieldPath,
    Inputs,
    Message,
    PlannedRun,
    Redaction,
    WindowRecords,
    current_redaction,
    is_sensitive,
    sensitive_fields,
    sensitive_names,
)

Pairs = Iterator[tuple[Sequence[FieldPath], Any]]


def names_of(assets: Iterable[Asset[Any]]) -> tuple[str, ...]:
    """The sensitive fields of these assets' records, as a dead letter names them."""
    return tuple(sorted({n for a in assets for n in sensitive_names(a.contract)}))


def _any(assets: Iterable[Asset[Any]]) -> bool:
    return any(sensitive_fields(a.contract) for a in assets)


def source_redaction(asset: Asset[Any], batch: SourceBatch) -> Redaction | None:
    if not sensitive_fields(asset.contract):
        return None
    paths = sensitive_fields(asset.contract)
    r = Redaction()
    r.add_lazy(lambda: [(paths, rec.data) for rec in batch.records]
               + [(paths, rej.payload) for rej in batch.rejects])
    return r


def batch_redaction(msgs: Sequence[Message], by_asset: Mapping[str, Asset[Any]],
                    by_topic: Mapping[str, Asset[Any]],
                    output: Asset[Any] | None = None) -> Redaction | None:
    """For a stage's or sink's batch: each record by its topic's asset (or its header's),
    each input of a planned run by its asset."""
    if not _any([*by_asset.values(), *by_topic.values()]) and not (
            output is not None and sensitive_fields(output.contract)):
        return None
    r = Redaction()
    r.add_lazy(partial(_records, msgs, by_asset, by_topic))
    return r


def _records(msgs: Sequence[Message], by_asset: Mapping[str, Asset[Any]],
             by_topic: Mapping[str, Asset[Any]]) -> Pairs:
    for m in msgs:
        h = dict(m.headers)
        if H_PLANNED in h:
            yield from _planned(m.value, by_asset)
            continue
        asset = by_topic.get(m.topic) or by_asset.get(h.get(H_ASSET, b"").decode("utf-8",
                                                                                  "replace"))
        if asset is not None:
            yield sensitive_fields(asset.contract), m.value


def _planned(body: bytes, by_asset: Mapping[str, Asset[Any]]) -> Pairs:
    try:
        slots = orjson.loads(body)["slots"]
        for name, slot in slots.items():
            asset = by_asset.get(name)
            if asset is not None:
                yield sensitive_fields(asset.contract), str(slot["value"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return  # unreadable: it is dead-lettered as such, naming no value


def add_messages(msgs: Sequence[Message], by_asset: Mapping[str, Asset[Any]]) -> None:
    """Records from elsewhere than the batch (runs parked behind a hold) join it."""
    r = current_redaction()
    if r is not None:
        r.add_lazy(partial(_records, msgs, by_asset, {}))


def add_plan(plan: PlannedRun) -> None:
    """A run's inputs may be records of earlier batches (a barrier, a window)."""
    r = current_redaction()
    if r is not None:
        r.add_lazy(partial(_plan_records, plan.arg))


def _plan_records(arg: Any) -> Pairs:
    if isinstance(arg, BaseModel):
        yield sensitive_fields(type(arg)), arg
    elif isinstance(arg, WindowRecords | Inputs):
        for value in arg.values():
            for rec in value if isinstance(value, list) else [value]:
                if isinstance(rec, BaseModel):
                    yield sensitive_fields(type(rec)), rec


def add_output_error(e: BaseException, asset: Asset[Any] | None) -> None:
    """A stage returned a record its output contract refused: the refused values count."""
    r = current_redaction()
    if r is None or asset is None or not isinstance(e, ValidationError):
        return
    paths = sensitive_fields(asset.contract)
    values = [(paths, err["input"]) for err in e.errors() if not err["loc"]]
    values += [(((),), [err["input"]]) for err in e.errors()  # the value itself, as a leaf
               if err["loc"] and is_sensitive(asset.contract, err["loc"])]
    r.add_lazy(lambda: values)
