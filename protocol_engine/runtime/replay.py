"""The JWT replay cache as the verifier sees it: the shared database, failing open to a per-worker cache.

Decision (issue 17): when the database cannot be reached, authenticated calls still get their cards (the
README's promise: a database outage never stops decision support) and each worker remembers the `jti`s it
accepted in a bounded in-memory cache until the database answers again. What that costs: during an outage a
token replayed to a *different* worker within its lifetime (at most `jwt_max_lifetime`, 5 minutes by default)
is accepted. Refusing every call (503) would instead stop all decision support for the outage. After a failure
the database is not tried again for BREAKER_S, so an outage costs one connect timeout per worker, not one per call,
and one log line, not a traceback per call. A database that accepts the connection and then answers nothing (a
stalled proxy or server) is the same outage: each claim waits at most DEADLINE_S for its answer (deadline.Bounded).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from typing import Protocol

from . import metrics
from .deadline import Bounded

log = logging.getLogger("protocol_engine.auth")
BREAKER_S = 5.0
CAPACITY = 50_000
DEADLINE_S = 2.0  # the README's "fail open after ~2 s"


class ReplayStore(Protocol):
    def claim_token(self, iss: str, jti: str, expires_at: dt.datetime, now: dt.datetime) -> bool: ...


class FailOpenReplay:
    def __init__(self, store: ReplayStore, capacity: int = CAPACITY, breaker_s: float = BREAKER_S,
                 deadline_s: float = DEADLINE_S) -> None:
        self.store = store
        self._bounded = Bounded("replay-cache", deadline_s)
        self.capacity = capacity
        self.breaker_s = breaker_s
        self._seen: OrderedDict[tuple[str, str], dt.datetime] = OrderedDict()
        self._lock = threading.Lock()
        self._down_until = 0.0

    def _claim_locally(self, iss: str, jti: str, expires_at: dt.datetime, now: dt.datetime) -> bool:
        with self._lock:
            seen = self._seen.get((iss, jti))
            if seen is not None and seen >= now:
                return False
            self._seen[(iss, jti)] = expires_at
            self._seen.move_to_end((iss, jti))
            while len(self._seen) > self.capacity:  # oldest first; expired ones are the oldest in practice
                self._seen.popitem(last=False)
            return True

    def claim_token(self, iss: str, jti: str, expires_at: dt.datetime, now: dt.datetime) -> bool:
        with self._lock:
            seen = self._seen.get((iss, jti))
        if seen is not None and seen >= now:
            return False  # accepted by this worker while the database was away
        if time.monotonic() < self._down_until:
            metrics.DB_ERRORS.labels("replay-cache-local").inc()
            return self._claim_locally(iss, jti, expires_at, now)
        try:
            return self._bounded.call(lambda: self.store.claim_token(iss, jti, expires_at, now))
        except Exception as exc:
            self._down_until = time.monotonic() + self.breaker_s
            metrics.DB_ERRORS.labels("replay-cache").inc()
            log.error("replay store unavailable (%s); accepting tokens against this worker's own cache for %.0f s",
                      type(exc).__name__, self.breaker_s)
            return self._claim_locally(iss, jti, expires_at, now)
