"""What each hook call evaluates against: the anchor (the moment of the dose, and the record naming it).

Declared per service in protocol.yaml (`anchor:`, see protocol.ANCHORS): order hooks evaluate the draft order
at now, patient-view the course at now, appointment-book each proposed protocol session at its start,
encounter-start the encounter at its period start. Timing facts are measured to the anchor, never to whichever
MedicationRequest happens to be on the chart.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from . import display
from .cards import Issued
from .records import Chart


def _time(t: dt.datetime, now: dt.datetime | None, zone: ZoneInfo) -> str:
    """In the deployment's zone (a setting of the loaded pack), as every other time a card shows."""
    return display.when(t, now, zone=zone)


@dataclass(frozen=True)
class Anchor:
    kind: str  # draft-order | now | appointment | encounter
    time: dt.datetime
    ref: str | None = None
    end: dt.datetime | None = None
    # appointment-book: the proposed sessions of the same Bundle that start before this one (start, ref),
    # counted as planned doses by the course (a series booked at once is checked session against session).
    planned: tuple[tuple[dt.datetime, str], ...] = ()

    def phrase(self) -> str:
        """How a card says "before the dose" (course.until): `ago` at now, else before the session."""
        if self.kind == "appointment":
            return "before the booked session"
        if self.kind == "encounter" and self.ref is not None:
            return "before the session"
        return "ago"


def series(found: list[Anchor]) -> list[Anchor]:
    """Each proposed session with the earlier proposed sessions of the same booking as its planned doses.

    Ordered by start (ties by Bundle order): a single proposed session has none, so it is judged exactly as
    before, against the recorded doses only.
    """
    ordered = sorted(enumerate(found), key=lambda p: (p[1].time, p[0]))
    out = list(found)
    for rank, (i, anchor) in enumerate(ordered):
        earlier = tuple((b.time, b.ref) for _, b in ordered[:rank] if b.ref is not None)
        out[i] = Anchor(anchor.kind, anchor.time, anchor.ref, anchor.end, earlier)
    return out


def encounter(chart: Chart, encounter_id: Any, now: dt.datetime) -> Anchor:
    """The encounter that is starting, at its period.start; at now when the EHR has not recorded one."""
    ref = f"Encounter/{encounter_id}"
    record = next((e for e in chart.encounters if e.ref == ref), None)
    if record is not None and record.start is not None:
        return Anchor("encounter", record.start, ref)
    return Anchor("encounter", now, ref)


def name_session(card: Issued, anchor: Anchor, now: dt.datetime | None = None,
                 zone: ZoneInfo = display.UTC) -> Issued:
    """A card of appointment-book names the proposed appointment it is about (detail and evidence)."""
    ext = card.json["extension"]["protocol-engine"]
    if anchor.ref not in ext["evidence"]:
        ext["evidence"] = [*ext["evidence"], anchor.ref]
    planned = [(t, ref) for t, ref in anchor.planned if ref in ext["evidence"]]
    also = "".join(f" The previous dose counted here is the proposed session {_time(t, now, zone)} ({ref}) booked "
                   f"in this same request, a planned dose, not a recorded one." for t, ref in planned)
    detail = card.json["detail"]
    card.json["detail"] = f"For the proposed session {_time(anchor.time, now, zone)} ({anchor.ref}).{also}\n\n{detail}"
    return card


def merge(cards: list[Issued], more: list[Issued]) -> list[Issued]:
    """Cards of several proposed sessions: a rule saying the same thing about two sessions gives one card."""
    for card in more:
        twin = next((c for c in cards if c.rule.id == card.rule.id and c.json["summary"] == card.json["summary"]),
                    None)
        if twin is None:
            cards.append(card)
            continue
        twin.findings += card.findings
        evidence = twin.json["extension"]["protocol-engine"]["evidence"]
        added = [ref for ref in card.json["extension"]["protocol-engine"]["evidence"] if ref not in evidence]
        evidence.extend(added)
        sessions = [ref for ref in added if ref.startswith("Appointment/")]
        if sessions:
            twin.json["detail"] = f"Also for the proposed session(s) {', '.join(sessions)}.\n\n{twin.json['detail']}"
    return cards
