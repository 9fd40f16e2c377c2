"""One command for the performance figures: `python -m bench.run` (add `--smoke` for the CI-sized run).

Prints a table: in-process pipeline and HTTP latency through gunicorn (2 workers, keep-alive, one request at a
time) for N = 20, 100, 500, 2000 Observations, each figure also as a ratio to the bare JSON floor (json.loads +
json.dumps of the same body, measured in the same run); throughput with concurrent clients; worker RSS over a
long run. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate import request  # noqa: E402
from bench.server import Gunicorn  # noqa: E402

SERVICE = "/cds-services/ketamine-order-sign"


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(round(p * (len(s) - 1))))] * 1000

    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": s[-1] * 1000}


def measure(call: Callable[[Any], object], n: int, runs: int,
            arg: Callable[[], Any] = lambda: None) -> dict[str, float]:
    """Warm up, then `runs` runs of `n` timed calls; medians over the runs of each percentile.

    `arg()` is made before the clock starts (e.g. a fresh JWT per call)."""
    for _ in range(min(n, 50)):  # the first calls of a size pay allocator and cache growth
        call(arg())
    per_run = []
    for _ in range(runs):
        samples = []
        for _ in range(n):
            value = arg()
            t = time.perf_counter()
            call(value)
            samples.append(time.perf_counter() - t)
        per_run.append(percentiles(samples))
    return {k: statistics.median(r[k] for r in per_run) for k in per_run[0]}


def json_floor(raw: bytes, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        json.dumps(json.loads(raw))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def in_process(sizes: list[int], n: int, runs: int) -> dict[int, dict[str, float]]:
    import gc

    from protocol_engine.pipeline import run
    from protocol_engine.registry import load

    loaded = load(ROOT / "rules")
    gc.collect()
    gc.freeze()  # as gunicorn.conf.py does for each worker
    now = dt.datetime.now(dt.UTC)
    out = {}
    for size in sizes:
        raw = json.dumps(request(size, now)).encode()
        out[size] = measure(lambda _, raw=raw: run(loaded.runtimes, loaded.ruleset.revision, "ketamine-order-sign",
                                                   json.loads(raw), now, None), n, runs)
        out[size]["floor"] = json_floor(raw, max(n, 20))
        out[size]["bytes"] = len(raw)
    return out


class Connection:
    """One keep-alive HTTP/1.1 connection (stdlib: the client's own overhead stays out of the figures)."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.http = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, raw: bytes, token: str | None = None) -> int:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http.request("POST", SERVICE, body=raw, headers=headers)
        response = self.http.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.http.close()


def _ok(status: int) -> None:
    assert status == 200, status


def http_latency(base: str, sizes: list[int], n: int, runs: int) -> dict[int, dict[str, float]]:
    now = dt.datetime.now(dt.UTC)
    out = {}
    conn = Connection(base)
    try:
        for size in sizes:
            raw = json.dumps(request(size, now)).encode()
            out[size] = measure(lambda _, raw=raw: _ok(conn.post(raw)), n, runs)
    finally:
        conn.close()
    return out


def with_jwt(n: int, runs: int) -> dict[str, float]:
    """HTTP latency with auth on: an ES384 JWT per call (made before timing), verified, jti claimed in SQLite."""
    import uuid

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update(kid="bench", alg="ES384", use="sig")
    with tempfile.TemporaryDirectory() as tmp:
        clients = Path(tmp) / "clients.yaml"
        clients.write_text(json.dumps({"clients": [{"iss": "https://ehr.bench", "jwks": {"keys": [public]}}]}))
        server = Gunicorn(Path(tmp), workers=2, log=False,
                          env={"PROTOCOL_ENGINE_AUTH": "required", "PROTOCOL_ENGINE_CLIENTS": str(clients)}).start()
        try:
            raw = json.dumps(request(20, dt.datetime.now(dt.UTC))).encode()
            issued = int(time.time())
            tokens = [jwt.encode({"iss": "https://ehr.bench", "sub": "bench", "aud": server.base + SERVICE,
                                  "iat": issued, "exp": issued + 300, "jti": uuid.uuid4().hex}, key,
                                 algorithm="ES384", headers={"kid": "bench"}) for _ in range(n * runs + min(n, 50))]
            conn = Connection(server.base)
            try:
                return measure(lambda token: _ok(conn.post(raw, token)), n, runs, arg=tokens.pop)
            finally:
                conn.close()
        finally:
            server.close()


def _client(base: str, raw: bytes, seconds: float, queue: Any) -> None:
    done = errors = 0
    end = time.monotonic() + seconds
    conn = Connection(base)
    while time.monotonic() < end:
        try:
            ok = conn.post(raw) == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = Connection(base)
            ok = False
        done += ok
        errors += not ok
    conn.close()
    queue.put((done, errors))


def throughput(base: str, connections: int, seconds: float) -> tuple[str, float, int]:
    """wrk (Debian package) when installed: a C load generator leaves the 2 cores to the service."""
    raw = json.dumps(request(20, dt.datetime.now(dt.UTC))).encode()
    wrk = shutil.which("wrk")
    if wrk:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "body.json").write_bytes(raw)
            script = Path(tmp) / "post.lua"
            script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                              f'local f = io.open("{tmp}/body.json", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
            out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script),
                                  base + SERVICE], capture_output=True, text=True, check=True).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        errors = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)
        return f"wrk, 1 thread, {connections} connections", rps, errors
    queue: Any = mp.Queue()
    procs = [mp.Process(target=_client, args=(base, raw, seconds, queue)) for _ in range(connections)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return (f"{connections} Python client processes (install wrk for a lighter load generator)",
            sum(r[0] for r in results) / seconds, sum(r[1] for r in results))


def memory(server: Gunicorn, total: int) -> tuple[int, int, int]:
    raw = json.dumps(request(20, dt.datetime.now(dt.UTC))).encode()
    conn = Connection(server.base)
    try:
        for _ in range(min(1000, total // 10)):
            conn.post(raw)
        start = server.worker_rss_kib()
        middle = 0
        for i in range(total):
            conn.post(raw)
            if i == total // 2:
                middle = server.worker_rss_kib()
    finally:
        conn.close()
    return start, middle, server.worker_rss_kib()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI: checks it runs and prints")
    args = parser.parse_args()
    sizes = [20, 100, 500, 2000]
    n, runs, seconds, mem_total = (5, 1, 1.0, 200) if args.smoke else (200, 3, 10.0, 100_000)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {dt.datetime.now(dt.UTC):%Y-%m-%d}{' (smoke)' if args.smoke else ''}")
    inproc = in_process(sizes, n, runs)
    workdir = tempfile.TemporaryDirectory()
    server = Gunicorn(Path(workdir.name), workers=2, log=False).start()
    try:
        over_http = http_latency(server.base, sizes, n, runs)
        generator, rps, errors = throughput(server.base, connections=8, seconds=seconds)
        rss = memory(server, mem_total)
    finally:
        server.close()
        workdir.cleanup()
    jwt_row = with_jwt(n, runs)
    print()
    print("| Observations | body | JSON floor | in-process p50 | HTTP p50 | HTTP p90 | HTTP p99 | HTTP max "
          "| p50 / floor |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        f = inproc[size]["floor"]
        h = over_http[size]
        print(f"| {size} | {inproc[size]['bytes'] / 1024:.0f} kB | {f:.2f} ms | {inproc[size]['p50']:.2f} ms | "
              f"{h['p50']:.2f} ms | {h['p90']:.2f} ms | {h['p99']:.2f} ms | {h['max']:.2f} ms | {h['p50'] / f:.1f}x |")
    j = jwt_row
    print(f"| 20, JWT verified | {inproc[20]['bytes'] / 1024:.0f} kB | {inproc[20]['floor']:.2f} ms | | "
          f"{j['p50']:.2f} ms | {j['p90']:.2f} ms | {j['p99']:.2f} ms | {j['max']:.2f} ms | "
          f"{j['p50'] / inproc[20]['floor']:.1f}x |")
    print()
    print(f"throughput, 20 Observations, gunicorn 2 workers, {generator}, {seconds:.0f} s: "
          f"{rps:.0f} req/s, {errors} errors")
    print(f"worker RSS (both workers) over {mem_total} requests: start {rss[0] / 1024:.1f} MiB, "
          f"half-way {rss[1] / 1024:.1f} MiB, end {rss[2] / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
