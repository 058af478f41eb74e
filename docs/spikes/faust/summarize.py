"""Table of all runs from runs/*/summary.json (markdown rows)."""
import glob, json, os

print("| run | guarantee | kills (s after producer start) | lost | dup keys (extra recs) | restart→Worker ready (s) | drained (lag 0) | max gap in fired output (s) | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for f in sorted(glob.glob(os.path.join(os.path.dirname(__file__) or ".", "runs/*/summary.json")), key=os.path.getmtime):
    s = json.load(open(f)); o = s["oracle"]; ev = s["events"]
    if s["n_keys"] < 1000:
        continue
    rec = []
    for t, who, kind, _ in ev:
        if kind == "start" and who.startswith("w") and not who.endswith(".1"):
            ready = [t2 for t2, w2, k2, _ in ev if w2 == who and k2 in ("ready", "worker_ready") and t2 >= t]
            crash = [t2 for t2, w2, k2, l2 in ev if w2 == who and k2 == "error" and "Crashed" in l2]
            rec.append(f"{who}: {min(ready) - t:.1f}" if ready else f"{who}: never")
            if crash:
                rec[-1] += f" (recovery CRASHED at +{min(crash) - t:.0f}s)"
    errs = sorted({l.split("reason=")[1][:40] if "reason=" in l else l.split("]: ")[-1][:40]
                   for _, _, k, l in ev if k == "error" and "Traceback" not in l})
    lag = "yes" if s["drained_at"] and o["lag_total"] == 0 else f"NO (lag {o['lag_total']})"
    print(f"| {s['spike']} | {s['guarantee']} | {s['kills']} | {o['lost']} | {o['duplicated']} ({o['extra_records']}) | "
          f"{'; '.join(rec)} | {lag} | {o.get('max_fired_gap_s', '?')} | {'; '.join(errs) or '-'} |")
