"""A real gunicorn process on loopback, for the benchmarks and the tests that need one (load, kill, soak)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gunicorn:
    """`gunicorn --config gunicorn.conf.py server:create_app()` with its own SQLite file and metrics directory.

    The process gets its own session, so `kill()` can take master and workers down at once (a hard crash).
    """

    def __init__(self, workdir: Path, workers: int = 2, env: Mapping[str, str] | None = None,
                 database_url: str | None = None, log: bool = True, preset_metrics_dir: bool = True) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        metrics_dir = self.workdir / "metrics"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "gunicorn.log"
        self.env = {**os.environ, "PROTOCOL_ENGINE_AUTH": "disabled",
                    "PROTOCOL_ENGINE_DATABASE_URL": database_url or f"sqlite:///{self.workdir}/protocol-engine.db",
                    "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **(env or {})}
        if not preset_metrics_dir:  # as a user starts it: gunicorn.conf.py picks the directory itself
            del self.env["PROMETHEUS_MULTIPROC_DIR"]
        self.keep_log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> Gunicorn:  # worker boot takes long on a busy shared CI machine
        out = self.log_path.open("ab") if self.keep_log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"), "--workers",
             str(self.workers), "--bind", f"127.0.0.1:{self.port}", "server:create_app()"],
            cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if self.keep_log:
            out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.close()
        raise RuntimeError("gunicorn did not start: " + self.log_tail())

    def wait_for_workers(self, timeout: float = 300.0) -> Gunicorn:
        """Return once every worker has started accepting (its app loaded); needs the log (log=True)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_path.exists() and self.log_path.read_text(errors="replace").count(
                    "accepting connections") >= self.workers:
                return self
            time.sleep(0.1)
        raise RuntimeError("not every worker started: " + self.log_tail())

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(stat.parent.name))
        return sorted(pids)

    @staticmethod
    def rss_kib(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def connections_per_worker(self) -> dict[int, int]:
        """Established client connections each worker process holds on our port (from /proc, Linux)."""
        inodes: set[str] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == self.port:  # ESTABLISHED
                    inodes.add(fields[9])
        out = {}
        for pid in self.worker_pids():
            count = 0
            try:
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        count += os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes
            except OSError:
                pass
            out[pid] = count
        return out

    def close_and_wait_idle(self, conns: Iterable[Any], within_s: float = 30.0) -> None:
        """Close the client connections, then wait until no worker holds one (so the next step starts even)."""
        for conn in conns:
            conn.close()
        deadline = time.monotonic() + within_s
        while any(self.connections_per_worker().values()) and time.monotonic() < deadline:
            time.sleep(0.1)

    @staticmethod
    def cpu_seconds(pid: int) -> float:
        """User + system CPU time a process has used (/proc/<pid>/stat fields 14 and 15)."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def worker_rss_kib(self) -> int:
        return sum(self.rss_kib(pid) for pid in self.worker_pids())

    def kill(self) -> None:
        """SIGKILL to master and workers at once: no shutdown hooks, no flushing."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
