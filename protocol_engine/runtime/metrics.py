"""Prometheus metrics; multi-process aware when PROMETHEUS_MULTIPROC_DIR is set (gunicorn.conf.py)."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("protocol_engine_requests_total", "HTTP requests", ["endpoint", "status"])
LATENCY = Histogram("protocol_engine_request_seconds", "Hook call latency", ["service"], buckets=BUCKETS)
STAGE = Histogram("protocol_engine_stage_seconds", "Time per pipeline stage", ["service", "stage"], buckets=BUCKETS)
CARDS = Counter("protocol_engine_cards_total", "Cards returned", ["rule", "indicator"])
FETCH_ERRORS = Counter("protocol_engine_fetch_errors_total", "Prefetch keys the FHIR server could not supply",
                       ["service"])
DB_ERRORS = Counter("protocol_engine_db_errors_total", "Database writes that failed", ["operation"])
FEEDBACK_UNMATCHED = Counter("protocol_engine_feedback_unmatched_total",
                             "Feedback items stored for a card not (yet) on record; reconciled by uuid")
AUTH_FAILURES = Counter("protocol_engine_auth_failures_total", "Requests refused with 401")
RELOADS = Counter("protocol_engine_rule_reloads_total", "Rule-set reload attempts", ["result"])


def check_directory(database_url: str) -> None:
    """Refuse a SQLite database inside the metrics directory: the collector reads every *.db file there."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory or not database_url.startswith("sqlite:///") or database_url.startswith("sqlite:///:memory:"):
        return
    database = Path(database_url[len("sqlite:///"):].split("?", 1)[0]).resolve()
    if database.parent == Path(directory).resolve():
        raise ValueError(f"the SQLite database {database} is inside PROMETHEUS_MULTIPROC_DIR ({directory}); "
                         "the metrics collector would read it as a metrics file. Put one of them elsewhere.")


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))
    return bytes(generate_latest())
