"""What each hook call evaluates against: the anchor (the moment of the dose, and the record naming it).

Declared per service in protocol.yaml (`anchor:`, see protocol.ANCHORS): order hooks evaluate the draft order
at now, patient-view the course at now, appointment-book each proposed protocol session at its start,
encounter-start the encounter at its period start. Timing facts are measured to the anchor, never to whichever
MedicationRequest happens to be on the chart.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters.fhir import identity, normalise

from ..pack.protocol import Service
from .records import Chart, DataIssue

if TYPE_CHECKING:
    from ..pack.ruleset import Pack


def _time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


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


def sessions(service: Service, pack: Pack, bundle: Any, issues: list[DataIssue], patient_id: str | None = None,
             foreign: list[DataIssue] | None = None, unrecognised: list[DataIssue] | None = None) -> list[Anchor]:
    """One anchor per proposed Appointment that is a session of the protocol, at its start.

    A session is recognised by appointmentType, serviceType or reasonCode in the service's `sessions` value
    set; without one, every proposed appointment is a session. A proposed session with no start cannot be
    checked against the schedule: it becomes a data issue rather than a guess. A proposed Appointment of
    another patient (its participant Patient is not `patient_id`) is set aside in `foreign`, never evaluated.
    A proposed (or pending) appointment that is not recognised as a session goes to `unrecognised`: the
    caller says so (DQ-07) when the patient has a protocol course, rather than answer an "all clear".
    """
    found = []
    urls = identity.patient_urls([bundle]) if patient_id is not None else {}
    owners = {}
    for raw in normalise.resources_in(bundle):
        if patient_id is not None and isinstance(raw, dict) and raw.get("resourceType") == "Appointment":
            owners[normalise.ref_of(raw)] = identity.appointment_foreign_reason(raw, patient_id, urls)
    for appt in normalise.appointments(bundle, issues):
        if appt.status not in ("proposed", "pending"):
            continue  # the hook's context also carries already booked appointments for reference
        reason = owners.get(appt.ref)
        if reason is not None:
            if foreign is not None:
                foreign.append(DataIssue(appt.ref, reason))
            continue
        if appt.status != "proposed":
            if unrecognised is not None:
                unrecognised.append(DataIssue(appt.ref, f"its status is '{appt.status}', not 'proposed'"))
            continue
        if service.sessions and not any(service.sessions in pack.index.members(k.pairs(), k.texts())
                                        for k in appt.kinds):
            if unrecognised is not None:
                unrecognised.append(DataIssue(appt.ref, f"none of its appointmentType, serviceType or reasonCode "
                                                        f"is in the value set '{service.sessions}'"))
            continue
        if appt.start is None:
            issues.append(DataIssue(appt.ref, "proposed session has no start time; the schedule was not checked "
                                              "against it"))
            continue
        found.append(Anchor("appointment", appt.start, appt.ref, appt.end))
    return found


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


def name_session(card: dict[str, Any], anchor: Anchor) -> dict[str, Any]:
    """A card of appointment-book names the proposed appointment it is about (detail and evidence)."""
    ext = card["extension"]["protocol-engine"]
    if anchor.ref not in ext["evidence"]:
        ext["evidence"] = [*ext["evidence"], anchor.ref]
    planned = [(t, ref) for t, ref in anchor.planned if ref in ext["evidence"]]
    also = "".join(f" The previous dose counted here is the proposed session {_time(t)} ({ref}) booked in this "
                   f"same request, a planned dose, not a recorded one." for t, ref in planned)
    card["detail"] = f"For the proposed session {_time(anchor.time)} ({anchor.ref}).{also}\n\n{card['detail']}"
    return card


def merge(cards: list[dict[str, Any]], more: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cards of several proposed sessions: a rule saying the same thing about two sessions gives one card."""
    for card in more:
        rule = card["extension"]["protocol-engine"]["rule"]
        twin = next((c for c in cards if c["extension"]["protocol-engine"]["rule"] == rule
                     and c["summary"] == card["summary"]), None)
        if twin is None:
            cards.append(card)
            continue
        evidence = twin["extension"]["protocol-engine"]["evidence"]
        added = [ref for ref in card["extension"]["protocol-engine"]["evidence"] if ref not in evidence]
        evidence.extend(added)
        sessions = [ref for ref in added if ref.startswith("Appointment/")]
        if sessions:
            twin["detail"] = f"Also for the proposed session(s) {', '.join(sessions)}.\n\n{twin['detail']}"
    return cards
