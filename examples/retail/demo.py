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
    os.environ["RETAIL_WORKDIR"] = str(workdir)

    from streamflow import Settings, load_pipeline, run_pipeline

    pipeline = load_pipeline(str(HERE / "pipeline.py") + ":pipeline")
    settings = Settings.load(state_dir=workdir / "state")
    summary = asyncio.run(run_pipeline(pipeline, settings))
    out = workdir.resolve() / "out"
    print(f"retail demo on the {summary.transport} transport")
    print(f"  records in:     {summary.records_in}")
    print(f"  records out:    {summary.records_out}")
    print(f"  dead-lettered:  {summary.dead_lettered} (see `streamflow` docs: dead letters)")
    print(f"  output:         {out}")
    for f in sorted(out.glob("*.jsonl")):
        print(f"    {f.name}: {sum(1 for _ in f.open())} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
