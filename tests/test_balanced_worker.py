"""Keep-alive connections stay spread over the gunicorn workers after the load on them changes.

Through real gunicorn (gunicorn.conf.py, 2 workers, BalancedThreadWorker); which worker holds a connection is
read from /proc (each worker's socket descriptors against the kernel's ESTABLISHED connections on our port), so
nothing in the service reports it for the test.

The failure these guard against (docs/performance.md, issue 20): right after a 64-connection wrk run, the next
8-connection run had all 8 connections on one worker in 3 of 5 runs. wrk ends a run with a request in flight
on every connection; each worker then still counts its 32 closed connections until it has answered their
queued requests (about 0.6 s of work on this machine), and counts are only compared when a connection is
accepted. New connections arriving meanwhile went to whichever worker had worked off more of its backlog,
and stayed there for their life.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from bench.generate import request
from bench.server import Gunicorn

ORDER_SIGN = "/cds-services/ketamine-order-sign"
HEADERS = {"Content-Type": "application/json"}


def _bodies(count: int) -> list[bytes]:
    now = dt.datetime.now(dt.UTC)
    return [json.dumps(request(20, now, seed=i, patient=f"balance{i}")).encode() for i in range(count)]


def _use(conn: http.client.HTTPConnection, body: bytes) -> None:
    """One order-sign call; http.client opens a new connection when the last answer said `Connection: close`."""
    conn.request("POST", ORDER_SIGN, body, HEADERS)
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status


OPENED: list[http.client.HTTPConnection] = []  # closed after each test, whatever happened


@pytest.fixture(autouse=True)
def _close_connections() -> Any:
    yield
    while OPENED:
        OPENED.pop().close()


def _burst(port: int, count: int) -> list[http.client.HTTPConnection]:
    """`count` connections opened at once, before any request, as wrk and a connection pool's warm-up do."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(count)]
    OPENED.extend(conns)
    for conn in conns:
        conn.connect()
    return conns


def _spread_becomes_even(server: Gunicorn, conns: list[http.client.HTTPConnection], bodies: list[bytes],
                         within_s: float) -> list[int]:
    """Use every connection in turn until each worker holds half of them (or time is up); the last spread."""
    deadline = time.monotonic() + within_s
    spread: list[int] = []
    turn = 0
    while time.monotonic() < deadline:
        for conn in conns:
            _use(conn, bodies[turn % len(bodies)])
            turn += 1
        spread = sorted(server.connections_per_worker().values())
        if spread == [len(conns) // 2] * 2:
            break
    return spread


@pytest.mark.slow
@pytest.mark.timeout(600)  # a gunicorn start and three rounds of 72 order-sign calls: minutes on a busy CI runner
def test_eight_connections_spread_four_and_four_right_after_sixty_four_were_dropped_mid_request(
        tmp_path: Path) -> None:
    bodies = _bodies(16)
    server = Gunicorn(tmp_path, workers=2).start(timeout=300).wait_for_workers()
    try:
        for _ in range(3):  # the backlog each worker is left with differs from round to round
            many = _burst(server.port, 64)
            for i, conn in enumerate(many):  # used, so each is a kept-alive connection of a worker
                _use(conn, bodies[i % len(bodies)])
            assert sorted(server.connections_per_worker().values()) == [32, 32]
            for i, conn in enumerate(many):  # as wrk ends a run: a request in flight on each, then gone
                assert conn.sock is not None
                conn.sock.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: %d\r\n\r\n%s" % (ORDER_SIGN.encode(),
                                                                     len(bodies[i % 16]), bodies[i % 16]))
            for conn in many:
                conn.close()

            few = _burst(server.port, 8)  # at once, while the workers still answer the dropped requests
            spread = _spread_becomes_even(server, few, bodies, within_s=30)
            assert spread == [4, 4], spread
            for _ in range(3):  # and it stays so
                for i, conn in enumerate(few):
                    _use(conn, bodies[i])
            assert sorted(server.connections_per_worker().values()) == [4, 4]
            server.close_and_wait_idle(few)
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.timeout(400)  # a gunicorn start on a busy CI runner
def test_connections_a_stalled_worker_missed_are_shared_with_it_once_it_is_back(tmp_path: Path) -> None:
    """A worker that stops beating (stalled, here stopped) is passed over; back, it gets its half again."""
    bodies = _bodies(8)
    server = Gunicorn(tmp_path, workers=2).start(timeout=300).wait_for_workers()
    stalled = server.worker_pids()[0]
    try:
        os.kill(stalled, signal.SIGSTOP)
        try:
            time.sleep(3.5)  # longer than balanced_worker.STALE_S: its sibling no longer waits for it
            conns = _burst(server.port, 8)
            for i, conn in enumerate(conns):
                _use(conn, bodies[i])
            spread: dict[int, Any] = server.connections_per_worker()
            assert spread[stalled] == 0, spread
        finally:
            os.kill(stalled, signal.SIGCONT)
        assert _spread_becomes_even(server, conns, bodies, within_s=30) == [4, 4]
        for conn in conns:
            conn.close()
    finally:
        server.close()


# -- the hand-over rule on its own (no server): which request's connection is closed ---------------------------


@pytest.fixture()
def worker() -> Any:
    """A BalancedThreadWorker's state without gunicorn around it, in slot 0 of the shared table; sibling rows
    are written by the test and every row is cleared afterwards."""
    import threading

    from protocol_engine.runtime import balanced_worker as bw

    me = bw.BalancedThreadWorker.__new__(bw.BalancedThreadWorker)
    me.pid, me.alive, me.nr_conns, me._balancing = os.getpid(), True, 0, True
    me._slot, me._last_shed, me._shed_lock = 0, 0.0, threading.Lock()
    yield me
    for i in range(bw.SLOTS):
        bw._SLOT.pack_into(bw._TABLE, i * bw._SLOT.size, 0, 0, 0.0)


def _sibling(slot: int, conns: int, beat_age: float = 0.0) -> None:
    from protocol_engine.runtime import balanced_worker as bw

    # a live process that is not us: the test runner's parent
    bw._SLOT.pack_into(bw._TABLE, slot * bw._SLOT.size, os.getppid(), conns, time.monotonic() - beat_age)


def test_a_worker_hands_over_only_when_it_holds_two_more_than_a_live_sibling(worker: Any) -> None:
    _sibling(1, 3)
    worker.nr_conns = 4
    assert not worker._hand_over()  # 4 against 3: as even as 7 connections can be
    worker.nr_conns = 5
    assert worker._hand_over()  # 5 against 3: one goes
    assert not worker._hand_over()  # and not a second one before the sibling's count can have caught up
    worker._last_shed -= 1.0
    assert worker._hand_over()


def test_no_hand_over_to_a_stale_sibling_when_alone_or_stopping(worker: Any) -> None:
    from protocol_engine.runtime import balanced_worker as bw

    worker.nr_conns = 8
    assert not worker._hand_over()  # no sibling at all
    _sibling(1, 0, beat_age=bw.STALE_S + 1)
    assert not worker._hand_over()  # a sibling that has not beaten lately would not take the connection
    _sibling(1, 0)
    worker.alive = False
    assert not worker._hand_over()  # a stopping worker closes its connections anyway
    worker.alive, worker._balancing = True, False
    assert not worker._hand_over()  # reuse_port: the kernel balances
    worker._balancing = True
    assert worker._hand_over()
