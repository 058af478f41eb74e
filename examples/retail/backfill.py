"""Backfill last month's till sales while this month's orders flow, in a fresh work folder.

October's point-of-sale files were processed before StreamFlow was deployed: they sit in
``landing/pos/processed/``, which the live ``files`` source never reads again, but which its
backfill reads as history. A worker serves the pipeline while November's web orders and loyalty
snapshots land; ``streamflow backfill start`` replays October's sales beside them, and the
stages rebuild ``pos_usd`` (the parts in ``out/pos_usd/<day>/``) and ``pos_day`` for every
October day.

Every command is printed, with the environment it needs, so it can be repeated by hand. Runs
on the embedded transport by default (the worker and the backfill share the SQLite log in the
work folder's ``state/``), or on Kafka when ``STREAMFLOW_KAFKA_BOOTSTRAP`` is set. Safe to run
again: each run gets a new folder under ``.streamflow/demo/`` and its own namespace.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from streamflow_connector_files import read_rows

from streamflow import Settings
from streamflow.ops import list_dead_letters, list_runs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TARGET = "examples/retail/pipeline.py:pipeline"
MONTH = date(2026, 10, 1)  # "last month": the history to backfill
NEXT_MONTH = date(2026, 11, 1)  # "this month": the sample data in data/landing
LIVE_DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]

# The stores' tills, as in data/landing/pos: an id prefix, a currency and a UTC offset.
STORES = [("paris-01", "EUR", "+01:00"), ("london-02", "GBP", "+00:00"),
          ("tokyo-03", "JPY", "+09:00"), ("nyc-04", "USD", "-05:00"),
          ("toronto-05", "CAD", "-05:00")]
PRICES_USD = {"SKU-100": Decimal("20"), "SKU-220": Decimal("120"), "SKU-310": Decimal("25"),
              "SKU-415": Decimal("10")}
FX = {"USD": Decimal("1"), "EUR": Decimal("1.08"), "GBP": Decimal("1.27"),
      "JPY": Decimal("0.0067"), "CAD": Decimal("0.73")}

_print_lock = threading.Lock()


def say(text: str = "") -> None:
    with _print_lock:
        print(text, flush=True)


def history(processed: Path) -> int:
    """October's till files, one per day, as the old till system exported them (same CSV
    columns as data/landing/pos). Deterministic: the same sales on every run.

    Receipt ids start with the date: a backfill replays a partition key at a time in key
    order, and this asset's partition key is its record key (``sale_id``), so date-first ids
    reach ``pos_daily``'s event-time window in time order (a record older than the window's
    watermark would be dead-lettered as late)."""
    rnd = random.Random(2026_10)
    processed.mkdir(parents=True, exist_ok=True)
    sales = 0
    day = MONTH
    while day < NEXT_MONTH:
        rows = ["sale_id,store,sold_at,sku,quantity,amount,currency"]
        for n in range(1, rnd.randint(4, 7) + 1):
            store, currency, offset = rnd.choice(STORES)
            # Opening hours whose UTC time falls on the same day: the pipeline's day is the
            # sale's local date, its window the UTC day (an evening sale in Toronto would be
            # a window of its own, of one record, which pos_daily's row-count gate holds).
            hour = rnd.randint(9, 18)
            sku, qty = rnd.choice(sorted(PRICES_USD)), rnd.randint(1, 3)
            amount = PRICES_USD[sku] * qty / FX[currency]
            amount = amount.quantize(Decimal("1") if currency == "JPY" else Decimal("0.01"))
            rows.append(f"{day:%Y%m%d}-{n:02d},{store},{day.isoformat()}T{hour:02d}:"
                        f"{rnd.randint(0, 59):02d}:00{offset},{sku},{qty},{amount},{currency}")
            sales += 1
        path = processed / f"pos-{day.isoformat()}.csv"
        path.write_text("\n".join(rows) + "\n")
        old = time.time() - 30 * 86_400  # read long ago
        os.utime(path, (old, old))
        day += timedelta(days=1)
    return sales


def land(src: Path, dest_dir: Path) -> None:
    """Drop a file into a landing folder the way an uploader should: written aside, then
    renamed in (the files source ignores *.tmp and waits for a file to settle)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / (src.name + ".tmp")
    shutil.copy(src, tmp)
    os.replace(tmp, dest_dir / src.name)


def fresh_workdir() -> Path:
    workdir = Path(".streamflow/demo") / time.strftime("backfill-%Y%m%d-%H%M%S")
    n = 0
    while workdir.exists():
        n += 1
        workdir = workdir.with_name(f"{workdir.name.split('.')[0]}.{n}")
    return workdir.resolve()


class Story:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.workdir = fresh_workdir()
        self.namespace = "retailbf" + time.strftime("%H%M%S")
        self.env = {**os.environ, "RETAIL_WORKDIR": str(self.workdir), "RETAIL_WATCH": "1",
                    "STREAMFLOW_NAMESPACE": self.namespace,
                    "STREAMFLOW_STATE_DIR": str(self.workdir / "state")}
        self.settings = Settings.load(state_dir=self.workdir / "state",
                                      namespace=self.namespace, http_port="off")
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log = self.workdir / "worker.log"

    # --- commands ---------------------------------------------------------------------------

    def exports(self) -> str:
        kafka = os.environ.get("STREAMFLOW_KAFKA_BOOTSTRAP")
        return (f"export RETAIL_WORKDIR={self.workdir} RETAIL_WATCH=1 "
                f"STREAMFLOW_NAMESPACE={self.namespace} "
                f"STREAMFLOW_STATE_DIR={self.workdir / 'state'}"
                + (f" STREAMFLOW_KAFKA_BOOTSTRAP={kafka}" if kafka else ""))

    def streamflow(self, *args: str, show: int | None = None,
                   on_line: Callable[[str], None] | None = None) -> list[str]:
        """Run ``streamflow ARGS`` as a reader would, print it and (up to ``show`` lines of)
        what it prints; returns its output lines."""
        say(f"   $ streamflow {' '.join(args)}")
        proc = subprocess.Popen([sys.executable, "-m", "streamflow", *args], cwd=ROOT,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        assert proc.stdout is not None
        lines: list[str] = []
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                if on_line is not None:
                    on_line(line)
                elif show is None or len(lines) <= show:
                    say(f"   | {line}")
        finally:
            if proc.poll() is None:  # given up on (the worker died): interrupt it, as Ctrl-C
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
        if show is not None and len(lines) > show:
            say(f"   | … ({len(lines) - show} more lines)")
        if proc.wait() != 0:
            raise SystemExit(f"`streamflow {' '.join(args)}` failed with exit code "
                             f"{proc.returncode}")
        return lines

    def start_worker(self) -> None:
        say(f"   $ streamflow worker {TARGET} --http-port off > {self.rel(self.worker_log)} &")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "streamflow", "worker", TARGET, "--http-port", "off"],
            cwd=ROOT, env=self.env, stdout=self.worker_log.open("wb"),
            stderr=subprocess.STDOUT)

    def check_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is not None:
            tail = self.worker_log.read_text(errors="replace").splitlines()[-15:]
            raise SystemExit("the worker exited (code " + str(self.worker.returncode) +
                             "); the end of its log:\n" + "\n".join(tail))

    def stop_worker(self) -> int:
        assert self.worker is not None
        say(f"   $ kill -TERM {self.worker.pid}   # the worker drains, commits and exits")
        self.worker.send_signal(signal.SIGTERM)
        try:
            return self.worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            return self.worker.wait()

    # --- looking at the results -------------------------------------------------------------

    def runs(self) -> list[dict[str, object]]:
        return [r.model_dump() for r in asyncio.run(list_runs(self.settings))]

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while not ready():
            self.check_worker()
            if time.monotonic() > end:
                raise SystemExit(f"gave up waiting {timeout:.0f}s for {what} (the worker's "
                                 f"log: {self.worker_log})")
            time.sleep(0.3)

    def rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            return str(p)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:4.1f}s"


def rows(folder: Path) -> list[dict[str, Any]]:
    """What the files sink wrote under ``folder``, each key once (its latest row)."""
    return read_rows(folder) if folder.exists() else []


def live_feed(story: Story, stop: threading.Event) -> None:
    """November goes by live, a demo day every 2 s: the web shop's orders and the loyalty
    snapshots of each day land (the pipeline's windows close 3 s after their first record)."""
    src = HERE / "data" / "landing"
    for day in LIVE_DAYS:
        for kind in ("orders", "loyalty"):
            f = src / kind / f"{kind}-{day}.jsonl"
            if f.exists():
                land(f, story.workdir / "landing" / kind)
                say(f"   [live {story.elapsed()}] landing/{kind}/{f.name} lands")
        if stop.wait(2.0):
            return


def main() -> int:
    story = Story()
    try:
        return tell(story)
    finally:
        if story.worker is not None and story.worker.poll() is None:
            story.worker.send_signal(signal.SIGTERM)
            try:
                story.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                story.worker.kill()


def tell(story: Story) -> int:
    wd = story.workdir
    say("StreamFlow retail: backfill October's till sales while November's orders flow")
    say(f"   work folder {story.rel(wd)}, namespace {story.namespace}\n")

    sales = history(wd / "landing" / "pos" / "processed")
    for kind in ("pos", "orders", "loyalty", "inventory"):
        (wd / "landing" / kind).mkdir(parents=True, exist_ok=True)
    say(f"1. {MONTH:%B}'s 31 till files ({sales} sales) were read before StreamFlow was "
        "deployed: they sit in landing/pos/processed/, where the live source never looks "
        "again.\n")

    say("2. A worker serves the pipeline; its sources watch the landing folders.")
    say(f"   $ {story.exports()}")
    story.start_worker()
    say("")

    say("3. November goes by live (a demo day every 2 s): the web shop's orders and the "
        "loyalty snapshots land.")
    stop = threading.Event()
    feed = threading.Thread(target=live_feed, args=(story, stop), daemon=True)
    feed.start()
    time.sleep(1.0)
    say("")

    say(f"4. Meanwhile, backfill October's till sales. History comes from the files source "
        f"(processed/ and unread files, nothing moved); the workers run it in the lane "
        f"{story.namespace}.backfill.pos_sales whenever live input leaves room. pos_sales has "
        "no partition_by, so its partition key is its record key: each sale is a partition.")
    job_id = ""

    def progress(line: str) -> None:
        nonlocal job_id
        if line.startswith("backfill bf-") and not job_id:
            job_id = line.split()[1].rstrip(":")
        say(f"   | {line}")
        story.check_worker()

    t0, t0_ms = time.monotonic(), time.time() * 1000
    story.streamflow("backfill", "start", TARGET, "--asset", "pos_sales",
                     "--from", MONTH.isoformat(), "--to", NEXT_MONTH.isoformat(),
                     "--max-concurrency", "8", on_line=progress)
    backfill_s, t1_ms = time.monotonic() - t0, time.time() * 1000
    feed.join()
    story.check_worker()
    october = [(MONTH + timedelta(days=i)).isoformat() for i in range(31)]

    def windows_done() -> bool:
        done = {r["partition"] for r in story.runs() if r["stage"] == "pos_daily"}
        return set(october) <= done

    # The last October window has no later till record to close it: its 3 s deadline does.
    story.wait_for("pos_daily to close October's windows", windows_done)
    say(f"   the backfill took {backfill_s:.1f}s; pos_daily has closed all 31 October days "
        f"({story.elapsed().strip()} into the story)\n")

    say("5. The stores' till file for 1 November comes in at the end of the day.")
    land(HERE / "data" / "landing" / "pos" / "pos-2026-11-01.csv", wd / "landing" / "pos")
    say(f"   [live {story.elapsed()}] landing/pos/pos-2026-11-01.csv lands")
    report = wd / "reports" / "daily_sales" / "2026-11-01"
    story.wait_for("the report of 1 November", lambda: bool(rows(report)))
    say("")

    say("6. The backfill's record and its runs:")
    story.streamflow("backfill", "status", job_id)
    story.streamflow("backfill", "list")
    story.streamflow("runs", "list", "--stage", "pos_daily", show=4)
    runs = story.runs()
    by_mode = Counter((str(r["stage"]), str(r["mode"])) for r in runs)
    beside = Counter(str(r["stage"]) for r in runs
                     if r["mode"] == "live" and t0_ms <= float(str(r["ended_ms"])) <= t1_ms
                     and not str(r["partition"]).startswith("2026-10"))
    say(f"   live runs that finished while the backfill ran: {sum(beside.values())} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(beside.items())) + ")")
    say("   runs by stage and mode (`streamflow runs list --json`, field mode):")
    say(f"     {'STAGE':<20} {'LIVE':>5} {'BACKFILL':>9}")
    for stage in dict.fromkeys(str(r["stage"]) for r in sorted(runs, key=lambda r: str(
            r["stage"]))):
        say(f"     {stage:<20} {by_mode[(stage, 'live')]:>5} {by_mode[(stage, 'backfill')]:>9}")
    say("")

    say("7. What landed in out/ and reports/:")
    for day, how in (("2026-10-15", "backfilled"), ("2026-11-01", "live")):
        got = rows(wd / "out" / "pos_usd" / day)
        total = sum((Decimal(str(r["amount_usd"])) for r in got), Decimal("0"))
        say(f"   out/pos_usd/{day}/ ({how}): {len(got)} sales, {total} USD; first: "
            + (f"{got[0]['sale_id']} {got[0]['store']} {got[0]['amount']} {got[0]['currency']}"
               f" = {got[0]['amount_usd']} USD" if got else "none"))
    pos_files = sorted((wd / "out" / "pos_usd").iterdir())
    oct_files = [f for f in pos_files if f.name.startswith("2026-10-")]
    say(f"   out/ holds pos_usd for {len(oct_files)} October days (backfilled) and "
        f"{len(pos_files) - len(oct_files)} November day(s) (live)")
    for r in rows(report):
        say(f"   reports/daily_sales/{r['day']}/: {r['pos_sales']} till sales "
            f"{r['pos_usd']} USD + {r['online_orders']} web orders {r['online_usd']} USD = "
            f"{r['total_usd']} USD; "
            + ("complete" if r["complete"] else f"incomplete, missing {', '.join(r['missing'])}"))
    dead = asyncio.run(list_dead_letters(story.settings))
    say(f"   dead letters: {len(dead)} (`streamflow dlq list`)")
    waiting = sorted(f.name for f in (wd / "reports" / "daily_sales").glob("2026-10-*"))
    say(f"   October daily reports: {len(waiting) or 'none'}. daily_report needs a day's till "
        "total and its web-orders total (both required inputs): the web shop opened on 1 "
        "November, so October's barriers wait with pos_day alone, past their deadline (a "
        "deadline never fires without a required input). Backfilling online_orders for "
        "October, had there been any, would complete them. Likewise 2 and 3 November wait "
        "for their till files.\n")

    say("8. Stop the worker.")
    rc = story.stop_worker()
    if rc != 0:
        raise SystemExit(f"the worker exited with code {rc}; see {story.worker_log}")
    say("")
    to_usd = by_mode[("to_usd", "backfill")]
    say(f"Done in {story.elapsed()}: backfill {job_id} replayed {sales} October sales "
        f"({to_usd} backfill runs of to_usd) in {backfill_s:.1f}s while November's orders "
        f"flowed; out/ has October's pos_usd, and the 1 November report is out.")
    say(f"Look around: {story.exports()}; then e.g. `streamflow backfill status {job_id}` "
        "or `streamflow dlq list`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
