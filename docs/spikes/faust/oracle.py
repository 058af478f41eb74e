"""Count fired records per key (read_committed) and the group's lag. Args: spike_id n -> JSON line"""
import asyncio, collections, json, sys
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

B = "127.0.0.1:9092"


async def lag(spike: str) -> dict:
    adm = AIOKafkaAdminClient(bootstrap_servers=B); await adm.start()
    try:
        committed = await adm.list_consumer_group_offsets(f"spike-{spike}")
    finally:
        await adm.close()
    c = AIOKafkaConsumer(bootstrap_servers=B); await c.start()
    try:
        tps = [TopicPartition(f"spike-{spike}-{s}", p) for s in "ab" for p in range(4)]
        ends = await c.end_offsets(tps)
    finally:
        await c.stop()
    return {f"{tp.topic[-1]}{tp.partition}": ends[tp] - (committed[tp].offset if tp in committed else 0)
            for tp in tps}


async def fired(spike: str) -> collections.Counter:
    c = AIOKafkaConsumer(bootstrap_servers=B, isolation_level="read_committed",
                         auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(f"spike-{spike}-fired", p) for p in range(4)]
        c.assign(tps)
        ends = await c.end_offsets(tps)  # = last stable offset under read_committed
        counts: collections.Counter = collections.Counter()
        ts = []
        vals = collections.defaultdict(list)
        async def behind():
            return any([await c.position(tp) < ends[tp] for tp in tps])
        while await behind():
            for recs in (await c.getmany(timeout_ms=1000)).values():
                for r in recs:
                    counts[r.key.decode()] += 1
                    ts.append(r.timestamp)
                    vals[r.key.decode()].append(f"p{r.partition}@{r.offset}<-{r.value.decode()}")
        ts.sort()
        gaps = [(b - a) / 1000 for a, b in zip(ts, ts[1:])]
        counts["__max_gap_s"] = max(gaps, default=0)
        return counts, vals
    finally:
        await c.stop()


async def main(spike: str, n: int) -> None:
    counts, vals = await fired(spike)
    gap = counts.pop("__max_gap_s")
    keys = [f"day-{i:05d}" for i in range(n)]
    lost = [k for k in keys if counts[k] == 0]
    dup = [k for k in keys if counts[k] > 1]
    lg = await lag(spike)
    print(json.dumps({"fired_records": sum(counts.values()), "keys_fired": len(counts),
                      "lost": len(lost), "duplicated": len(dup), "extra_records": sum(counts[k] - 1 for k in dup),
                      "lost_sample": lost[:5], "dup_sample": {k: vals[k] for k in dup[:3]}, "max_fired_gap_s": round(gap, 2), "lag_total": sum(lg.values()), "lag": lg}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
