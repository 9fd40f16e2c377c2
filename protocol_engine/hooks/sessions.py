"""The proposed treatment sessions of an appointment-book request, read from its `appointments` Bundle.

Each proposed Appointment that is a session of the protocol becomes an Anchor at its start (core/anchors.py);
what cannot be judged is said, never guessed: no start is a data issue, another patient's appointment is foreign,
an appointment not recognised as a session is `unrecognised` (DQ-07).
"""

from __future__ import annotations

from typing import Any

from adapters.fhir import identity, normalise

from ..core.anchors import Anchor
from ..core.records import DataIssue
from ..pack.packset import Pack
from ..pack.protocol import Service


def proposed_sessions(service: Service, pack: Pack, bundle: Any, issues: list[DataIssue], patient_id: str | None = None,
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
