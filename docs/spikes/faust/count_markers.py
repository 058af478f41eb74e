"""Offsets not occupied by a data record (= transaction control markers) per partition. Args: topic"""
import asyncio, sys
from aiokafka import AIOKafkaConsumer, TopicPartition


async def main(topic):
    c = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9092", isolation_level="read_uncommitted", enable_auto_commit=False)
    await c.start()
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or (await c._client.force_metadata_update() and c.partitions_for_topic(topic)))]
    c.assign(tps); await c.seek_to_beginning(*tps)
    ends = await c.end_offsets(tps)
    n = {tp: 0 for tp in tps}
    while any([await c.position(tp) < ends[tp] for tp in tps]):
        for tp, recs in (await c.getmany(timeout_ms=1000)).items():
            n[tp] += len(recs)
    for tp in tps:
        print(f"{topic}[{tp.partition}] end_offset={ends[tp]} data_records={n[tp]} non_data_offsets={ends[tp]-n[tp]}")
    await c.stop()

asyncio.run(main(sys.argv[1]))
