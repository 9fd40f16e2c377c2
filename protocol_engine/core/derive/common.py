"""What every derive module shares: times and numbers as cards write them, elapsed hours, the pack's statuses."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from .. import display
from ..model import Fact

if TYPE_CHECKING:
    from ...pack.protocol import Protocol

HOUR_S = 3600.0  # seconds in an hour


def fmt_time(local: display.Local, t: dt.datetime, latest: dt.datetime | None = None) -> str:
    """For people: the deployment's zone with its offset, 'today'/'yesterday' against the call's `now` (both in
    `local`); a time recorded as a date only (`latest` the end of that day) as the date, never an invented '00:00'."""
    return local.when(t, latest)


def at_text(t: dt.datetime, latest: dt.datetime | None) -> str:
    """A fact's `at`: the instant, or the FHIR date as written when only a date was recorded."""
    return display.precision_text(t, latest) or t.isoformat()


def fmt_num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def as_written(x: float) -> str:
    """A recorded amount as the order wrote it (1.25 mg/kg, 0.125 mg/kg), not rounded to one decimal."""
    return f"{x:.4f}".rstrip("0").rstrip(".")


def hours_since(now: dt.datetime, t: dt.datetime) -> float:
    """Hours from `t` to `now` (negative for a time after `now`), to 4 decimals as facts carry them."""
    return round((now - t).total_seconds() / HOUR_S, 4)


def span(hours: float) -> str:
    if hours < 48:
        return f"{fmt_num(round(hours, 1))} h"
    return f"{fmt_num(round(hours / 24, 1))} days"


def elapsed_range(fact: Fact, field: str, now: dt.datetime, earliest: dt.datetime,
                  latest: dt.datetime | None) -> None:
    """A reduced-precision time makes an elapsed time a range: [since the latest, since the earliest instant]."""
    if latest is None or latest == earliest:
        return
    low = max(hours_since(now, latest), 0.0)
    fact[field] = low
    fact.setdefault("ranges", {})[field] = [low, hours_since(now, earliest)]


@dataclass(frozen=True)
class Semantics:
    """The pack's `semantics:` (G1, G6-G9, G11) as sets, read once per rule set."""

    obs_valid: frozenset[str]
    future_tol_h: float  # a record dated up to this far after the moment evaluated is not "in the future"
    cond_active: frozenset[str]
    cond_excluded: frozenset[str]
    med_active: dict[str, frozenset[str]]  # "request" | "statement" -> statuses
    med_on_hold: frozenset[str]
    admin_status: frozenset[str]
    allergy_active: frozenset[str]
    zone: ZoneInfo = display.UTC  # the deployment's, for the times describe texts show (a setting, passed in)

    @classmethod
    def of(cls, protocol: Protocol, zone: ZoneInfo = display.UTC) -> Semantics:
        sem = protocol.semantics  # every key declared and checked by the pack loader (pack/protocol.py)
        med = sem["medication_active_status"]
        return cls(
            obs_valid=frozenset(sem["observation_valid_status"]),
            future_tol_h=float(sem["future_tolerance_h"]),  # checked and read at load: 0m is zero
            cond_active=frozenset(sem["condition_active_status"]),
            cond_excluded=frozenset(sem["condition_excluded_verification"]),
            med_active={"request": frozenset(med["request"]), "statement": frozenset(med["statement"])},
            med_on_hold=frozenset(sem["medication_on_hold_status"]),
            admin_status=frozenset(sem["administration_status"]),
            allergy_active=frozenset(sem["allergy_active_status"]),
            zone=zone,
        )
