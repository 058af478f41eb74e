"""Run the retail example on the embedded transport in a fresh work folder and print counts.

Safe to run again: each run gets a new folder under ``.streamflow/demo/``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

import orjson

from streamflow import Settings, load_pipeline, run_pipeline
from streamflow.transports import EmbeddedTransport

HERE = Path(__file__).resolve().parent


def main() -> int:
    workdir = Path(".streamflow/demo") / time.strftime("retail-%Y%m%d-%H%M%S")
    n = 0
    while workdir.exists():
        n += 1
        workdir = workdir.with_name(f"{workdir.name.split('.')[0]}.{n}")
    landing = workdir / "landing"
    landing.mkdir(parents=True)
    for f in sorted((HERE / "data" / "landing").glob("*.csv")):
        shutil.copy(f, landing / f.name)
        os.utime(landing / f.name, (time.time() - 5, time.time() - 5))
    os.environ["RETAIL_WORKDIR"] = str(workdir)  # read by the pipeline module at import
    pipeline = load_pipeline(str(HERE / "pipeline.py") + ":pipeline")
    settings = Settings.load(state_dir=workdir / "state")
    summary = asyncio.run(run_pipeline(pipeline, settings))
    out = workdir.resolve() / "out"
    print(f"retail demo on the {summary.transport} transport")
    print(f"  records in:     {summary.records_in}")
    print(f"  records out:    {summary.records_out}")
    print(f"  dead-lettered:  {summary.dead_lettered} (topic {summary.dead_letter_topic})")
    for reason in asyncio.run(_dead_letter_reasons(settings)):
        print(f"    - {reason}")
    print(f"  output:         {out}")
    for f in sorted(out.glob("*.jsonl")):
        print(f"    {f.name}: {sum(1 for _ in f.open())} records")
    reports = workdir.resolve() / "reports"
    print(f"  daily reports:  {reports}")
    for f in sorted(reports.glob("*.jsonl")):
        for line in f.read_bytes().splitlines():
            r = orjson.loads(line)
            print(f"    {r['day']}: {r['sales']} sales in {len(r['stores'])} stores, "
                  f"{r['total_usd']} USD")
    return 0


async def _dead_letter_reasons(settings: Settings) -> list[str]:
    """Read the dead-letter topic back, as any consumer of it would."""
    transport = EmbeddedTransport(Path(settings.state_dir) / "embedded.db")
    await transport.start()
    try:
        sub = await transport.subscribe("demo-reader", [settings.dead_letter_topic])
        return [str(orjson.loads(m.value)["reason"]) for m in await sub.poll(100, timeout=0.1)]
    finally:
        await transport.close()


if __name__ == "__main__":
    sys.exit(main())
