"""Patient identity: only resources that provably belong to the patient in context are this patient's data.

A resource belongs to `context.patientId` when it is that Patient, or when its subject/patient element is a
reference that resolves to that Patient: relative (`Patient/x`), absolute (`https://host/fhir/Patient/x`,
optionally `/_history/n`) or a `urn:uuid:`/absolute fullUrl of a Patient entry with that id in the request's
Bundles, or `urn:uuid:<id>` where <id> is `context.patientId` itself and no Bundle entry gives that fullUrl to
another resource (Synthea-style charts whose Patient is not in the request).
Anything else (another patient's id, a Group, an identifier-only or display-only reference, no subject at all)
cannot be proved to be this patient's, so it is never used; the caller reports it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# The element that names the patient, per resource type the rules read (FHIR R4).
SUBJECT_ELEMENT: dict[str, str] = {
    "Observation": "subject",
    "Condition": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "MedicationAdministration": "subject",
    "AllergyIntolerance": "patient",
    "Encounter": "subject",
}
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def patient_urls(bundles: Iterable[Any]) -> dict[str, str]:
    """fullUrl -> id of every Patient entry in these Bundles (for `urn:uuid` and absolute subjects)."""
    found: dict[str, str] = {}
    for bundle in bundles:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            continue
        for entry in bundle.get("entry") or ():
            if not isinstance(entry, dict):
                continue
            resource, url = entry.get("resource"), entry.get("fullUrl")
            if (isinstance(resource, dict) and resource.get("resourceType") == "Patient"
                    and isinstance(url, str) and isinstance(resource.get("id"), str)):
                found[url] = resource["id"]
    return found


def referenced_patient(reference: Any, urls: dict[str, str]) -> str | None:
    """The Patient id a Reference element points to, or None when it does not provably name one."""
    if not isinstance(reference, dict):
        return None
    ref = reference.get("reference")
    if not isinstance(ref, str):
        return None  # identifier-only or display-only: cannot be matched to the patient in context
    if ref in urls:
        return urls[ref]
    if ref.startswith("urn:"):
        return None
    match = _PATIENT_REF.search(ref)
    return match.group(1) if match else None


def foreign_reason(raw: dict[str, Any], patient_id: str, urls: dict[str, str]) -> str | None:
    """Why this resource is not the context patient's (None when it is, or is not patient data)."""
    kind = raw.get("resourceType")
    if kind == "Patient":
        return None if raw.get("id") == patient_id else "is a different Patient than the one in context"
    element = SUBJECT_ELEMENT.get(str(kind))
    if element is None:
        return None
    value = raw.get(element)
    if value is None:
        return f"has no {element}, so it cannot be shown to belong to the patient in context"
    owner = referenced_patient(value, urls)
    if owner is None and _is_own_uuid(value, patient_id, urls):
        return None
    if owner is None:
        return f"its {element} does not resolve to a Patient, so it cannot be shown to be this patient's"
    if owner != patient_id:
        return f"its {element} is another patient"
    return None


def appointment_foreign_reason(raw: dict[str, Any], patient_id: str, urls: dict[str, str]) -> str | None:
    """Why a proposed Appointment is not the context patient's (None when a Patient participant is).

    An Appointment names its patient as a participant's actor (FHIR R4 has no subject element). One whose
    Patient participants all resolve to other patients is another patient's booking; one with no Patient
    participant is taken as the context patient's, as appointment-book's `patientId` says whose they are.
    """
    owners = []
    for participant in raw.get("participant") or ():
        actor = participant.get("actor") if isinstance(participant, dict) else None
        ref = actor.get("reference") if isinstance(actor, dict) else None
        if isinstance(ref, str) and (ref in urls or _PATIENT_REF.search(ref)):
            owners.append(referenced_patient(actor, urls))
    if not owners or patient_id in owners:
        return None
    return "its participant Patient is another patient"


def _is_own_uuid(reference: Any, patient_id: str, urls: dict[str, str]) -> bool:
    """`urn:uuid:<context.patientId>` not bound by any Patient fullUrl, typed Patient or untyped: this patient."""
    if not isinstance(reference, dict) or reference.get("type") not in (None, "Patient"):
        return False
    ref = reference.get("reference")
    return isinstance(ref, str) and ref not in urls and ref.lower() == f"urn:uuid:{patient_id}".lower()
