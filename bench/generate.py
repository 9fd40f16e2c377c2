"""Deterministic CDS Hooks order-sign requests with N Observations and a realistic chart around them.

Resources carry what EHR FHIR APIs send besides the clinical core (meta, identifiers, encounter and
performer references, dosage text, bundle fullUrls), so parsing costs what it costs in production.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from typing import Any

LOINC = "http://loinc.org"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"


def _ehr(resource: dict[str, Any], when: dt.datetime, prefix: str = "") -> dict[str, Any]:
    """The administrative elements an EHR adds to every resource (ids made unique per patient by `prefix`)."""
    resource = {**resource, "id": prefix + resource["id"]}
    return {**resource, "meta": {"versionId": "1", "lastUpdated": when.isoformat()},
            "identifier": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.798268", "value": f"{resource['id']}-0"}]}


def _obs(i: int, code: str, when: dt.datetime, pid: str = "bench", **value: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"obs-{i}", "status": "final",
            "encounter": {"reference": f"Encounter/enc-{i // 5}"},
            "performer": [{"reference": "Practitioner/nurse-1", "display": "Nurse"}],
            "issued": when.isoformat(),
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": when.isoformat(), **value}


MEDICATIONS = [("36567", "simvastatin"), ("6809", "metformin"), ("29046", "lisinopril"), ("32968", "clopidogrel"),
               ("321988", "escitalopram"), ("7646", "omeprazole"), ("5640", "ibuprofen"), ("10582", "levothyroxine")]


def _qty(v: float, unit: str) -> dict[str, Any]:
    return {"valueQuantity": {"value": v, "unit": unit, "system": UCUM, "code": unit}}


def request(n_observations: int, now: dt.datetime, seed: int = 7, patient: str | None = None) -> dict[str, Any]:
    """An order-sign request for IV ketamine; Observations spread over the last year, newest first.

    With `patient`, a distinct patient: every resource id carries the patient id, and reading times and
    values vary with `seed` (no two such requests share a patient, a resource or a timestamp).
    """
    rng = random.Random(seed * 1000 + n_observations)
    pid = patient or "bench"
    prefix = f"{patient}-" if patient else ""
    jitter = rng.uniform(0.01, 0.4) if patient else 0.0
    observations = []
    for i in range(n_observations):
        when = now - dt.timedelta(hours=0.5 + jitter + i * (8760 / max(n_observations, 1)))
        kind = i % 5
        if kind == 0:
            observations.append(_obs(i, "85354-9", when, pid, component=[
                {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, **_qty(rng.randint(105, 138), "mm[Hg]")},
                {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, **_qty(rng.randint(62, 88), "mm[Hg]")}]))
        elif kind == 1:
            observations.append(_obs(i, "8867-4", when, pid, **_qty(rng.randint(58, 96), "/min")))
        elif kind == 2:
            observations.append(_obs(i, "59408-5", when, pid, **_qty(rng.randint(94, 100), "%")))
        elif kind == 3:
            observations.append(_obs(i, "29463-7", when, pid, **_qty(round(rng.uniform(68, 72), 1), "kg")))
        else:
            observations.append(_obs(i, "44261-6", when, pid, valueQuantity={"value": rng.randint(5, 20)}))
    observations = [_ehr(o, now, prefix) for o in observations]
    conditions = [{"resourceType": "Condition", "id": f"cond-{i}", "subject": {"reference": f"Patient/{pid}"},
                   "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                             "code": "problem-list-item"}]}],
                   "verificationStatus": {"coding": [{
                       "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                   "recordedDate": (now - dt.timedelta(days=400 + 30 * i)).date().isoformat(),
                   "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                  "code": "active" if i % 3 else "resolved"}]},
                   "code": {"coding": [{"system": ICD, "code": code}]}}
                  for i, code in enumerate(["F33.2", "E11.9", "I10", "J45.909", "K21.9", "M54.5", "F41.1", "E78.5",
                                            "G43.909", "F17.210", "N39.0", "H52.4", "L40.0", "E03.9", "R51.9"])]
    meds = [{"resourceType": "MedicationRequest", "id": f"med-{i}", "status": "active", "intent": "order",
             "subject": {"reference": f"Patient/{pid}"}, "authoredOn": (now - dt.timedelta(days=90)).isoformat(),
             "requester": {"reference": "Practitioner/gp-1", "display": "GP"},
             "medicationCodeableConcept": {"coding": [{"system": RX, "code": code, "display": name}], "text": name},
             "dosageInstruction": [{"text": f"{name} once daily", "timing": {"repeat": {"frequency": 1, "period": 1,
                                                                                        "periodUnit": "d"}},
                                    "route": {"coding": [{"system": "http://snomed.info/sct", "code": "26643006"}]}}]}
            for i, (code, name) in enumerate(MEDICATIONS)]
    administrations = [{"resourceType": "MedicationAdministration", "id": f"adm-{i}", "status": "completed",
                        "subject": {"reference": f"Patient/{pid}"}, "context": {"reference": f"Encounter/ket-{i}"},
                        "performer": [{"actor": {"reference": "Practitioner/nurse-1"}}],
                        "request": {"reference": f"MedicationRequest/ket-{i}"},
                        "medicationCodeableConcept": {"coding": [{"system": RX, "code": "6130",
                                                                  "display": "ketamine"}]},
                        "dosage": {"route": {"coding": [{"system": "http://snomed.info/sct", "code": "47625008"}]},
                                   "dose": {"value": 35, "unit": "mg", "system": UCUM, "code": "mg"}},
                        "effectiveDateTime": (now - dt.timedelta(days=7 * (i + 1), hours=jitter)).isoformat()}
                       for i in range(20)]
    conditions = [_ehr(c, now, prefix) for c in conditions]
    meds = [_ehr(m, now, prefix) for m in meds]
    administrations = [_ehr(a, now, prefix) for a in administrations]
    draft = {"resourceType": "MedicationRequest", "id": f"{prefix}draft-1", "status": "draft", "intent": "order",
             "subject": {"reference": f"Patient/{pid}"},
             "medicationCodeableConcept": {"coding": [{"system": RX, "code": "6130", "display": "ketamine"}]},
             "dosageInstruction": [{"route": {"coding": [{"system": "http://snomed.info/sct", "code": "47625008"}]},
                                    "doseAndRate": [{"doseQuantity": {"value": 35, "unit": "mg", "system": UCUM,
                                                                      "code": "mg"}}],
                                    "timing": {"repeat": {"duration": 40, "durationUnit": "min"}}}]}

    def bundle(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "total": len(items),
                "entry": [{"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r,
                           "search": {"mode": "match"}} for r in items]}

    return {
        "hook": "order-sign", "hookInstance": f"bench-{n_observations}" + (f"-{patient}" if patient else ""),
        "context": {"userId": "Practitioner/bench", "patientId": pid,
                    "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}},
        "prefetch": {
            "patient": _ehr({"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": "1980-04-01",
                             "active": True, "name": [{"use": "official", "family": "Bench", "given": ["Test"]}],
                             "telecom": [{"system": "phone", "value": "555-0100", "use": "home"}],
                             "address": [{"line": ["1 Test Street"], "city": "Testville", "postalCode": "00000"}]},
                            now, ""),
            "observations": bundle(observations), "conditions": bundle(conditions),
            "medicationRequests": bundle(meds), "medicationStatements": bundle([]),
            "medicationAdministrations": bundle(administrations), "allergies": bundle([]),
        },
    }


def body(n_observations: int, now: dt.datetime) -> bytes:
    return json.dumps(request(n_observations, now)).encode()


def for_hook(order_sign: dict[str, Any], hook: str) -> dict[str, Any]:
    """The same patient's chart as an order-select (the draft selected) or a patient-view request.

    For patient-view the ketamine order is no longer a draft: it is the patient's active order, in the
    MedicationRequest prefetch, as it would be between sessions of a course.
    """
    out = json.loads(json.dumps(order_sign))
    out["hook"] = hook
    out["hookInstance"] = str(uuid.uuid4())
    draft = out["context"]["draftOrders"]["entry"][0]["resource"]
    if hook == "order-select":
        out["context"]["selections"] = [f"MedicationRequest/{draft['id']}"]
    elif hook == "patient-view":
        del out["context"]["draftOrders"]
        active = {**draft, "status": "active", "authoredOn": out["prefetch"]["patient"]["meta"]["lastUpdated"]}
        out["prefetch"]["medicationRequests"]["entry"].append(
            {"fullUrl": f"https://ehr.example.org/fhir/MedicationRequest/{active['id']}", "resource": active,
             "search": {"mode": "match"}})
        out["prefetch"]["medicationRequests"]["total"] += 1
    return out
