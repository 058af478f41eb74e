"""Send N keys x {a,b} (interleaved, ~10% duplicated inputs) at a steady rate. Args: spike_id n rate"""
import asyncio, random, sys, time
from aiokafka import AIOKafkaProducer


async def main(spike: str, n: int, rate: float) -> None:
    rnd = random.Random(42)
    msgs = []
    for i in range(n):
        k = f"day-{i:05d}"
        sides = ["a", "b"] + (["a" if rnd.random() < .5 else "b"] if rnd.random() < 0.1 else [])
        rnd.shuffle(sides)
        msgs += [(k, s) for s in sides]
    # interleave: keys progress in a window of ~50 so a and b of one key are close but not adjacent
    msgs.sort(key=lambda m: (int(m[0][4:]) // 50, rnd.random()))
    p = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092", acks="all", enable_idempotence=True)
    await p.start()
    t0 = time.monotonic()
    for j, (k, s) in enumerate(msgs):
        await p.send(f"spike-{spike}-{s}", key=k.encode(), value=f"{k}:{s}:{j}".encode())
        delay = t0 + (j + 1) / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    await p.flush(); await p.stop()
    print(f"produced {len(msgs)} messages for {n} keys in {time.monotonic()-t0:.1f}s", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
