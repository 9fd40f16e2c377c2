"""Where one in-process hook call spends its time: `python -m bench.profile [--size 20] [--calls 300]`.

Prints the median per stage over `--calls` calls on distinct patients (a fresh chart per call, built
before the clock starts), after `--warmup` calls on other patients: validation (every fhir.resources
model validation, wherever the pipeline asks for it), chart-building glue, deriving facts, the rule
engine, card rendering and the rest (checking the hook request, resolving the prefetch, the stages'
own glue); the request body is parsed before the clock starts (the HTTP layer's work: `--json`).
Same-machine, same-process figures: compare them with each other (A/B), not with another machine's.
`--cprofile` adds the top of a cProfile run; `--repeat` uses one patient for every call (what a
per-worker cache can make cheaper).
`--json` compares, interleaved in one process, the standard library and http/jsonio.py (orjson) on the
same request bodies and responses: parse and encode, the part of a request the stage split leaves out.
`--http` times the whole request through the Flask app in-process (the test client, no socket): the body
parse, the view and the response encoding added to the pipeline, what the stage split leaves out.
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
            # Parsed before the clock starts: the body's parse is the HTTP layer's (jsonio, `--json`), and timed
            # inside it would be counted as "other" (it was, until 2026-11-30: most of that column's 1.9 ms).
            body = json.loads(raw)
            t, cpu = time.perf_counter(), time.thread_time()
            outcome = run(loaded.runtimes, loaded.packset.revision, "ketamine-order-sign", body, now)
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


def through_flask(size: int, calls: int, warmup: int, repeat: bool) -> dict[str, float]:
    """Median ms of a whole order-sign request through the app (test client): wall time and thread CPU."""
    import tempfile

    from server import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"auth": "disabled", "database_url": f"sqlite:///{tmp}/bench.db", "reload_interval": 0})
        client = app.test_client()
        gc.collect()
        gc.freeze()
        now = dt.datetime.now(dt.UTC)
        raws = bodies(size, warmup, 1_000_000, now, False) + bodies(size, calls, 1, now, repeat)
        walls, cpus = [], []
        for i, raw in enumerate(raws):
            t, cpu = time.perf_counter(), time.thread_time()
            response = client.post("/cds-services/ketamine-order-sign", data=raw, content_type="application/json")
            wall, cpu = (time.perf_counter() - t) * 1000, (time.thread_time() - cpu) * 1000
            assert response.status_code == 200, response.status_code
            if i >= warmup:
                walls.append(wall)
                cpus.append(cpu)
        app.extensions["protocol_engine"]["audit"].flush()
    return {"http total": statistics.median(walls), "http cpu": statistics.median(cpus)}


def json_ab(size: int, calls: int, warmup: int) -> dict[str, float]:
    """Median ms to parse each distinct body and encode its response: json (as before) against http/jsonio."""
    from protocol_engine.hooks.pipeline import run
    from protocol_engine.http import jsonio
    from protocol_engine.runtime.registry import load

    loaded = load(ROOT / "rules")
    gc.collect()
    gc.freeze()
    now = dt.datetime.now(dt.UTC)
    raws = bodies(size, warmup + calls, 1, now, False)
    answers = [{"cards": run(loaded.runtimes, loaded.packset.revision, "ketamine-order-sign", json.loads(raw),
                             now).cards} for raw in raws]
    flask_like = {"ensure_ascii": False, "sort_keys": False, "separators": (",", ":")}
    provider = jsonio.Provider.__new__(jsonio.Provider)  # no app: dumps reads only these two
    provider.sort_keys, provider.ensure_ascii = False, False
    pairs = {"parse json": lambda i: json.loads(raws[i]), "parse jsonio": lambda i: jsonio.loads(raws[i]),
             "encode json": lambda i: json.dumps(answers[i], **flask_like),  # type: ignore[arg-type]
             "encode jsonio": lambda i: provider.dumps(answers[i])}
    spent: dict[str, list[float]] = {k: [] for k in pairs}
    for i in range(len(raws)):
        for name, call in pairs.items():  # interleaved: a drift of the machine hits both alike
            t = time.thread_time()
            call(i)
            if i >= warmup:
                spent[name].append((time.thread_time() - t) * 1000)
    out = {k: statistics.median(v) for k, v in spent.items()}
    out["body kB"] = statistics.median(len(r) for r in raws) / 1000
    out["response kB"] = statistics.median(len(json.dumps(a)) for a in answers) / 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=20, help="Observations per chart")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeat", action="store_true", help="the same patient every call")
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--json", action="store_true", help="JSON parse/encode: standard library against jsonio")
    parser.add_argument("--http", action="store_true", help="the whole request through the Flask app, in-process")
    args = parser.parse_args()
    if args.json:
        found = json_ab(args.size, args.calls, args.warmup)
        print(json.dumps({"size": args.size, "calls": args.calls, **{k: round(v, 3) for k, v in found.items()}}))
        return
    if args.http:
        found = through_flask(args.size, args.calls, args.warmup, args.repeat)
        print(json.dumps({"size": args.size, "calls": args.calls, "repeat": args.repeat,
                          **{k: round(v, 3) for k, v in found.items()}}))
        return
    result = split(args.size, args.calls, args.warmup, args.repeat)
    print(json.dumps({"size": args.size, "calls": args.calls, "repeat": args.repeat,
                      **{k: round(v, 3) for k, v in result.items()}}))
    if args.cprofile:
        from protocol_engine.hooks.pipeline import run
        from protocol_engine.runtime.registry import load

        loaded = load(ROOT / "rules")
        now = dt.datetime.now(dt.UTC)
        parsed = [json.loads(raw) for raw in bodies(args.size, args.calls, 2_000_000, now, args.repeat)]
        profile = cProfile.Profile()
        profile.enable()
        for body in parsed:  # parsed beforehand, as split() does: the body's parse is not the pipeline's
            run(loaded.runtimes, loaded.packset.revision, "ketamine-order-sign", body, now)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
