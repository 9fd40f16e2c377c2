"""gunicorn's threaded worker, made to share keep-alive connections evenly with its sibling workers.

Why: every gthread worker waits on the one shared listening socket and accepts whatever arrives while
it is awake. A client that opens its keep-alive connections in a burst (an EHR's connection pool, wrk)
has them accepted by whichever worker woke first: measured, all 8 of wrk's connections on one worker
in 3 of 6 runs, that worker at 100 % CPU and the other idle, throughput halved. With keep-alive the
split then lasts for the life of the connections.

How: each worker publishes its open-connection count and a heartbeat in a small table of shared
memory (created in the gunicorn master when this module is imported, inherited by every worker), and
listens for new connections only while it holds no more connections than any live sibling. When it
holds more it stops listening and looks again every few milliseconds, so a new connection is taken by
a least-loaded worker: 8 connections opened one after another land 4 and 4. A sibling that has not
beaten for STALE_S (stuck, dead, still loading the app) or is shutting down does not count, so no
connection waits for a worker that will not take it. `reuse_port` (one listening socket per worker,
the kernel choosing) turns the balancing off: a worker that stopped listening there would strand the
connections queued on its own socket.

Counts are compared when a connection is accepted, and a count is not the same as live clients: a
client that drops its connections with requests in flight (wrk at the end of a run, a pool being
closed) is still counted until the worker has answered those requests, 0.6 s after a 64-connection
run here. Connections opened meanwhile went to whichever worker had worked off more of its backlog and
stayed there: 8 connections 8/0 or 7/1 in 3 of 5 runs right after a 64-connection run (issue 20).
The same happened after a worker stalled or restarted. So the spread is also mended while it lasts: a
worker holding at least two connections more than a live sibling answers one request with
`Connection: close` (RFC 9112 section 9.6: the client knows before it sends anything else that this
connection is done, so nothing is lost or retried) and stops listening while it holds more; the
client's next connection is accepted by the sibling. At most one connection per SHED_GAP_S, so a
worker does not hand over more than the sibling can take in before its count is published.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

SLOTS = 64
STALE_S = 3.0
HOLD_POLL_S = 0.005
SHED_GAP_S = 0.05  # at most one connection handed over to a sibling per this many seconds
_SLOT = struct.Struct("qqd")  # pid, open connections, heartbeat (time.monotonic(), system-wide clock)
_TABLE = mmap.mmap(-1, SLOTS * _SLOT.size)  # anonymous and shared: made in the master, inherited on fork


def table() -> list[tuple[int, int, float]]:
    """(pid, connections, heartbeat) of every claimed slot."""
    rows = [_SLOT.unpack_from(_TABLE, i * _SLOT.size) for i in range(SLOTS)]
    return [(int(pid), int(conns), float(beat)) for pid, conns, beat in rows if pid]


class BalancedThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn ships no type information
    """A gthread worker that accepts only while it holds no more connections than any live sibling."""

    _slot = -1
    _held = False
    _balancing = False
    _last_shed = 0.0
    _shed_lock = threading.Lock()  # replaced per worker in run(); the request threads share it

    def init_process(self) -> None:
        # gunicorn's own refusals (414, 431, 400 ...) as OperationOutcomes, not HTML (protocol_engine/gunicorn_errors)
        from . import gunicorn_errors

        gunicorn_errors.install()
        super().init_process()

    def run(self) -> None:
        self._balancing = not self.cfg.reuse_port
        self._shed_lock = threading.Lock()
        self._slot = self._claim()
        self.log.info("Worker %s accepting connections (%s)", self.pid,
                      "balanced with its siblings" if self._balancing else "reuse_port: the kernel balances")
        try:
            super().run()
        finally:
            self._release()

    # -- the shared table -------------------------------------------------------------------
    def _claim(self) -> int:
        """A slot of our own: the one our age points at, else the first free or stale one."""
        now = time.monotonic()
        order: list[int] = [int(self.age) % SLOTS, *range(SLOTS)]
        for i in order:
            pid, _, beat = _SLOT.unpack_from(_TABLE, i * _SLOT.size)
            if not pid or pid == self.pid or now - beat > STALE_S or not _alive(pid):
                _SLOT.pack_into(_TABLE, i * _SLOT.size, self.pid, self.nr_conns, now)
                return i
        return -1  # a full table: this worker balances against the others, they do not see it

    def _publish(self) -> None:
        if self._slot >= 0:
            count = self.nr_conns if self.alive else 1 << 40  # a stopping worker takes nothing new
            _SLOT.pack_into(_TABLE, self._slot * _SLOT.size, self.pid, count, time.monotonic())

    def _release(self) -> None:
        if self._slot >= 0:
            _SLOT.pack_into(_TABLE, self._slot * _SLOT.size, 0, 0, 0.0)
            self._slot = -1

    def _fewest_elsewhere(self) -> int | None:
        """The fewest connections a live sibling holds (None: no live sibling)."""
        now = time.monotonic()
        fewest: int | None = None
        for i in range(SLOTS):
            if i == self._slot:
                continue
            pid, conns, beat = _SLOT.unpack_from(_TABLE, i * _SLOT.size)
            if pid and pid != self.pid and now - beat <= STALE_S and (fewest is None or conns < fewest) \
                    and _alive(pid):
                fewest = int(conns)
        return fewest

    def _fair(self) -> bool:
        """Whether no live sibling holds fewer connections than we do."""
        if not self._balancing:
            return True
        fewest = self._fewest_elsewhere()
        return fewest is None or fewest >= self.nr_conns

    def _hand_over(self) -> bool:
        """Whether to close this request's connection after answering it: we hold two or more above a sibling.

        Runs on a request thread; nr_conns is the main thread's, read once (an int read is atomic).
        """
        if not self._balancing or not self.alive:
            return False
        held = self.nr_conns
        fewest = self._fewest_elsewhere()
        if fewest is None or held <= fewest + 1:
            return False
        with self._shed_lock:
            now = time.monotonic()
            if now - self._last_shed < SHED_GAP_S:
                return False
            self._last_shed = now
        return True

    def handle_request(self, req: Any, conn: Any) -> bool:
        if self._hand_over():
            req.force_close()  # gthread answers with "Connection: close" and closes after the response
        return bool(super().handle_request(req, conn))

    # -- gthread's accept loop, gated --------------------------------------------------------
    def set_accept_enabled(self, enabled: bool) -> None:
        fair = self._fair() if enabled else True
        self._held = enabled and not fair
        super().set_accept_enabled(enabled and fair)

    def accept(self, listener: Any) -> None:
        super().accept(listener)
        self._publish()
        if self._accepting and not self._fair():
            super().set_accept_enabled(False)
            self._held = True

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # gthread's loop calls set_accept_enabled(True) before each wait while we are not listening,
        # so a held worker looks again at every (shortened) turn.
        self._publish()
        super().wait_for_and_dispatch_events(min(timeout, HOLD_POLL_S) if self._held else timeout)
        self._publish()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
