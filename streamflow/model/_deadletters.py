"""Dead letters: nothing is dropped; a record that cannot go on is published with its reason."""

from __future__ import annotations

import reprlib
import traceback
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from ._arrivals import DeadLetter
from ._headers import H_REASON, H_TRACEPARENT
from ._messages import OutMessage
from ._payloads import (
    MAX_DEAD_LETTER_BYTES,
    payload_parts,
    payloads_topic,
    truncated,
    where_whole,
)
from ._sensitive import MASK, FieldPath, withheld

_SHOWN = reprlib.Repr()  # bounded: a huge or deeply nested value makes a short reason
_SHOWN.maxstring = _SHOWN.maxother = 120
_SHOWN.maxlevel = 3


def describe_validation(e: ValidationError, contract: str, version: int,
                        sensitive: Sequence[FieldPath] = ()) -> str:
    """One line naming each bad field, its value and the contract version. The value of a
    ``sensitive`` field is never shown, nor the record as a whole if it has any."""
    parts = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        shown = _SHOWN.repr(value) if not isinstance(value, dict) else "<missing>"
        names = tuple(str(p) for p in err["loc"] if not isinstance(p, int))
        if any(names[:len(p)] == p for p in sensitive):
            shown = f"{MASK} (sensitive)"
        if not loc:  # the record as a whole: not JSON, or not an object
            shown = repr(value[:80]) if isinstance(value, str | bytes) else shown
            if sensitive:
                shown = f"{MASK} (a record with sensitive fields)"
            parts.append(f"the record is not a valid {contract}: {err['msg']} (got {shown})")
        elif err["type"] == "missing":
            parts.append(f"field {loc!r} is missing")
        else:
            parts.append(f"field {loc!r}: {err['msg']} (got {shown})")
    return f"{'; '.join(parts)} [contract {contract} v{version}]"


def error_info(exc: BaseException) -> dict[str, Any]:
    """The exception as a dead letter or the ledger keeps it, sensitive values withheld."""
    info: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": withheld(str(exc)),
        "traceback": withheld("".join(traceback.format_exception(exc))),
    }
    checks = getattr(exc, "checks", None)  # a gate's results: the checks and offending values
    if isinstance(checks, list):
        info["checks"] = checks
    return info


DEAD_LETTER_VERSION = 1
"""The dead-letter JSON's format, as ``"v"`` (absent: written before the field, the same)."""


def dead_letter_message(topic: str, dl: DeadLetter, traceparent: bytes | None,
                        spill: list[OutMessage] | None = None) -> OutMessage:
    """The dead letter as published. One that would pass ``MAX_DEAD_LETTER_BYTES`` keeps a
    truncated payload and names where the whole one is: the log position it was read from, the
    ledger's record of a planned run, or else (given ``spill``) the side store, whose parts go
    to ``spill`` to be published with it."""
    reason = withheld(dl.reason)
    body: dict[str, Any] = {
        "v": DEAD_LETTER_VERSION,
        "reason": reason,
        "kind": dl.kind,
        "stage": dl.stage,
        "origin": dl.origin,
        "payload": dl.payload,
        "error": dl.error,
        "arrival_id": dl.arrival_id,
    }
    if dl.run_id is not None:
        body["run_id"] = dl.run_id
        body["attempts"] = dl.attempts
    if dl.arrival is not None:
        body["arrival"] = dl.arrival
    if dl.sensitive:
        body["sensitive"] = list(dl.sensitive)
    headers = [(H_REASON, reason.encode()[:1024])]
    if traceparent is not None:
        headers.append((H_TRACEPARENT, traceparent))
    key = (dl.arrival_id or orjson.dumps(dl.origin).decode()).encode()
    value = orjson.dumps(body)
    if len(value) > MAX_DEAD_LETTER_BYTES:
        whole = where_whole(dl.origin)
        if whole is None and dl.run_id is not None and dl.origin.get("offset") == -1:
            whole = {"run_id": dl.run_id}  # a planned run: its inputs are in the ledger
        if whole is None and spill is not None:
            parts, whole = payload_parts(payloads_topic(topic), key, dl.payload)
            spill.extend(parts)
        value = truncated(body, whole)
    return OutMessage(topic, value, key, headers)
