"""Faust worker for the barrier spike: fire once per key when both `a` and `b` arrived.

Env: SPIKE_ID (topic/app suffix), SPIKE_GUARANTEE (at_least_once|exactly_once), WORKER (name).
Run: SPIKE_ID=... WORKER=w1 /tmp/faustvenv/bin/python spike_app.py worker -l info
"""
import os

import faust

SPIKE = os.environ["SPIKE_ID"]
WORKER = os.environ.get("WORKER", "w")
GUARANTEE = os.environ.get("SPIKE_GUARANTEE", "at_least_once")
os.makedirs(f"/tmp/faust-spike/{SPIKE}", exist_ok=True)

app = faust.App(
    f"spike-{SPIKE}",
    broker="kafka://127.0.0.1:9092",
    store="memory://",  # no RocksDB here: in-memory store, recovered from the changelog
    datadir=f"/tmp/faust-spike/{SPIKE}/{WORKER}",
    topic_partitions=4,
    processing_guarantee=GUARANTEE,
    broker_session_timeout=10.0,
    broker_heartbeat_interval=3.0,
    broker_commit_every=100,
    broker_commit_interval=1.0,
    web_enabled=False,
)
inputs = app.topic(f"spike-{SPIKE}-a", f"spike-{SPIKE}-b",
                   key_type=str, value_type=str, key_serializer="raw", value_serializer="raw",
                   partitions=4)
fired = app.topic(f"spike-{SPIKE}-fired", key_type=str, value_type=str,
                  key_serializer="raw", value_serializer="raw", partitions=4)
state = app.Table("barrier", default=dict, partitions=4)  # key -> {"a":1,"b":1,"fired":1}


@app.agent(inputs)
async def barrier(stream):
    async for event in stream.events():
        key = event.key.decode() if isinstance(event.key, bytes) else event.key
        side = event.message.topic.rsplit("-", 1)[1]  # "a" or "b"
        st = dict(state[key])
        if st.get("fired"):
            continue
        st[side] = 1
        if st.get("a") and st.get("b"):
            await fired.send(key=key, value=f"{WORKER}:{event.message.topic}:"
                             f"{event.message.partition}:{event.message.offset}")
            st["fired"] = 1
        state[key] = st


if __name__ == "__main__":
    app.main()
