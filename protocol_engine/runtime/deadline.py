"""Database calls on the request path with a client-side deadline.

A database that accepts bytes and answers nothing (a stalled proxy, a hung server, a half-open connection whose
peer's kernel still acknowledges) blocks a libpq read for ever: neither `connect_timeout` (only the connection's
set-up) nor TCP keepalives (the peer acknowledges) end it. So each such call runs on its own daemon thread and the
request waits at most `timeout_s` for it; on expiry the caller fails open exactly as for a refused connection. The
stalled thread is left to finish (or die with its connection) in the background; at most `slots` of them exist per
use at once, beyond that a call is refused at once rather than spawning more (so a long stall costs threads and
pooled connections bounded by `slots`, never a request thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """The database did not answer in time (or earlier calls are still stalled)."""


class Bounded:
    def __init__(self, name: str, timeout_s: float, slots: int = 10) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.slots = slots
        self._free = threading.BoundedSemaphore(slots)

    def call(self, fn: Callable[[], T], timeout_s: float | None = None) -> T:
        """fn()'s result or exception, or DeadlineExceeded after the deadline (fn keeps running on its thread)."""
        if not self._free.acquire(blocking=False):
            raise DeadlineExceeded(f"{self.name}: {self.slots} earlier database call(s) still unanswered")
        done = threading.Event()
        box: dict[str, object] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the waiting request, if it still waits
                box["error"] = exc
            finally:
                self._free.release()
                done.set()

        threading.Thread(target=run, name=f"db-{self.name}", daemon=True).start()
        if not done.wait(self.timeout_s if timeout_s is None else timeout_s):
            raise DeadlineExceeded(f"{self.name}: no answer from the database within "
                                   f"{self.timeout_s if timeout_s is None else timeout_s:.1f} s")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]
