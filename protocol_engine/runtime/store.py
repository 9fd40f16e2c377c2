"""The database: decision traces, cards, feedback and the JWT replay cache (SQLAlchemy 2).

Every worker on every machine shares this store, so N workers behave as one service.
Nothing stored here holds a JWT, an access token or free text from the chart (ids only).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

log = logging.getLogger("protocol_engine.store")
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


class Base(DeclarativeBase):
    pass


class Decision(Base):
    __tablename__ = "decision"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hook_instance: Mapped[str] = mapped_column(String(128), index=True)
    service: Mapped[str] = mapped_column(String(128))
    hook: Mapped[str] = mapped_column(String(64))
    ruleset: Mapped[str] = mapped_column(String(64))  # the revision of the pack set (trace["ruleset"])
    patient: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    trace: Mapped[dict[str, Any]] = mapped_column(JSON)


class Card(Base):
    __tablename__ = "card"
    uuid: Mapped[str] = mapped_column(String(40), primary_key=True)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decision.id", ondelete="CASCADE"), index=True)
    service: Mapped[str] = mapped_column(String(128))
    rule: Mapped[str] = mapped_column(String(32), index=True)
    rule_version: Mapped[str] = mapped_column(String(32))
    indicator: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_item"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    card_uuid: Mapped[str] = mapped_column(String(40), index=True)
    service: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))
    outcome_timestamp: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    override_system: Mapped[str | None] = mapped_column(String(200), nullable=True)
    override_code: Mapped[str | None] = mapped_column(String(100), nullable=True)
    override_display: Mapped[str | None] = mapped_column(String(200), nullable=True)
    has_comment: Mapped[bool] = mapped_column(default=False)
    accepted_suggestions: Mapped[list[str]] = mapped_column(JSON, default=list)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class SeenToken(Base):
    """JWT ids already used, kept until the token would have expired anyway (replay defence).

    `jti` holds the SHA-256 of the token's jti (hex): a jti of any length is compared exactly, never truncated.
    """

    __tablename__ = "seen_token"
    iss: Mapped[str] = mapped_column(String(255), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


Index("ix_feedback_received", Feedback.received_at)


PURGE_INTERVAL_S = 60.0
# Feedback for a card not on record is kept this long for its decision to land (another worker's write batch,
# a database outage, a failed batch retried); a card not on record by then never will be, and its feedback,
# joined to nothing, is deleted rather than kept for ever (any authenticated client could fill the table).
UNMATCHED_FEEDBACK_TTL = dt.timedelta(days=7)


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def jti_key(jti: str) -> str:
    """The stored form of a jti: exact (a hash of all of it) and of fixed width."""
    return hashlib.sha256(jti.encode("utf-8", "surrogatepass")).hexdigest()


def storable(value: Any) -> Any:
    """The value with every string made encodable as UTF-8: a lone surrogate (legal in JSON's \\u escapes, not
    in UTF-8) becomes U+FFFD, so a trace is stored whatever the caller sent."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return value


class Store:
    def __init__(self, url: str, unmatched_feedback_ttl: dt.timedelta = UNMATCHED_FEEDBACK_TTL) -> None:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 15, "check_same_thread": False}
        else:
            # Bounded waits on a sick network: 2 s to connect, keepalives and tcp_user_timeout end a connection
            # whose peer stopped acknowledging. A peer that acknowledges and never answers is bounded by the
            # callers' deadlines instead (runtime/deadline.py): libpq has no read timeout.
            kwargs.update(pool_size=5, max_overflow=5, pool_timeout=2, connect_args={
                "connect_timeout": 2, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3,
                "keepalives_count": 3, "tcp_user_timeout": 10_000})
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        self._next_purge = 0.0  # monotonic time of the next purge of expired replay rows
        self.unmatched_feedback_ttl = unmatched_feedback_ttl
        self._next_feedback_purge = 0.0  # ... and of feedback whose card never landed

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to the newest Alembic revision (safe to run from every worker)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        if self.engine.dialect.name == "sqlite" and self.engine.url.database not in (None, "", ":memory:"):
            # gunicorn workers boot at once on a fresh file: one migrates, the others wait for it.
            import fcntl

            with open(f"{self.engine.url.database}.migrate-lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    with self.engine.begin() as conn:
                        cfg.attributes["connection"] = conn
                        command.upgrade(cfg, revision)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            return
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(472183)"))  # one migrator at a time
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def record_decisions(self, items: list[tuple[dict[str, Any], str, dt.datetime]]) -> None:
        """Store decision traces and their cards in one transaction: all of them or none.

        Core inserts rather than ORM objects: this runs on every hook call, and the ORM's unit of work
        cost about twice the CPU (measured, bench/run.py) in the same worker as the requests.
        """
        items = [(storable(trace), storable(patient), at) for trace, patient, at in items]
        with self.engine.begin() as conn:
            ids = conn.execute(
                insert(Decision).returning(Decision.id, sort_by_parameter_order=True),
                [{"hook_instance": trace["hookInstance"], "service": trace["service"], "hook": trace["hook"],
                  "ruleset": trace["ruleset"], "patient": patient, "created_at": at, "trace": trace}
                 for trace, patient, at in items]).scalars().all()
            cards = [{"uuid": card["uuid"], "decision_id": decision_id, "service": trace["service"],
                      "rule": card["rule"], "rule_version": card.get("version", ""), "indicator": card["indicator"],
                      "created_at": at}
                     for decision_id, (trace, _, at) in zip(ids, items, strict=True) for card in trace.get("cards", [])]
            if cards:
                conn.execute(insert(Card), cards)

    def known_cards(self, uuids: list[str]) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Card.uuid).where(Card.uuid.in_(uuids))))

    def add_feedback(self, items: list[dict[str, Any]], received_at: dt.datetime) -> int:
        """Store feedback items in one transaction; repeats of an item are ignored. Returns new rows."""
        added = 0
        with self.session.begin() as s:
            for item in items:
                exists = s.scalar(select(Feedback.id).where(
                    Feedback.card_uuid == item["card_uuid"], Feedback.outcome == item["outcome"],
                    Feedback.outcome_timestamp == item["outcome_timestamp"]))
                if exists is not None:
                    continue
                nested = s.begin_nested()
                try:
                    s.add(Feedback(received_at=received_at, **item))
                    nested.commit()
                    added += 1
                except IntegrityError:  # a concurrent worker stored the same item first
                    nested.rollback()
        if time.monotonic() >= self._next_feedback_purge:  # once a minute per worker, on the path that adds rows
            self._next_feedback_purge = time.monotonic() + PURGE_INTERVAL_S
            try:
                purged = self.purge_unmatched_feedback(received_at)
            except Exception as exc:  # the items are stored: a failed clean-up must not make them look lost
                log.warning("purge of unmatched feedback failed: %s", type(exc).__name__)
            else:
                if purged:
                    log.info("deleted %d feedback item(s) whose card never came on record", purged)
        return added

    def purge_unmatched_feedback(self, now: dt.datetime) -> int:
        """Delete feedback received over `unmatched_feedback_ttl` ago for a card still not on record."""
        on_record = select(Card.uuid).where(Card.uuid == Feedback.card_uuid).exists()
        with self.engine.begin() as conn:
            return int(conn.execute(delete(Feedback).where(
                Feedback.received_at < now - self.unmatched_feedback_ttl, ~on_record)).rowcount or 0)

    def claim_token(self, iss: str, jti: str, expires_at: dt.datetime, now: dt.datetime) -> bool:
        """True the first time a (iss, jti) is seen; False on a replay."""
        jti = jti_key(jti)
        try:
            with self.engine.begin() as conn:  # on every authenticated call: a Core insert, no unit of work
                conn.execute(insert(SeenToken).values(iss=iss, jti=jti, expires_at=expires_at))
        except IntegrityError:
            with self.session.begin() as s:
                seen = s.get(SeenToken, (iss, jti))
                if seen is not None and _utc(seen.expires_at) < now:
                    seen.expires_at = expires_at  # an expired entry may be reused
                    return True
            return False
        if time.monotonic() >= self._next_purge:  # once a minute per worker, never on every call
            self._next_purge = time.monotonic() + PURGE_INTERVAL_S
            self.purge_tokens(now)
        return True

    def purge_tokens(self, now: dt.datetime) -> int:
        """Delete replay rows whose tokens have expired; returns how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(delete(SeenToken).where(SeenToken.expires_at < now)).rowcount or 0)

    def rule_report(self, since: dt.datetime, until: dt.datetime) -> list[dict[str, Any]]:
        """Per rule: cards shown, accepted, overridden, and override reasons with counts."""
        with self.session() as s:
            rows: dict[str, dict[str, Any]] = {}
            for rule, _version, indicator in s.execute(select(Card.rule, Card.rule_version, Card.indicator).where(
                    Card.created_at >= since, Card.created_at < until)):
                entry = rows.setdefault(rule, {"rule": rule, "fired": 0, "accepted": 0, "overridden": 0,
                                               "reasons": {}, "indicators": set()})
                entry["fired"] += 1
                entry["indicators"].add(indicator)
            q = select(Card.rule, Feedback.outcome, Feedback.override_code, Feedback.override_display).join(
                Feedback, Feedback.card_uuid == Card.uuid).where(Card.created_at >= since, Card.created_at < until)
            for rule, outcome, code, display in s.execute(q):
                entry = rows.setdefault(rule, {"rule": rule, "fired": 0, "accepted": 0, "overridden": 0,
                                               "reasons": {}, "indicators": set()})
                entry[outcome] = entry.get(outcome, 0) + 1
                if outcome == "overridden":
                    label = display or code or "(no reason given)"
                    entry["reasons"][label] = entry["reasons"].get(label, 0) + 1
            return [rows[k] for k in sorted(rows)]

    def rule_activity(self, since: dt.datetime, until: dt.datetime, bucket: str = "day") -> dict[str, Any]:
        """Per rule and per day (or ISO week, from Monday) of card creation: cards shown, and cards accepted or
        overridden (each card counted once per outcome, however often its feedback was repeated). UTC days."""
        day_of = _utc_day(self.engine.dialect.name)
        fired: dict[tuple[str, str], int] = {}
        outcomes: dict[tuple[str, str, str], int] = {}
        in_range = (Card.created_at >= since, Card.created_at < until)
        with self.session() as s:
            day = day_of(Card.created_at)
            for rule, when, n in s.execute(select(Card.rule, day, func.count()).where(*in_range)
                                           .group_by(Card.rule, day)):
                key = (rule, _bucket(str(when)[:10], bucket))
                fired[key] = fired.get(key, 0) + n
            q = (select(Card.rule, day, Feedback.outcome, func.count(func.distinct(Card.uuid)))
                 .join(Feedback, Feedback.card_uuid == Card.uuid).where(*in_range)
                 .group_by(Card.rule, day, Feedback.outcome))
            for rule, when, outcome, n in s.execute(q):
                okey = (rule, _bucket(str(when)[:10], bucket), outcome)
                outcomes[okey] = outcomes.get(okey, 0) + n
        buckets: list[str] = []
        start = dt.date.fromisoformat(_bucket(_utc(since).date().isoformat(), bucket))
        step = dt.timedelta(days=7 if bucket == "week" else 1)
        last = (_utc(until) - dt.timedelta(microseconds=1)).date()  # `until` is exclusive
        while start <= last or not buckets:
            buckets.append(start.isoformat())
            start += step
        rules = sorted({r for r, _ in fired} | {r for r, _, _ in outcomes})
        series = {rule: {"fired": [fired.get((rule, b), 0) for b in buckets],
                         "accepted": [outcomes.get((rule, b, "accepted"), 0) for b in buckets],
                         "overridden": [outcomes.get((rule, b, "overridden"), 0) for b in buckets]}
                  for rule in rules}
        return {"buckets": buckets, "rules": series}

    def decisions(self, hook_instance: str) -> list[Decision]:
        with self.session() as s:
            return list(s.scalars(select(Decision).where(Decision.hook_instance == hook_instance)))

    def feedback_count(self) -> int:
        with self.session() as s:
            return len(list(s.scalars(select(Feedback.id))))


def _utc_day(dialect: str) -> Any:
    """The UTC calendar day of a stored time as SQL: SQLite keeps UTC text, PostgreSQL a timestamptz."""
    if dialect == "postgresql":
        return lambda column: func.date(func.timezone("UTC", column))
    return lambda column: func.date(column)


def _bucket(day: str, bucket: str) -> str:
    if bucket != "week":
        return day
    d = dt.date.fromisoformat(day)
    return (d - dt.timedelta(days=d.weekday())).isoformat()


def _sqlite_pragmas(conn: Any, _record: Any) -> None:
    cursor = conn.cursor()
    # WAL lets readers and one writer work at once across gunicorn workers; FULL sync makes a
    # committed feedback survive a killed process.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.close()
