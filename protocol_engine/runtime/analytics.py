"""Override analytics for the people who own the protocol: per rule, cards shown, accepted and overridden, the
override reasons, and the override rate per day or week, from the store (the data behind `protocol-engine report`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..core.errors import BadRequest
from ..pack.packset import PackSet
from .store import Store

BUCKETS = ("day", "week")
MAX_DAYS = 731


def _time(value: str, field: str, end: bool) -> dt.datetime:
    try:
        if len(value) == 10:  # a date: the whole day (an end date is inclusive)
            day = dt.date.fromisoformat(value)
            start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return start + dt.timedelta(days=1) if end else start
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError) as exc:
        raise BadRequest(f"'{field}' is a date (2026-11-30) or an ISO 8601 time; got '{value[:40]}'", field) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def period(args: Mapping[str, str], now: dt.datetime) -> tuple[dt.datetime, dt.datetime, str]:
    """since/until (dates are whole UTC days, both included) and bucket from the query string; default 30 days."""
    until = _time(args["until"], "until", True) if args.get("until") else now
    try:
        since = _time(args["since"], "since", False) if args.get("since") else until - dt.timedelta(days=30)
    except OverflowError as exc:
        raise BadRequest("'until' is too early to count 30 days back from it", "until") from exc
    bucket = args.get("bucket") or "day"
    if bucket not in BUCKETS:
        raise BadRequest(f"'bucket' is day or week; got '{bucket[:20]}'", "bucket")
    if since >= until:
        raise BadRequest("'since' must be before 'until'", "since")
    if (until - since).days > MAX_DAYS:
        raise BadRequest(f"a period of at most {MAX_DAYS} days", "since")
    return since, until, bucket


def _rate(overridden: int, fired: int) -> float | None:
    return round(100 * overridden / fired, 1) if fired else None


def activity(store: Store, packset: PackSet, since: dt.datetime, until: dt.datetime, bucket: str) -> dict[str, Any]:
    totals = {row["rule"]: row for row in store.rule_report(since, until)}
    series = store.rule_activity(since, until, bucket)
    known = {r.id: r for r in packset.all_rules()}
    rules = []
    for rule_id in sorted(set(totals) | set(series["rules"])):
        row = totals.get(rule_id, {"fired": 0, "accepted": 0, "overridden": 0, "reasons": {}})
        s = series["rules"].get(rule_id, {"fired": [], "accepted": [], "overridden": []})
        rule = known.get(rule_id)
        rules.append({
            "rule": rule_id, "title": rule.title if rule else "(no longer in the rule set)",
            "category": rule.category if rule else None, "indicator": rule.card.indicator if rule else None,
            "fired": row["fired"], "accepted": row.get("accepted", 0), "overridden": row.get("overridden", 0),
            "overrideRate": _rate(row.get("overridden", 0), row["fired"]),
            "reasons": [{"reason": k, "count": v} for k, v in sorted(row["reasons"].items(), key=lambda i: -i[1])],
            "series": {**s, "overrideRate": [_rate(o, f) for o, f in zip(s["overridden"], s["fired"], strict=True)]},
        })
    return {"since": since.isoformat(), "until": until.isoformat(), "bucket": bucket, "buckets": series["buckets"],
            "ruleset": packset.revision, "rules": rules}
