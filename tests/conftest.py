"""Shared fixtures: an app on a temporary SQLite store, request builders, a pinned `now`."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.server import Gunicorn, free_port  # noqa: E402,F401 - free_port is imported by tests
from protocol_engine.authoring.vignette import build_request  # noqa: E402
from protocol_engine.runtime.registry import load  # noqa: E402

RULES = ROOT / "rules"
PATIENT = "p-test"


@pytest.fixture(scope="session")
def loaded() -> Any:
    return load(RULES)


@pytest.fixture()
def app(tmp_path: Path) -> Any:
    from server import create_app

    application = create_app({"auth": "disabled", "database_url": f"sqlite:///{tmp_path}/pe.db",
                              "reload_interval": 0, "expose_trace": True})
    yield application
    application.extensions["protocol_engine"]["audit"].flush()


@pytest.fixture()
def client(app: Any) -> Any:
    return app.test_client()


def request_for(loaded: Any, service: str, case: dict[str, Any], now: dt.datetime | None = None) -> dict[str, Any]:
    """A full CDS Hooks request from the rule-test shorthand (the same builder `protocol-engine test` uses)."""
    rt = loaded.runtimes[service]
    return json.loads(json.dumps(build_request(case, rt, now or dt.datetime.now(dt.UTC))))


def bp(systolic: Any, diastolic: Any, at: str = "-30m", unit: str = "mm[Hg]", **extra: Any) -> dict[str, Any]:
    s = f"{systolic} {unit}".strip()
    d = f"{diastolic} {unit}".strip()
    return {"observation": "LOINC#85354-9", "at": at, "components": {"LOINC#8480-6": s, "LOINC#8462-4": d}, **extra}


KETAMINE_ORDER = {"medication": "RXNORM#6130 ketamine", "dose": "35 mg", "route": "SNOMED#47625008 Intravenous route"}
ADULT = {"birthDate": "-40y", "gender": "female"}


@pytest.fixture()
def gunicorn_server(tmp_path: Path) -> Iterator[str]:
    """A real gunicorn process with 2 workers on loopback."""
    with Gunicorn(tmp_path) as server:
        yield server.base


@pytest.fixture()
def store_app(db_url: str) -> Any:
    """An app (auth off, no reload polling) on the store under test; its audit queue flushed and engine closed after."""
    from server import create_app

    app = create_app({"auth": "disabled", "database_url": db_url, "reload_interval": 0})
    yield app
    app.extensions["protocol_engine"]["audit"].flush()
    app.extensions["protocol_engine"]["store"].engine.dispose()


def _postgres_url() -> str | None:
    return os.environ.get("PROTOCOL_ENGINE_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every store test runs on SQLite and on a real PostgreSQL (a fresh schema per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    url = _postgres_url()
    if not url:
        pytest.skip("PROTOCOL_ENGINE_TEST_POSTGRES_URL not set (.ci/run sets it)")
    from sqlalchemy import create_engine, text

    schema = f"t_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**8}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    yield f"{url}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
