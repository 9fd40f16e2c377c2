"""Decision traces written off the request path; a database outage never fails a hook call."""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from typing import Any

from . import metrics
from .store import Store

log = logging.getLogger("protocol_engine.audit")


class AuditWriter:
    """One daemon thread per worker drains a bounded queue into the store."""

    def __init__(self, store: Store, capacity: int = 10_000) -> None:
        self.store = store
        self.queue: queue.Queue[tuple[dict[str, Any], str, dt.datetime] | None] = queue.Queue(capacity)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, trace: dict[str, Any], patient: str, at: dt.datetime) -> None:
        try:
            self.queue.put_nowait((trace, patient, at))
        except queue.Full:
            metrics.DB_ERRORS.labels("audit-queue-full").inc()
            log.error("audit queue full; decision trace dropped", extra={"hookInstance": trace.get("hookInstance")})

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                trace, patient, at = item
                try:
                    self.store.record_decision(trace, patient, at)
                except Exception as exc:
                    metrics.DB_ERRORS.labels("decision").inc()
                    log.error("decision trace not stored: %s", type(exc).__name__,
                              extra={"hookInstance": trace.get("hookInstance")})
            finally:
                self.queue.task_done()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued trace is written (tests, shutdown)."""
        done = threading.Event()

        def waiter() -> None:
            self.queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)
