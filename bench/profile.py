"""Where one in-process hook call spends its time: `python -m bench.profile [--size 20] [--calls 300]`.

Prints the median per stage over `--calls` calls on distinct patients (a fresh chart per call, built
before the clock starts), after `--warmup` calls on other patients: validation (every fhir.resources
model validation, wherever the pipeline asks for it), chart-building glue, deriving facts, the rule
engine, card rendering and the rest (hook parsing, prefetch resolution). Same-machine, same-process
figures: compare them with each other (A/B), not with another machine's. `--cprofile` adds the top of
a cProfile run; `--repeat` uses one patient for every call (what a per-worker cache can make cheaper).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate import request  # noqa: E402

STAGES = ("validation", "chart glue", "derive", "engine", "cards", "other", "total")
# "cpu": the call's own thread CPU time, which other processes on a busy machine do not inflate.
COLUMNS = (*STAGES, "cpu")


@contextmanager
def clocks() -> Iterator[dict[str, float]]:
    """Time spent in normalise._validate (the one place fhir.resources validates) and in normalise.to_chart."""
    from adapters.fhir import normalise

    spent = {"validation": 0.0, "to_chart": 0.0, "validation in to_chart": 0.0}
    validate: Callable[..., Any] = normalise._validate
    to_chart: Callable[..., Any] = normalise.to_chart

    def timed_validate(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return validate(*args, **kwargs)
        finally:
            spent["validation"] += time.perf_counter() - t

    def timed_to_chart(*args: Any, **kwargs: Any) -> Any:
        t, before = time.perf_counter(), spent["validation"]
        try:
            return to_chart(*args, **kwargs)
        finally:
            spent["to_chart"] += time.perf_counter() - t
            spent["validation in to_chart"] += spent["validation"] - before

    normalise._validate, normalise.to_chart = timed_validate, timed_to_chart  # type: ignore[assignment]
    try:
        yield spent
    finally:
        normalise._validate, normalise.to_chart = validate, to_chart  # type: ignore[assignment]


def bodies(size: int, count: int, start: int, now: dt.datetime, repeat: bool) -> list[bytes]:
    """`count` request bodies of distinct patients (one per seed), or one patient repeated."""
    seeds = [start] * count if repeat else list(range(start, start + count))
    return [json.dumps(request(size, now, seed=seed, patient=f"p{seed}")).encode() for seed in seeds]


def split(size: int, calls: int, warmup: int, repeat: bool) -> dict[str, float]:
    """Median ms per stage; the warm-up calls use other patients than the measured ones."""
    from protocol_engine.hooks.pipeline import run
    from protocol_engine.runtime.registry import load

    loaded = load(ROOT / "rules")
    gc.collect()
    gc.freeze()  # as gunicorn.conf.py does in each worker
    now = dt.datetime.now(dt.UTC)
    raws = bodies(size, warmup, 1_000_000, now, False) + bodies(size, calls, 1, now, repeat)
    rows: list[dict[str, float]] = []
    with clocks() as spent:
        for i, raw in enumerate(raws):
            for key in spent:
                spent[key] = 0.0
            t, cpu = time.perf_counter(), time.thread_time()
            outcome = run(loaded.runtimes, loaded.packset.revision, "ketamine-order-sign", json.loads(raw), now)
            total, cpu = (time.perf_counter() - t) * 1000, (time.thread_time() - cpu) * 1000
            if i < warmup:
                continue
            tm = outcome.timings
            ms = {k: v * 1000 for k, v in spent.items()}
            row = {"validation": ms["validation"], "chart glue": ms["to_chart"] - ms["validation in to_chart"],
                   "derive": tm["derive_ms"] - (ms["validation"] - ms["validation in to_chart"]),
                   "engine": tm["evaluate_ms"], "cards": tm["cards_ms"], "total": total, "cpu": cpu}
            row["other"] = total - sum(row[k] for k in STAGES[:-2])
            rows.append(row)
    return {k: statistics.median(r[k] for r in rows) for k in COLUMNS}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=20, help="Observations per chart")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeat", action="store_true", help="the same patient every call")
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args()
    result = split(args.size, args.calls, args.warmup, args.repeat)
    print(json.dumps({"size": args.size, "calls": args.calls, "repeat": args.repeat,
                      **{k: round(v, 3) for k, v in result.items()}}))
    if args.cprofile:
        from protocol_engine.hooks.pipeline import run
        from protocol_engine.runtime.registry import load

        loaded = load(ROOT / "rules")
        now = dt.datetime.now(dt.UTC)
        raws = bodies(args.size, args.calls, 2_000_000, now, args.repeat)
        profile = cProfile.Profile()
        profile.enable()
        for raw in raws:
            run(loaded.runtimes, loaded.packset.revision, "ketamine-order-sign", json.loads(raw), now)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
