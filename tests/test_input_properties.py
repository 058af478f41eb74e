"""Properties of every source's parser and of the dead-letter builder, over odd input: nesting
of 255 levels and more, U+2028 and U+0085 in strings, a leading byte-order mark, duplicate
names, an unterminated final quote, and payloads that escaping inflates past the broker's
limit. CI runs them under the ``ci`` profile (tests/plugin.py): derandomized, bounded."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st
from streamflow_connector_files._formats import parse_csv, parse_jsonl
from streamflow_connector_kafka import KafkaSource, KafkaSourceConfig
from streamflow_connector_webhook._source import _duplicates, _parse

from streamflow.connectors import SourceBatch, duplicate_name
from streamflow.model import (
    MAX_DEAD_LETTER_BYTES,
    DeadLetter,
    dead_letter_message,
    mask_payload,
    record_text,
)

ODD = "\u2028\u0085\ufeff\r:\"\\,{}[]\x00\x01é😀"
text = st.text(st.one_of(st.sampled_from(ODD), st.characters(codec="utf-8")), max_size=12)
names = st.text(st.one_of(st.sampled_from(ODD), st.characters(codec="utf-8")), min_size=1,
                max_size=6)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), text)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(names, inner, max_size=3)), max_leaves=12)
records = st.dictionaries(names, values, min_size=1, max_size=4)


def nest(depth: int, leaf: Any, as_object: bool) -> bytes:
    """``leaf`` inside ``depth`` lists or objects, as JSON text (orjson writes only 254)."""
    open_, close = (b'{"k":', b"}") if as_object else (b"[", b"]")
    return open_ * depth + orjson.dumps(leaf) + close * depth


deep_json = st.builds(nest, st.integers(255, 1000), scalars, st.booleans())


def with_duplicate(record: dict[str, Any], name: str, first: Any) -> bytes:
    """``record`` as JSON text with ``name`` given twice (``first``, then its own value)."""
    body = orjson.dumps({**record, name: record.get(name, 0)})
    return b"{" + orjson.dumps(name) + b":" + orjson.dumps(first) + b"," + body[1:]


# --- files: JSON Lines ---------------------------------------------------------------------


@given(st.lists(records, min_size=1, max_size=5), st.booleans(), st.sampled_from(["\n", "\r\n"]))
def test_jsonl_reads_every_record_whatever_its_strings_hold(
        rows: list[dict[str, Any]], bom: bool, newline: str) -> None:
    body = newline.join(orjson.dumps(r).decode() for r in rows)
    got, rejects = parse_jsonl("f.jsonl", "d", ("\ufeff" if bom else "") + body)
    assert rejects == []
    assert [r.data for r in got] == rows
    assert [r.origin["line"] for r in got] == list(range(1, len(rows) + 1))


@given(records, names, scalars)
def test_jsonl_rejects_a_duplicate_name_and_names_it(record: dict[str, Any], name: str,
                                                     first: Any) -> None:
    line = with_duplicate(record, name, first).decode()
    got, rejects = parse_jsonl("f.jsonl", "d", f'{{"ok": 1}}\n{line}\n')
    assert [r.data for r in got] == [{"ok": 1}]
    [rej] = rejects
    assert rej.origin == {"file": "f.jsonl", "line": 2} and rej.payload == line
    assert f"f.jsonl line 2: the name {name!r} appears twice" in rej.reason
    allowed, none = parse_jsonl("f.jsonl", "d", line, allow_duplicates=True)
    assert none == [] and allowed[0].data == orjson.loads(line)  # the last one wins


@given(deep_json)
def test_jsonl_reads_records_nested_past_orjsons_writing_limit(deep: bytes) -> None:
    got, rejects = parse_jsonl("f.jsonl", "d", '{"v": ' + deep.decode() + "}")
    assert rejects == [] and len(got) == 1
    assert orjson.loads(record_text(got[0].data)) == got[0].data


# --- files: CSV ----------------------------------------------------------------------------

cells = st.text(st.one_of(st.sampled_from(ODD.replace("\x00", "")),
                          st.characters(codec="utf-8", exclude_characters="\x00")),
                max_size=8)


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows([header, *rows])
    return buf.getvalue()


@given(st.integers(1, 4).flatmap(lambda n: st.lists(st.lists(cells, min_size=n, max_size=n)
                                                    .filter(lambda r: any(c.strip() for c in r)),
                                                    max_size=4)), st.booleans())
def test_csv_reads_every_row_with_or_without_a_bom(rows: list[list[str]], bom: bool) -> None:
    header = [f"c{i}" for i in range(len(rows[0]) if rows else 1)]
    body = csv_text(header, rows)
    got, rejects = parse_csv("f.csv", "d", ("\ufeff" if bom else "") + body)
    assert rejects == []
    assert [list(r.data) for r in got] == [header] * len(rows)
    assert [list(r.data.values()) for r in got] == rows


@given(st.lists(st.lists(cells.filter(lambda c: c.strip()), min_size=2, max_size=2),
                max_size=3), cells)
def test_csv_rejects_an_unterminated_final_quote(rows: list[list[str]], tail: str) -> None:
    body = csv_text(["a", "b"], rows) + '9,"' + tail.replace('"', "")
    got, rejects = parse_csv("f.csv", "d", body)
    assert [list(r.data.values()) for r in got] == rows
    [rej] = rejects
    assert "never closed" in rej.reason and rej.payload.startswith('9,"')
    assert rej.origin["line"] == body.count("\n", 0, body.rindex('9,"')) + 1


# --- webhook -------------------------------------------------------------------------------


@given(st.lists(records, min_size=1, max_size=4), st.data())
def test_webhook_names_the_items_with_duplicate_names(items: list[dict[str, Any]],
                                                      data: st.DataObject) -> None:
    bad = data.draw(st.sets(st.integers(0, len(items) - 1)))
    name = data.draw(names)
    body = b"[" + b",".join(with_duplicate(it, name, 0) if i in bad else orjson.dumps(it)
                            for i, it in enumerate(items)) + b"]"
    parsed = _parse(body)
    assert len(parsed) == len(items)
    assert _duplicates(body, parsed) == [name if i in bad else None for i in range(len(items))]


@given(deep_json)
def test_webhook_takes_deep_bodies(deep: bytes) -> None:
    body = b'{"v": %b}' % deep
    assert _parse(body) == [orjson.loads(body)]
    assert _duplicates(body, _parse(body)) == [None]


# --- kafka source --------------------------------------------------------------------------


@dataclass
class _Msg:
    value: bytes | None
    offset: int = 7
    topic: str = "ext"
    partition: int = 0
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@given(st.one_of(records.map(orjson.dumps), deep_json.map(lambda d: b'{"v": %b}' % d),
                 st.builds(with_duplicate, records, names, scalars), st.none(),
                 st.binary(max_size=20)))
def test_kafka_source_decodes_or_rejects_with_the_offset(value: bytes | None) -> None:
    batch = SourceBatch([], [])
    KafkaSource(KafkaSourceConfig(bootstrap="-", topic="ext"))._decode(_Msg(value), batch)
    assert len(batch.records) + len(batch.rejects) == 1
    if batch.rejects:
        assert batch.rejects[0].reason.startswith("ext@0:7: ")
        assert batch.rejects[0].origin == {"topic": "ext", "partition": 0, "offset": 7}
    else:
        assert value is not None and batch.records[0].data == orjson.loads(value)
        assert duplicate_name(value, batch.records[0].data) is None


# --- the dead-letter builder ---------------------------------------------------------------


@given(st.one_of(records, deep_json.map(orjson.loads)), text)
def test_a_dead_letter_keeps_any_record_whole(data: Any, reason: str) -> None:
    dl = DeadLetter(reason, "src", {"file": "f", "line": 1}, record_text(data), kind="source")
    body = orjson.loads(dead_letter_message("dlq", dl, None).value)
    assert body["reason"] == reason and "truncated" not in body
    assert orjson.loads(body["payload"]) == data


@given(st.sampled_from(ODD + "a"), st.integers(0, 1_200_000), st.booleans())
def test_a_dead_letter_never_passes_the_limit_and_says_where_the_whole_is(
        char: str, n: int, positioned: bool) -> None:
    payload = char * n
    origin = {"topic": "t", "partition": 1, "offset": 5} if positioned else {"request": "r"}
    spill: list[Any] = []
    dl = DeadLetter("why", "src", origin, payload, arrival_id="a1", kind="source")
    msg = dead_letter_message("dlq", dl, None, spill)
    body = orjson.loads(msg.value)
    assert len(msg.value) <= MAX_DEAD_LETTER_BYTES
    if "truncated" not in body:
        assert body["payload"] == payload and spill == []
        return
    assert payload.startswith(body["payload"]) and body["truncated"]["bytes"] == len(
        payload.encode())
    if positioned:
        assert body["truncated"]["whole"] == {"topic": "t", "partition": 1, "offset": 5}
        assert spill == []
    else:
        assert body["truncated"]["whole"]["topic"] == "dlq.payloads"
        assert b"".join(m.value for m in spill).decode() == payload
        assert all(len(m.value) <= MAX_DEAD_LETTER_BYTES and m.key == b"a1" for m in spill)


def test_a_dead_letter_with_huge_check_results_still_fits() -> None:
    """A gate's results carry up to 20 offending values: large records make them large."""
    checks = [{"check": "not_null", "values": ["y" * 100_000] * 20}]
    dl = DeadLetter("held", "s", {"topic": "t", "partition": 0, "offset": 3}, "x" * 900_000,
                    error={"type": "HoldError", "message": "m", "checks": checks})
    msg = dead_letter_message("dlq", dl, None)
    body = orjson.loads(msg.value)
    assert len(msg.value) <= MAX_DEAD_LETTER_BYTES
    assert body["error"]["type"] == "HoldError" and "more characters" in body["error"]["checks"]
    assert body["truncated"]["whole"] == {"topic": "t", "partition": 0, "offset": 3}


@given(deep_json)
def test_dlq_show_masks_a_record_nested_past_orjsons_writing_limit(deep: bytes) -> None:
    payload = '{"card": "4111", "v": ' + deep.decode() + "}"
    shown = orjson.loads(mask_payload(payload, ["card"]))
    assert shown == {**orjson.loads(payload), "card": "***"}
