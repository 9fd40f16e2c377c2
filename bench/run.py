"""One command for the performance figures: `python -m bench.run` (add `--smoke` for the CI-sized run).

What it measures, all in one run on this machine, printed never asserted:
- in-process pipeline and HTTP latency through gunicorn as deployed (gunicorn.conf.py, 2 workers, one
  keep-alive connection, one request at a time) for order-sign at 20, 100, 500 and 2,000 Observations and
  patient-view at 20, every request a distinct patient (no two share a patient, a resource or a time);
  each p50 beside the JSON floor (json.loads + json.dumps of the same body, same run);
- the same patient again: order-select then order-sign, patient-view twice (what per-worker memory saves);
- the profile split of an in-process call (validation, chart glue, derive, engine, cards, other; bench/profile.py);
- throughput with wrk at 8 and 64 keep-alive connections over rotating distinct patients, wrk pinned to
  the last core with taskset, each worker's CPU share (from /proc/<pid>/stat) and connection count printed;
- worker RSS over 100,000 requests.
Every latency and throughput figure is the median of RUNS runs; every run's own figures are printed too.
Warm-up: WARMUP calls per row on patients outside the measured ones, before the first run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import http.client
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate import for_hook, request  # noqa: E402
from bench.server import Gunicorn  # noqa: E402

RUNS = 5
WARMUP = 50
PATIENTS = itertools.count(1)  # every cold call gets a patient no other call has
SERVICE = {hook: f"/cds-services/ketamine-{hook}" for hook in ("order-sign", "order-select", "patient-view")}


def cold(size: int, now: dt.datetime, hook: str = "order-sign") -> dict[str, Any]:
    seed = next(PATIENTS)
    body = request(size, now, seed=seed, patient=f"pt{seed}")
    body["hookInstance"] = str(uuid.uuid4())
    return body if hook == "order-sign" else for_hook(body, hook)


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(round(p * (len(s) - 1))))] * 1000

    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": s[-1] * 1000}


def measure(call: Callable[[Any], object], make: Callable[[], Any], n: int, runs: int,
            warmup: int) -> tuple[dict[str, float], list[dict[str, float]]]:
    """`warmup` calls, then `runs` runs of `n` timed calls. Each call's argument is made before its clock starts.

    Returns the median over runs of each percentile, and each run's own percentiles."""
    for _ in range(warmup):
        call(make())
    per_run = []
    for _ in range(runs):
        samples = []
        for _ in range(n):
            value = make()
            t = time.perf_counter()
            call(value)
            samples.append(time.perf_counter() - t)
        per_run.append(percentiles(samples))
    return {k: statistics.median(r[k] for r in per_run) for k in per_run[0]}, per_run


def json_floor(raw: bytes, n: int = 50, fast: bool = False) -> float:
    """Median ms to parse and write the body: the standard library (the issue's floor), or orjson (what the
    service itself now parses bodies and writes answers with, http/jsonio.py: the stricter floor)."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        if fast:
            orjson.dumps(orjson.loads(raw))
        else:
            json.dumps(json.loads(raw))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


class Connection:
    """One keep-alive HTTP/1.1 connection (stdlib: the client's own overhead stays out of the figures)."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.http = http.client.HTTPConnection(host, int(port), timeout=60)

    def post(self, path: str, raw: bytes, token: str | None = None) -> int:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http.request("POST", path, body=raw, headers=headers)
        response = self.http.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.http.close()


def _ok(status: int) -> None:
    assert status == 200, status


Row = tuple[str, int, Callable[[], Any], Callable[[Any], object], int]  # label, size, make, call, n


def latency_rows(post: Callable[[str, bytes], int] | None, sizes: list[int], n: int, now: dt.datetime) -> list[Row]:
    """The rows, driven either over HTTP (`post`) or in-process (`post` None)."""
    from protocol_engine.hooks.pipeline import run
    from protocol_engine.runtime.registry import load

    loaded = None if post is not None else load(ROOT / "rules")
    if loaded is not None:
        gc.collect()
        gc.freeze()  # as gunicorn.conf.py does in each worker

    def call(hook: str) -> Callable[[bytes], object]:
        if post is not None:
            return lambda raw: _ok(post(SERVICE[hook], raw))
        assert loaded is not None
        return lambda raw: run(loaded.runtimes, loaded.packset.revision, f"ketamine-{hook}", json.loads(raw), now)

    def pair(first: str, second: str) -> tuple[Callable[[], Any], Callable[[Any], object]]:
        """The same patient twice: the first call (untimed, made with the argument) warms what memory holds."""
        def make() -> bytes:
            body = cold(20, now)
            first_body = body if first == "order-sign" else for_hook(body, first)
            call(first)(json.dumps(first_body).encode())
            again = body if second == "order-sign" else for_hook(body, second)
            again["hookInstance"] = str(uuid.uuid4())
            return json.dumps(again).encode()
        return make, call(second)

    rows: list[Row] = []
    for size in sizes:
        count = n if size <= 100 else max(5, n // (4 if size <= 500 else 16))
        rows.append((f"order-sign, {size} Observations", size,
                     lambda size=size: json.dumps(cold(size, now)).encode(), call("order-sign"), count))
    rows.append(("patient-view, 20 Observations", 20,
                 lambda: json.dumps(cold(20, now, "patient-view")).encode(), call("patient-view"), n))
    make, again = pair("order-select", "order-sign")
    rows.append(("same patient: order-sign after order-select, 20", 20, make, again, n))
    make, again = pair("patient-view", "patient-view")
    rows.append(("same patient: patient-view again, 20", 20, make, again, n))
    return rows


Measured = tuple[str, int, dict[str, float], list[dict[str, float]]]


def run_rows(rows: list[Row], runs: int, warmup: int) -> list[Measured]:
    return [(label, size, *measure(call, make, n, runs, min(warmup, n))) for label, size, make, call, n in rows]


def with_jwt(n: int, runs: int, warmup: int) -> tuple[dict[str, float], list[dict[str, float]]]:
    """HTTP latency with auth on: an ES384 JWT per call (made before timing), verified, jti claimed in SQLite."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update(kid="bench", alg="ES384", use="sig")
    now = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory() as tmp:
        clients = Path(tmp) / "clients.yaml"
        server = Gunicorn(Path(tmp), workers=2,
                          env={"PROTOCOL_ENGINE_AUTH": "required", "PROTOCOL_ENGINE_CLIENTS": str(clients)})
        clients.write_text(json.dumps({"clients": [{"iss": "https://ehr.bench", "audience": server.base,
                                                    "jwks": {"keys": [public]}}]}))
        server.start(timeout=300).wait_for_workers()
        conn = Connection(server.base)

        def make() -> tuple[bytes, str]:
            issued = int(time.time())
            token = jwt.encode({"iss": "https://ehr.bench", "sub": "bench", "aud": server.base + SERVICE["order-sign"],
                                "iat": issued, "exp": issued + 120, "jti": uuid.uuid4().hex}, key,
                               algorithm="ES384", headers={"kid": "bench"})
            return json.dumps(cold(20, now)).encode(), token

        try:
            return measure(lambda arg: _ok(conn.post(SERVICE["order-sign"], *arg)), make, n, runs, warmup)
        finally:
            conn.close()
            server.close()


# -- throughput ---------------------------------------------------------------------------------------

def wrk_script(tmp: Path, bodies: int, now: dt.datetime) -> Path:
    """A wrk script that posts `bodies` distinct patients' order-sign requests in turn."""
    (tmp / "bodies").mkdir()
    for i in range(bodies):
        (tmp / "bodies" / f"{i}.json").write_bytes(json.dumps(cold(20, now)).encode())
    script = tmp / "post.lua"
    script.write_text(f"""
local bodies = {{}}
for i = 0, {bodies - 1} do
  local f = io.open("{tmp}/bodies/" .. i .. ".json", "rb")
  bodies[#bodies + 1] = f:read("*a")
  f:close()
end
local n = 0
local headers = {{["Content-Type"] = "application/json"}}
request = function()
  n = n + 1
  return wrk.format("POST", "{SERVICE['order-sign']}", headers, bodies[(n % #bodies) + 1])
end
""")
    return script


def wrk_command(connections: int, seconds: float, script: Path, url: str) -> list[str]:
    wrk = shutil.which("wrk")
    assert wrk
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script), url]
    taskset = shutil.which("taskset")
    if taskset and (os.cpu_count() or 1) > 1:  # wrk on the last core; the workers are left to the scheduler
        cmd = [taskset, "-c", str((os.cpu_count() or 1) - 1), *cmd]
    return cmd


def wrk_run(server: Gunicorn, connections: int, seconds: float, script: Path) -> dict[str, Any]:
    pids = server.worker_pids()
    cpu0 = {pid: server.cpu_seconds(pid) for pid in pids}
    t0 = time.monotonic()
    proc = subprocess.Popen(wrk_command(connections, seconds, script, server.base + SERVICE["order-sign"]),
                            stdout=subprocess.PIPE, text=True)
    time.sleep(seconds / 2)  # mid-run: every connection open, none closing
    spread = server.connections_per_worker()
    out, _ = proc.communicate(timeout=seconds + 60)
    elapsed = time.monotonic() - t0
    share = {pid: (server.cpu_seconds(pid) - cpu0[pid]) / elapsed * 100 for pid in pids}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)
    cpus = sorted(share.values())
    # a run that answered nothing proves no spread, whatever the CPU shares say
    even = total > 0 and bool(cpus) and cpus[-1] > 0 and (cpus[-1] - cpus[0]) / cpus[-1] <= 0.2
    return {"rps": rps, "requests": total, "errors": errors, "cpu": [round(c) for c in share.values()],
            "connections": list(spread.values()), "within_20pct": even}


def throughput(server: Gunicorn, runs: int, seconds: float, bodies: int,
               now: dt.datetime) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {8: [], 64: []}
    with tempfile.TemporaryDirectory() as tmp:
        script = wrk_script(Path(tmp), bodies, now)
        wrk_run(server, 8, min(seconds, 3), script)  # warm-up, not reported
        for _ in range(runs):
            for connections in out:  # interleaved, so a drift in the machine hits both alike
                out[connections].append(wrk_run(server, connections, seconds, script))
    return out


def memory(server: Gunicorn, total: int, rps: float, bodies: int, now: dt.datetime) -> list[tuple[int, int]]:
    """(requests so far, RSS of both workers in KiB) at the start, half-way and the end of `total` requests."""
    points = [(0, server.worker_rss_kib())]
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        script = wrk_script(Path(tmp), bodies, now)
        for _ in range(2):
            target = total // 2
            while target > 0:
                seconds = max(1.0, target / max(rps, 1.0) * 1.05)
                result = wrk_run(server, 8, seconds, script)
                done += result["requests"]
                target -= result["requests"]
            points.append((done, server.worker_rss_kib()))
    return points


# -- report -------------------------------------------------------------------------------------------

def _fmt(x: float) -> str:
    return f"{x:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI: checks it runs and prints")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per run of a 20-Observation row")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one wrk run")
    parser.add_argument("--rss-requests", type=int, default=100_000, help="requests of the memory run")
    args = parser.parse_args()
    sizes = [20, 100, 500, 2000]
    if args.smoke:
        n, runs, warmup, seconds, mem_total, bodies = 4, 2, 2, 1.0, 200, 20
    else:
        n, runs, warmup, seconds, mem_total, bodies = (args.calls, RUNS, WARMUP, args.seconds, args.rss_requests,
                                                       600)
    now = dt.datetime.now(dt.UTC)
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, load average at start "
          f"{load[0]:.2f}{' (smoke)' if args.smoke else ''}")
    print(f"method: {runs} runs per row, medians over runs; {warmup} warm-up calls per row (other patients) "
          f"before the first run; every cold call a new patient")

    # Each section is printed as soon as it is measured, so a run cut short still leaves its figures.
    floors = {size: json_floor(json.dumps(cold(size, now)).encode()) for size in sizes}
    fast_floors = {size: json_floor(json.dumps(cold(size, now)).encode(), fast=True) for size in sizes}
    inproc = run_rows(latency_rows(None, sizes, n, now), runs, warmup)
    jwt_row = with_jwt(n, runs, warmup)

    from bench.profile import split
    stages = {"cold": split(20, max(n, 20), warmup, repeat=False),
              "same patient": split(20, max(n, 20), warmup, repeat=True)}

    workdir = tempfile.TemporaryDirectory()
    server = Gunicorn(Path(workdir.name), workers=2).start(timeout=300).wait_for_workers()
    try:
        conn = Connection(server.base)
        try:
            over_http = run_rows(latency_rows(conn.post, sizes, n, now), runs, warmup)
        finally:
            conn.close()
        _print_latency(inproc, over_http, jwt_row, floors, fast_floors, stages, sizes, now)
        if shutil.which("wrk"):
            tput = throughput(server, runs, seconds, bodies, now)
            _print_throughput(tput, bodies, seconds)
            rps = statistics.median(r["rps"] for r in tput[8]) if tput else 100.0
            rss = memory(server, mem_total, rps, bodies, now)
            print("\nworker RSS (both workers), MiB: " +
                  ", ".join(f"after {done} requests {kib / 1024:.1f}" for done, kib in rss))
        else:
            print("\nwrk is not installed: no throughput or memory rows (.ci/run installs it)")
    finally:
        server.close()
        workdir.cleanup()


def _print_latency(inproc: list[Measured], over_http: list[Measured],
                   jwt_row: tuple[dict[str, float], list[dict[str, float]]], floors: dict[int, float],
                   fast_floors: dict[int, float], stages: dict[str, dict[str, float]], sizes: list[int],
                   now: dt.datetime) -> None:
    print()
    print("JSON floor: json.loads + json.dumps of the same body (the goal's floor); orjson floor: the same with orjson,"
          " which the service uses for bodies and answers")
    print("| row | body | JSON floor | orjson floor | in-process p50 | HTTP p50 | HTTP p90 | HTTP p99 | HTTP max "
          "| HTTP p50 / floor | HTTP p50 / orjson floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (label, size, ip, _), (_, _, h, _) in zip(inproc, over_http, strict=True):
        body = len(json.dumps(request(size, now, seed=1, patient="x")))
        print(f"| {label} | {body / 1024:.0f} kB | {_fmt(floors[size])} ms | {_fmt(fast_floors[size])} ms | "
              f"{_fmt(ip['p50'])} ms | {_fmt(h['p50'])} ms | {_fmt(h['p90'])} ms | {_fmt(h['p99'])} ms | "
              f"{_fmt(h['max'])} ms | {h['p50'] / floors[size]:.1f}x | {h['p50'] / fast_floors[size]:.1f}x |")
    j = jwt_row[0]
    print(f"| order-sign, 20, JWT verified (ES384, jti claimed in SQLite) | | {_fmt(floors[20])} ms | "
          f"{_fmt(fast_floors[20])} ms | | {_fmt(j['p50'])} ms | {_fmt(j['p90'])} ms | {_fmt(j['p99'])} ms | "
          f"{_fmt(j['max'])} ms | {j['p50'] / floors[20]:.1f}x | {j['p50'] / fast_floors[20]:.1f}x |")
    per_obs = [(size, next(h for lbl, s, h, _ in over_http if s == size and lbl.startswith("order-sign"))["p50"])
               for size in sizes]
    print("\ncost per Observation (HTTP p50 / N): " + ", ".join(f"{s}: {p / s * 1000:.0f} us" for s, p in per_obs))

    print("\nprofile split of one in-process order-sign call, 20 Observations, median ms (bench/profile.py):")
    print("| call | " + " | ".join(stages["cold"]) + " |")
    print("|---|" + "---:|" * len(stages["cold"]))
    for name, split_ms in stages.items():
        print(f"| {name} | " + " | ".join(_fmt(v) for v in split_ms.values()) + " |")
    http_20 = over_http[0][2]["p50"]
    print(f"HTTP (gunicorn + Flask + JSON body, HTTP p50 minus in-process p50, 20 Observations): "
          f"{http_20 - inproc[0][2]['p50']:.2f} ms")
    print("\nraw runs (each run's own figures):")
    for (label, _, _, ip_runs), (_, _, _, h_runs) in zip(inproc, over_http, strict=True):
        print(f"  {label}: in-process p50 " + " ".join(_fmt(r["p50"]) for r in ip_runs) +
              " | HTTP p50 " + " ".join(_fmt(r["p50"]) for r in h_runs) +
              " | HTTP p99 " + " ".join(_fmt(r["p99"]) for r in h_runs))
    print("  JWT row: HTTP p50 " + " ".join(_fmt(r["p50"]) for r in jwt_row[1]))


def _print_throughput(tput: dict[int, list[dict[str, Any]]], bodies: int, seconds: float) -> None:
    print(f"\nthroughput, order-sign, 20 Observations, rotating over {bodies} distinct patients, gunicorn "
          f"2 workers, wrk 1 thread pinned with taskset, {seconds:.0f} s runs:")
    print("| connections | req/s (median) | errors | worker CPU % (median run) | connections per worker (mid-run) "
          "| runs within 20 % |")
    print("|---:|---:|---:|---|---|---:|")
    for connections, results in tput.items():
        mid = sorted(results, key=lambda r: r["rps"])[len(results) // 2]
        print(f"| {connections} | {statistics.median(r['rps'] for r in results):.0f} | "
              f"{sum(r['errors'] for r in results)} | {' / '.join(map(str, mid['cpu']))} | "
              f"{' / '.join(map(str, mid['connections']))} | "
              f"{sum(r['within_20pct'] for r in results)} of {len(results)} |")
    for connections, results in tput.items():
        for r in results:
            print(f"  wrk {connections} connections: {r['rps']:.0f} req/s, {r['requests']} requests, "
                  f"{r['errors']} errors, worker CPU % {r['cpu']}, connections {r['connections']}, "
                  f"within 20 %: {r['within_20pct']}")

if __name__ == "__main__":
    main()
