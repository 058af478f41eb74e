"""Dead-letter payloads that do not fit as they are: records nested deeper than orjson encodes
(254 levels), and dead letters larger than a broker takes (a payload escaped as a JSON string
can grow sixfold). Nothing is lost: a truncated payload says where the whole one is."""

from __future__ import annotations

from typing import Any

import orjson

from ._messages import OutMessage

MAX_DEAD_LETTER_BYTES = 1_000_000
"""A dead letter's value at most: under Kafka's default message size (1 MiB) with room for its
key and headers, so the broker never refuses one. The same on the embedded log."""
PART_BYTES = 512 * 1024
"""A side-store part: a payload is stored raw (unescaped) in parts of this size."""
H_PART = "sf-part"
"""On a side-store part: ``<index>/<count>``."""
_KEPT_TEXT = {"reason": 4096, "message": 4096, "traceback": 16384}


class _Raw(str):
    """JSON text already encoded (punctuation), as opposed to a string value to encode."""


def record_text(data: Any) -> str:
    """A record as JSON text for a dead letter, however deeply it is nested: orjson first,
    then an encoder that keeps its own stack instead of recursing."""
    try:
        return orjson.dumps(data, default=str).decode()
    except orjson.JSONEncodeError:
        return _deep_json(data)


def _deep_json(data: Any) -> str:
    out: list[str] = []
    todo: list[Any] = [data]
    while todo:
        v = todo.pop()
        if isinstance(v, _Raw):
            out.append(v)
        elif isinstance(v, dict):
            todo.append(_Raw("}"))
            for i, (k, x) in reversed(list(enumerate(v.items()))):
                todo += [x, _Raw(("," if i else "") + orjson.dumps(str(k)).decode() + ":")]
            out.append("{")
        elif isinstance(v, list | tuple):
            todo.append(_Raw("]"))
            for i, x in reversed(list(enumerate(v))):
                todo += [x, _Raw(",")] if i else [x]
            out.append("[")
        else:
            out.append(orjson.dumps(v, default=str).decode())
    return "".join(out)


def payloads_topic(dead_letter_topic: str) -> str:
    """The side store: whole payloads of dead letters that had to be truncated and whose
    record no log keeps (a webhook's, a file's), in raw parts keyed by the dead letter's key."""
    return f"{dead_letter_topic}.payloads"


def payload_parts(topic: str, key: bytes, payload: str) -> tuple[list[OutMessage], dict[str, Any]]:
    """The side-store messages holding ``payload`` whole, and where they are (for
    ``truncated.whole``). Every part has the same key, so all land on one partition."""
    raw = payload.encode()
    chunks = [raw[i:i + PART_BYTES] for i in range(0, len(raw), PART_BYTES)] or [b""]
    n = len(chunks)
    msgs = [OutMessage(topic, c, key, [(H_PART, f"{i}/{n}".encode())])
            for i, c in enumerate(chunks)]
    return msgs, {"topic": topic, "key": key.decode(), "parts": n}


def where_whole(origin: dict[str, Any]) -> dict[str, Any] | None:
    """Where a message's record is kept whole: the log position it was read from."""
    offset = origin.get("offset")
    if "topic" in origin and isinstance(offset, int) and offset >= 0:
        return {"topic": origin["topic"], "partition": origin.get("partition", 0),
                "offset": offset}
    return None


def truncated(body: dict[str, Any], whole: dict[str, Any] | None) -> bytes:
    """A dead letter too big to publish, encoded with its texts cut short, its payload
    truncated to fit and ``truncated`` saying how big the payload was and where it is whole
    (``None``: nowhere)."""
    payload = str(body.get("payload", ""))
    body = {**body, "payload": "", "reason": _cut(str(body.get("reason", "")), "reason")}
    if isinstance(body.get("error"), dict):
        body["error"] = {k: _cut(v, k) if isinstance(v, str) else v
                         for k, v in body["error"].items()}
        if len(orjson.dumps(body["error"])) > MAX_DEAD_LETTER_BYTES // 2:  # a gate's values
            body["error"] = {k: v if isinstance(v, str) else _cut(
                record_text(v), "message") for k, v in body["error"].items()}
    body["truncated"] = {"bytes": len(payload.encode()), "whole": whole}
    budget = MAX_DEAD_LETTER_BYTES - len(orjson.dumps(body)) - 64
    n = len(payload)
    while n > 0 and len(orjson.dumps(payload[:n])) > budget:
        escaped = len(orjson.dumps(payload[:n]))
        n = min(n - 1, n * max(budget, 0) // escaped)
    body["payload"] = payload[:n]
    body["truncated"]["kept"] = n
    return orjson.dumps(body)


def _cut(text: str, field: str) -> str:
    keep = _KEPT_TEXT.get(field)
    if keep is None or len(text) <= keep:
        return text
    return text[:keep] + f" ... ({len(text) - keep} more characters)"
