"""The at-least-once oracle itself (``alo.py``), on records made up for it: a kill's bound is
what its groups left uncommitted plus what their input topics got twice, and a duplicate is put
on the kill between its copies, on its input's kill (cascade), on a rebalance shortly after a
kill (held to the batch in hand), or on no kill."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest

from streamflow.model import Message

from .alo import NO_KILL, Kill, per_kill

pytestmark = pytest.mark.timeout(30)

NS = "n"
INPUTS = {"n.stage.price": ["n.orders"], "n.sink.kafka-priced": ["n.priced"]}


def rec(topic: str, offset: int, ts_s: float, order_id: str) -> Message:
    return Message(f"{NS}.{topic}", 0, offset, order_id.encode(),
                   orjson.dumps({"order_id": order_id, "total": 1.0}), [], int(ts_s * 1000))


def written(priced: Sequence[tuple[float, str]], export: Sequence[tuple[float, str]]
            ) -> dict[str, list[Message]]:
    orders = [rec("orders", i, 1 + i, f"o{i}") for i in range(5)] + [rec("orders", 5, 11, "o5")]
    return {"orders": orders,
            "priced": [rec("priced", i, ts, k) for i, (ts, k) in enumerate(priced)],
            "export.priced": [rec("export.priced", i, ts, k) for i, (ts, k) in enumerate(export)]}


def kill() -> Kill:
    return Kill("sigkill", 10.0, 5.0, "w1", {g: [0] for g in INPUTS},
                {("n.stage.price", "n.orders", 0): 2, ("n.sink.kafka-priced", "n.priced", 0): 1})


def test_a_kill_is_charged_its_duplicates_and_their_cascade_within_its_bound() -> None:
    # o2 priced before the kill and again after it, exported twice likewise; o3 priced twice
    # across the kill, so the sink exported it twice, both after the kill (a cascade).
    priced = [(3, "o2"), (4, "o3"), (5, "o4"), (12, "o2"), (12.5, "o3")]
    export = [(3.5, "o2"), (12.6, "o3"), (12.7, "o3"), (13, "o2")]
    rows = per_kill([kill()], INPUTS, NS, written(priced, export), lambda key: 0)
    row, none = rows
    # orders: 5 produced by the kill, 2 committed; priced: 3 by the kill, 1 committed, plus
    # the 2 priced duplicates the sink handles again.
    assert row["uncommitted"] == {"stage.price": 3, "sink.kafka-priced": 2}
    assert row["bound"] == 3 + 2 + 2
    assert row["duplicated"] == {"export.priced (sink.kafka-priced)": 2,
                                 "priced (stage.price)": 2}
    assert row["total"] == 4 and row["over"] == {} and row["republished"] == 0
    assert none["kill"] == NO_KILL and none["total"] == 0


def test_a_duplicate_no_kill_explains_is_over_a_bound_of_nothing() -> None:
    priced = [(3, "o2"), (12, "o2"), (45, "o2")]  # the third copy: no kill, long after one
    rows = per_kill([kill()], INPUTS, NS, written(priced, []), lambda key: 0)
    assert rows[0]["total"] == 1
    assert rows[1]["total"] == 1 and rows[1]["over"] == {"stage.price": 1}


def test_a_batch_redone_at_a_rebalance_after_a_kill_is_held_to_the_batch_in_hand() -> None:
    priced = [(3, "o2"), (12, "o2"), (13, "o2"), (14, "o3"), (15, "o3")]
    rows = per_kill([kill()], INPUTS, NS, written(priced, []), lambda key: 0, in_hand=2)
    assert rows[0]["at_rebalance"] == 2 and rows[0]["total"] == 3 and rows[0]["over"] == {}
    rows = per_kill([kill()], INPUTS, NS, written(priced, []), lambda key: 0, in_hand=1)
    assert rows[0]["over"] == {"stage.price at a rebalance": 2}


def test_a_kill_is_charged_nothing_outside_its_partitions() -> None:
    k = kill()
    k.scope = {g: [1] for g in INPUTS}  # the dead worker owned partition 1 only
    rows = per_kill([k], INPUTS, NS, written([(3, "o2"), (12, "o2")], []), lambda key: 0)
    assert rows[0]["total"] == 0 and rows[0]["bound"] == 0
    assert rows[1]["total"] == 1
