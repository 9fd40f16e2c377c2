"""A database that accepts bytes and answers nothing (probe 17b: a stalling TCP proxy in front of PostgreSQL) hung
every authenticated hook call and, once the threads were gone, /healthz. Now each database use on the request path
has a client-side deadline: hook calls fail open as for a refused connection, feedback answers 503, /readyz 503,
/healthz never touches the database. Real PostgreSQL, real JWTs, a real TCP proxy that stalls."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADULT, KETAMINE_ORDER, bp, request_for
from sqlalchemy.engine import make_url
from test_security import BASE, ISS, Keys, token

SIGN = "/cds-services/ketamine-order-sign"
pytestmark = pytest.mark.postgres


class StallingProxy:
    """Forwards TCP to `upstream` until `stall` is set; then accepts and acknowledges bytes, forwards nothing."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.stall = threading.Event()
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.closed.is_set():
                conn.close()
                return
            if self.stall.is_set():
                self.held.append(conn)  # the handshake never gets an answer
                continue
            up = socket.create_connection(self.upstream)
            self.held += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        a.settimeout(0.2)
        while not self.closed.is_set():
            try:
                data = a.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            if self.stall.is_set():
                continue  # swallowed: the sender's kernel saw it acknowledged
            try:
                b.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.closed.set()
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._acceptor.join(2)
        for s in self.held:
            s.close()


@pytest.fixture()
def stalling_db(tmp_path: Path) -> Iterator[tuple[str, StallingProxy]]:
    url = os.environ.get("PROTOCOL_ENGINE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("PROTOCOL_ENGINE_TEST_POSTGRES_URL not set (.ci/run sets it)")
    from sqlalchemy import create_engine, text

    parsed = make_url(url)
    proxy = StallingProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    schema = f"stall_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    through = parsed.set(host="127.0.0.1", port=proxy.port, query={**parsed.query, "options": f"-csearch_path={schema}"})
    yield through.render_as_string(hide_password=False), proxy
    proxy.close()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def test_a_stalled_database_neither_hangs_hook_calls_nor_liveness(
        stalling_db: tuple[str, StallingProxy], tmp_path: Path, loaded: Any) -> None:
    from server import create_app

    url, proxy = stalling_db
    keys = Keys()
    path = tmp_path / "clients.yaml"
    path.write_text(json.dumps({"clients": [{"iss": ISS, "jwks": keys.jwks(), "tenants": ["hospital-a"]}]}))
    app = create_app({"auth": "required", "clients": str(path), "database_url": url, "reload_interval": 0})
    store = app.extensions["protocol_engine"]["store"]
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(190, 110)]})

    def sign(tok: str) -> tuple[int, float, Any]:
        started = time.monotonic()
        response = app.test_client().post(SIGN, json=body, headers={"Authorization": f"Bearer {tok}"})
        return response.status_code, time.monotonic() - started, response.json

    try:
        status, _, answer = sign(token(keys, BASE + SIGN))
        assert status == 200  # through the proxy, database answering: pooled connections now exist
        assert app.test_client().get("/readyz").status_code == 200
        proxy.stall.set()

        # a hook call in flight on a pooled connection that now never answers; liveness answers meanwhile
        results: list[tuple[int, float, Any]] = []
        worker = threading.Thread(target=lambda: results.append(sign(token(keys, BASE + SIGN))))
        worker.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert app.test_client().get("/healthz").status_code == 200
        assert time.monotonic() - started < 0.5
        worker.join(10)
        assert not worker.is_alive(), "the hook call hung on the stalled database"
        status, took, answer = results[0]
        print(f"\nstalled database: hook call in flight answered {status} in {took:.2f} s")
        assert status == 200 and took < 4.0, (status, took)
        assert any(c["indicator"] == "critical" for c in answer["cards"])  # cards still go out

        once = token(keys, BASE + SIGN)
        for tok in (once, token(keys, BASE + SIGN), token(keys, BASE + SIGN)):
            status, took, _ = sign(tok)
            print(f"stalled database: next hook call answered {status} in {took:.2f} s")
            assert status == 200 and took < 4.0, (status, took)
        assert sign(once)[0] == 401  # replays still refused by this worker meanwhile

        started = time.monotonic()
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503 and ready.json["database"] == "unavailable"
        assert time.monotonic() - started < 2.0

        card = next(c for c in answer["cards"] if c.get("overrideReasons"))
        item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:00:00Z",
                "overrideReason": {"reason": card["overrideReasons"][0]}}
        started = time.monotonic()
        feedback = app.test_client().post(SIGN + "/feedback", json={"feedback": [item]}, headers={
            "Authorization": f"Bearer {token(keys, BASE + SIGN + '/feedback')}"})
        assert feedback.status_code == 503 and feedback.headers["Retry-After"], feedback.json
        assert time.monotonic() - started < 7.0
    finally:
        proxy.stall.clear()
        app.extensions["protocol_engine"]["audit"].flush(0.5)
        store.engine.dispose()
