"""The whole payload of a dead letter whose own copy was truncated (it would have passed the
broker's message size): read back from the log position it names, or from the side store."""

from __future__ import annotations

from typing import Any

from streamflow.errors import OpsError
from streamflow.model import H_PART
from streamflow.transports import Transport


async def read_whole(t: Transport, ident: str, body: dict[str, Any]) -> str:
    """Dead letter ``ident``'s payload, whole (``body`` is the dead letter as read)."""
    cut: dict[str, Any] = body.get("truncated") or {}
    whole = cut.get("whole")
    if not isinstance(whole, dict):
        if cut:
            raise OpsError(f"dead letter {ident}: its payload was truncated to {cut.get('kept')}"
                           " characters and no copy of the whole of it was kept")
        return str(body.get("payload", ""))
    if "offset" in whole:
        return await _at_offset(t, ident, whole)
    if "parts" in whole:
        return await _from_side_store(t, ident, whole)
    raise OpsError(f"dead letter {ident}: its payload was truncated to {cut.get('kept')} "
                   f"characters; the whole of it is at {whole}")


async def _at_offset(t: Transport, ident: str, whole: dict[str, Any]) -> str:
    topic, partition, offset = str(whole["topic"]), int(whole["partition"]), int(whole["offset"])
    async for chunk in t.scan_topic(topic, [partition]):
        for m in chunk:
            if m.partition == partition and m.offset == offset:
                return m.value.decode("utf-8", "replace")
    raise OpsError(f"dead letter {ident}: its whole payload at {topic}@{partition}:{offset} "
                   "is gone (past the topic's retention?)")


async def _from_side_store(t: Transport, ident: str, whole: dict[str, Any]) -> str:
    key, count = str(whole["key"]).encode(), int(whole["parts"])
    parts: dict[int, bytes] = {}
    async for chunk in t.scan_topic(str(whole["topic"])):
        for m in chunk:
            if m.key != key:
                continue
            index = dict(m.headers).get(H_PART, b"").split(b"/")[0]
            if index.isdigit():
                parts[int(index)] = m.value  # a dead letter read again: its latest copy
    if sorted(parts) != list(range(count)):
        raise OpsError(f"dead letter {ident}: its side store {whole['topic']} holds "
                       f"{len(parts)} of its {count} parts")
    return b"".join(parts[i] for i in range(count)).decode("utf-8")
