"""Quix Streams in the peers benchmark: a StreamingDataFrame per workload, as its docs show.

JSON deserializers hand the map a dict, validated with pydantic (``model_validate``); the join
concatenates the two input dataframes and keeps the side that came first in RocksDB state
(``apply(..., stateful=True)``, with its changelog topic). Settings are Quix's defaults
(at-least-once, a checkpoint every 5 s) apart from, for the exactly-once row,
``processing_guarantee="exactly-once"`` with a checkpoint every 0.1 s (StreamFlow's commit
interval), so read_committed readers see outputs as soon as with StreamFlow.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from ._peers_common import Payment, Sale, Spec, price, settle


def main(spec: Spec) -> None:
    from quixstreams import Application, State

    eos = spec.settings == "exactly-once"
    app = Application(
        broker_address=spec.bootstrap, consumer_group=f"{spec.ns}-quix",
        auto_offset_reset="earliest", state_dir=f"/tmp/{spec.ns}/quix", loglevel="WARNING",
        processing_guarantee="exactly-once" if eos else "at-least-once",
        commit_interval=0.1 if eos else 5.0)  # 5.0: Quix's default
    raw = spec.workload == "passthrough"
    fmt: Literal["bytes", "json"] = "bytes" if raw else "json"
    dst = app.topic(spec.topic(spec.output), key_serializer="bytes", value_serializer=fmt)

    def topic(name: str) -> Any:
        return app.topic(spec.topic(name), key_deserializer="bytes", value_deserializer=fmt)

    if spec.workload == "join":
        def step(value: dict[str, Any], state: State[Any, Any]) -> dict[str, Any] | None:
            other = state.get("other")
            if other is None:
                state.set("other", value)
                return None
            state.delete("other")
            s, p = (value, other) if "amount" in value else (other, value)
            return settle(Sale.model_validate(s), Payment.model_validate(p)).model_dump()

        sdf = app.dataframe(topic("sales")).concat(app.dataframe(topic("payments")))
        sdf = sdf.apply(step, stateful=True).filter(lambda v: v is not None)
    else:
        sdf = app.dataframe(topic(spec.inputs[0]))
        if not raw:
            sdf = sdf.apply(lambda d: price(Sale.model_validate(d)).model_dump())
    sdf.to_topic(dst)
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    app.run()
