"""Write ``v1_topics.json``: run ``pipeline.py`` on the embedded transport with an older
StreamFlow and dump its log, so that a newer worker can be tested on what it left.

    git worktree add /tmp/old eda2984
    PYTHONPATH=/tmp/old:. python -m tests.formats.record tests/formats/v1_topics.json

Orders 0-9 and payments 0-4 run: ``settle``'s barriers 5-9 stay half full. Orders 0-2 are
then published again as they were (a redelivery the ledger must dedupe), and orders 10-11 are
published in the old header format, unread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
from pathlib import Path

import orjson

import streamflow
from streamflow import Settings, run_pipeline
from streamflow.connectors.testing import MemorySink
from streamflow.model import Arrival, asset_topic

from .pipeline import orders, pipeline

NAMESPACE = "fmt"


async def _record(state: Path) -> dict[str, object]:
    settings = Settings(state_dir=state, namespace=NAMESPACE, http_port=None)
    await run_pipeline(pipeline(range(10), range(5), MemorySink()), settings)
    db = sqlite3.connect(state / "embedded.db")
    topic = asset_topic(NAMESPACE, orders.name)
    rows = db.execute("SELECT value, key, headers FROM log WHERE topic=? ORDER BY off LIMIT 3",
                      (topic,)).fetchall()
    nxt = db.execute("SELECT COALESCE(MAX(off) + 1, 0) FROM log WHERE topic=?",
                     (topic,)).fetchone()[0]
    fresh = [Arrival(f"old-order-{i}", orders.name, str(i), 1, 0, "", "live", str(i).encode(),
                     orjson.dumps({"id": i, "amount": 10 * i})) for i in (10, 11)]
    for value, key, headers in rows:
        db.execute("INSERT INTO log VALUES (?,?,?,?,?,0)", (topic, nxt, key, value, headers))
        nxt += 1
    for a in fresh:
        h = orjson.dumps([[k, v.decode("latin-1")] for k, v in a.headers()])
        db.execute("INSERT INTO log VALUES (?,?,?,?,?,0)", (topic, nxt, a.key, a.value, h))
        nxt += 1
    db.commit()
    log = [{"topic": t, "off": o, "key": k.decode("latin-1") if k is not None else None,
            "value": v.decode("latin-1"), "headers": orjson.loads(h), "ts": ts}
           for t, o, k, v, h, ts in db.execute("SELECT * FROM log ORDER BY topic, off")]
    offsets = [{"group": g, "topic": t, "off": o}
               for g, t, o in db.execute("SELECT * FROM group_offsets ORDER BY grp, topic")]
    return {"written_by": streamflow.__version__, "namespace": NAMESPACE, "log": log,
            "group_offsets": offsets}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        dump = asyncio.run(_record(Path(d)))
    Path(sys.argv[1]).write_bytes(orjson.dumps(dump, option=orjson.OPT_INDENT_2))
