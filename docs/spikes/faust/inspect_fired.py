"""Print fired records (offset, timestamp, value) around given offsets, read_committed. Args: spike partition lo hi"""
import asyncio, sys, datetime
from aiokafka import AIOKafkaConsumer, TopicPartition


async def main(spike, part, lo, hi):
    for iso in ("read_committed", "read_uncommitted"):
        c = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9092", isolation_level=iso, enable_auto_commit=False)
        await c.start()
        tp = TopicPartition(f"spike-{spike}-fired", part); c.assign([tp]); c.seek(tp, lo)
        out = []
        while not out or out[-1].offset < hi:
            recs = (await c.getmany(timeout_ms=2000)).get(tp, [])
            if not recs: break
            out += recs
        print(iso)
        for r in out:
            if r.offset <= hi:
                print(" ", r.offset, datetime.datetime.fromtimestamp(r.timestamp / 1000).strftime("%H:%M:%S.%f")[:-3], r.key.decode(), r.value.decode())
        await c.stop()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
