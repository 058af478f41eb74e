"""One spike run: 2 Faust workers, steady producer, SIGKILL + restart schedule, then the oracle.

Usage: /tmp/faustvenv/bin/python driver.py GUARANTEE N RATE KILLS
  KILLS = comma list of worker@seconds (after producer start), e.g. w1@12,w2@30
"""
import asyncio, json, os, re, signal, subprocess, sys, threading, time, uuid
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/tmp/faustvenv/bin/python"
PAT = {"recovery_complete": re.compile(r"Recovery complete"), "worker_ready": re.compile(r"Worker ready"),
       "ready": re.compile(r"\]: Ready"), "error": re.compile(r"\bERROR\b|Traceback"),
       "warning": re.compile(r"\bWARNING\b"), "rebalance": re.compile(r"Rebalancing|rebalanc", re.I)}


async def topics(spike, create=True):
    adm = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9092"); await adm.start()
    try:
        names = [f"spike-{spike}-{s}" for s in ("a", "b", "fired")]
        if create:
            await adm.create_topics([NewTopic(n, 4, 1) for n in names])
        else:
            have = await adm.list_topics()
            await adm.delete_topics([t for t in have if t.startswith(f"spike-{spike}")])
    finally:
        await adm.close()


class Worker:
    def __init__(self, name, spike, guarantee, rundir, t0, events):
        self.name, self.spike, self.g, self.dir, self.t0, self.events = name, spike, guarantee, rundir, t0, events
        self.gen, self.p = 0, None
        self.port = 16000 + int(spike[:4], 16) % 20000 + int(name[1])

    def start(self):
        self.gen += 1
        log = os.path.join(self.dir, f"{self.name}.{self.gen}.log")
        env = dict(os.environ, SPIKE_ID=self.spike, WORKER=self.name, SPIKE_GUARANTEE=self.g)
        self.p = subprocess.Popen([PY, os.path.join(HERE, "spike_app.py"), "worker", "-l", "info", "--web-port", str(self.port)],
                                  env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.ev("start", f"pid={self.p.pid}")
        threading.Thread(target=self.tail, args=(log, self.gen), daemon=True).start()

    def ev(self, kind, info=""):
        self.events.append((round(time.monotonic() - self.t0, 2), f"{self.name}.{self.gen}", kind, info))

    def tail(self, log, gen):
        with open(log) as f:
            while True:
                line = f.readline()
                if not line:
                    if self.gen != gen or self.p.poll() is not None and gen == self.gen:
                        if not f.readline():
                            return
                    time.sleep(0.05); continue
                for k, rx in PAT.items():
                    if rx.search(line) and k not in ("warning", "rebalance"):
                        self.events.append((round(time.monotonic() - self.t0, 2), f"{self.name}.{gen}", k, line.strip()[:160]))


def oracle(spike, n):
    out = subprocess.run([PY, os.path.join(HERE, "oracle.py"), spike, str(n)], capture_output=True, text=True, timeout=120)
    if out.returncode or not out.stdout.strip():
        sys.stderr.write(out.stderr[-2000:])
        return {"lag_total": -1, "fired_records": 0, "keys_fired": 0, "lost": -1, "lag": {}, "error": out.stderr[-300:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    guarantee, n, rate, kills = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    spike = uuid.uuid4().hex[:8]
    rundir = os.path.join(HERE, "runs", f"{guarantee}-{spike}"); os.makedirs(rundir)
    asyncio.run(topics(spike))
    t0, events = time.monotonic(), []
    ws = {w: Worker(w, spike, guarantee, rundir, t0, events) for w in ("w1", "w2")}
    for w in ws.values():
        w.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum(e[2] == "ready" for e in events) < 2:
        time.sleep(0.5)
    time.sleep(3)
    prod_t = time.monotonic()
    events.append((round(prod_t - t0, 2), "producer", "start", f"n={n} rate={rate}"))
    prod = subprocess.Popen([PY, os.path.join(HERE, "produce.py"), spike, str(n), str(rate)],
                            stdout=open(os.path.join(rundir, "producer.log"), "w"), stderr=subprocess.STDOUT)
    sched = sorted(((float(s), w) for w, s in (k.split("@") for k in kills.split(",") if k)))
    for at, w in sched:
        time.sleep(max(0, prod_t + at - time.monotonic()))
        if ws[w].p.poll() is None:
            os.kill(ws[w].p.pid, signal.SIGKILL); ws[w].p.wait(); ws[w].ev("SIGKILL")
        else:
            ws[w].ev("ALREADY_DEAD", f"rc={ws[w].p.returncode}")
        time.sleep(3); ws[w].start()
    prod.wait(); events.append((round(time.monotonic() - t0, 2), "producer", "done", ""))
    # drain: wait until the group's committed offsets reach the end (lag 0), at most 240 s
    drain_deadline, res, drained = time.monotonic() + 180, None, None
    while time.monotonic() < drain_deadline:
        res = oracle(spike, n)
        if res["lag_total"] == 0 and res["fired_records"] >= res["keys_fired"] and res["lost"] == 0:
            drained = round(time.monotonic() - t0, 2); break
        time.sleep(5)
    time.sleep(5); res = oracle(spike, n)  # settle: final count after a further commit interval
    events.append((round(time.monotonic() - t0, 2), "driver", "drained" if drained else "NOT_DRAINED", json.dumps(res["lag"])))
    shutdown = {}
    for w in ws.values():
        if w.p.poll() is None:
            ts = time.monotonic(); w.p.send_signal(signal.SIGTERM)
            try:
                w.p.wait(60); shutdown[w.name] = round(time.monotonic() - ts, 1)
            except subprocess.TimeoutExpired:
                os.killpg(w.p.pid, signal.SIGKILL); shutdown[w.name] = "HUNG>60s"
        else:
            shutdown[w.name] = f"exited rc={w.p.returncode}"
    time.sleep(0.5)
    summary = {"spike": spike, "guarantee": guarantee, "n_keys": n, "rate": rate, "kills": kills,
               "drained_at": drained, "oracle": res, "shutdown": shutdown,
               "events": sorted(events)}
    json.dump(summary, open(os.path.join(rundir, "summary.json"), "w"), indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "events"}))
    for e in sorted(events):
        print(e)
    if res.get("lost") == 0 and res.get("duplicated") == 0 and drained:
        asyncio.run(topics(spike, create=False))  # keep anomalous runs' topics for inspection


if __name__ == "__main__":
    main()
