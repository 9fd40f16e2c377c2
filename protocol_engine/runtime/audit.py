"""Decision traces written off the request path; a database outage never fails a hook call.

While the database is away the writer keeps the batch it holds and retries it with back-off (0.5 s doubling to
30 s) instead of dropping it; calls meanwhile queue their traces (up to the queue's capacity, then they are
dropped, logged and counted). One log line per outage, not one per trace.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import queue
import threading
import time
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from . import metrics
from .store import Store

log = logging.getLogger("protocol_engine.audit")
BATCH = 200
# A trace waits up to this long for others to share its transaction. Writing one trace per call put the
# writer thread on the GIL during the next call (about 1.2 ms of p50 latency, bench/run.py); gathering them
# moves that cost to one short burst per interval. Feedback and shutdown flush at once.
GATHER_S = 0.25
POLL_S = 0.02
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)


class AuditWriter:
    """One daemon thread per worker drains a bounded queue into the store."""

    def __init__(self, store: Store, capacity: int = 10_000) -> None:
        self.store = store
        self.queue: queue.Queue[tuple[dict[str, Any], str, dt.datetime] | None] = queue.Queue(capacity)
        self._hurry = threading.Event()
        self.failing = False  # the database refused the last write; the writer is retrying it
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        atexit.register(self.flush, 5.0)  # a graceful worker exit writes what it still holds

    def record(self, trace: dict[str, Any], patient: str, at: dt.datetime) -> None:
        try:
            self.queue.put_nowait((trace, patient, at))
        except queue.Full:
            metrics.DB_ERRORS.labels("audit-queue-full").inc()
            log.error("audit queue full; decision trace dropped", extra={"hookInstance": trace.get("hookInstance")})

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                self.queue.task_done()
                return
            batch = [first]
            stop = False
            # Traces gathered for up to GATHER_S go in one transaction: one commit (one fsync on SQLite)
            # serves many decisions instead of one each.
            until = time.monotonic() + GATHER_S
            while len(batch) < BATCH:
                wait = 0.0 if self._hurry.is_set() else max(0.0, until - time.monotonic())
                try:  # short polls, so a flush (hurry) is seen within POLL_S
                    item = self.queue.get(timeout=min(wait, POLL_S))
                except queue.Empty:
                    if wait <= POLL_S:
                        break
                    continue
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._write(batch)
            finally:
                for _ in range(len(batch) + stop):
                    self.queue.task_done()
            if stop:
                return

    def _write(self, batch: list[tuple[dict[str, Any], str, dt.datetime]]) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                self.store.record_decisions(batch)
                if self.failing:
                    log.warning("database answers again; decision traces are being stored")
                self.failing = False
                return
            except UNAVAILABLE as exc:  # the database is away: keep the batch and try again later
                metrics.DB_ERRORS.labels("decision-retry").inc()
                if not self.failing:
                    log.error("decision traces not stored yet (%s): database unavailable; retrying with back-off",
                              type(exc).__name__)
                self.failing = True
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            except Exception as exc:
                self._write_each(batch, exc)
                return

    def _write_each(self, batch: list[tuple[dict[str, Any], str, dt.datetime]], exc: Exception) -> None:
        """The batch was refused for its content: store each trace alone, so one bad trace loses no other."""
        failed, reason = (batch, type(exc).__name__) if len(batch) == 1 else ([], type(exc).__name__)
        if len(batch) > 1:
            for item in batch:
                try:
                    self.store.record_decisions([item])
                except Exception:
                    failed.append(item)
        for trace, _, _ in failed:
            metrics.DB_ERRORS.labels("decision").inc()
            log.error("decision trace not stored: %s", reason, extra={"hookInstance": trace.get("hookInstance")})

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued trace is written (tests, shutdown); at once False while the database is away."""
        if self.failing:
            return False
        done = threading.Event()

        def waiter() -> None:
            self.queue.join()
            done.set()

        self._hurry.set()
        try:
            threading.Thread(target=waiter, daemon=True).start()
            return done.wait(timeout)
        finally:
            self._hurry.clear()
