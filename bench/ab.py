"""Lock-step A/B of two code trees: `python -m bench.ab TREE_A TREE_B [--calls 150] [--warmup 30]`.

On a shared machine, two `bench.profile` processes run one after another see different load, and their
figures can differ by 2x for no reason in the code. Here two worker processes, one per tree (e.g. a
`git archive main` copy and a branch), take turns: one in-process order-sign call each, alternating who
goes first, on the same distinct 20-Observation patients (parsed before the clock, as bench.profile).
Each prints the median of its stage split (bench.profile's columns); then the median over calls of
A's CPU / B's CPU for the same patient, for the whole call and for each stage. Both trees' cards must
agree in number call by call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

CHILD = r'''
import datetime as dt, gc, json, sys, time
from pathlib import Path
root = sys.argv[1]
sys.path.insert(0, root)
from bench.profile import STAGES, bodies, clocks
from protocol_engine.hooks.pipeline import run
from protocol_engine.runtime.registry import load
loaded = load(Path(root) / "rules")
# trees from before the issue-18 renames (Loaded.ruleset; run() taking a client) compare too
revision = (loaded.packset if hasattr(loaded, "packset") else loaded.ruleset).revision
offline = (None,) if "client" in __import__("inspect").signature(run).parameters else ()
gc.collect()
gc.freeze()
now = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
calls, warmup = int(sys.argv[2]), int(sys.argv[3])
raws = bodies(20, warmup, 1_000_000, now, False) + bodies(20, calls, 1, now, False)
with clocks() as spent:
    print("ready", flush=True)
    for raw in raws:
        sys.stdin.readline()
        for key in spent:
            spent[key] = 0.0
        body = json.loads(raw)
        t, cpu = time.perf_counter(), time.thread_time()
        out = run(loaded.runtimes, revision, "ketamine-order-sign", body, now, *offline)
        total, cpu = (time.perf_counter() - t) * 1000, (time.thread_time() - cpu) * 1000
        tm, ms = out.timings, {k: v * 1000 for k, v in spent.items()}
        row = {"validation": ms["validation"], "chart glue": ms["to_chart"] - ms["validation in to_chart"],
               "derive": tm["derive_ms"] - (ms["validation"] - ms["validation in to_chart"]),
               "engine": tm["evaluate_ms"], "cards": tm["cards_ms"], "total": total, "cpu": cpu}
        row["other"] = total - sum(row[k] for k in STAGES[:-2])
        row["cards issued"] = len(out.cards)
        print(json.dumps(row), flush=True)
'''
COLUMNS = ("validation", "chart glue", "derive", "engine", "cards", "other", "total", "cpu")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("a", type=Path, help="code tree A (e.g. main)")
    parser.add_argument("b", type=Path, help="code tree B (e.g. the branch)")
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    workers = [subprocess.Popen([sys.executable, "-c", CHILD, str(root.resolve()), str(args.calls),
                                 str(args.warmup)], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True) for root in (args.a, args.b)]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    rows: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    for i in range(args.warmup + args.calls):
        got: dict[int, dict[str, Any]] = {}
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):  # who goes first alternates
            worker = workers[k]
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
            got[k] = json.loads(worker.stdout.readline())
        if i >= args.warmup:
            rows[0].append(got[0])
            rows[1].append(got[1])
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.close()
        worker.wait()
    if any(x["cards issued"] != y["cards issued"] for x, y in zip(*rows, strict=True)):
        raise SystemExit("the two trees issued different numbers of cards")
    out: dict[str, Any] = {"calls": args.calls}
    for name, found in zip(("A", "B"), rows, strict=True):
        out[name] = {k: round(statistics.median(r[k] for r in found), 3) for k in COLUMNS}
    out["A/B per call (median)"] = {k: round(statistics.median(x[k] / y[k] for x, y in zip(*rows, strict=True)
                                                               if y[k] > 0), 3) for k in COLUMNS if k != "other"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
