"""Rewrites of a CDS Hooks request that must not change its cards, and the oracle that compares cards.

Each rewrite takes a complete request (as `protocol_engine.authoring.vignette.build_request` makes it from a rule case) and
returns the same clinical situation in another FHIR shape that real EHRs send (a medicationReference instead of a
codeable concept, an OID instead of a URI, two Observations instead of a panel, another time zone, ...), or with
data added that is not this patient's or not about this protocol. The oracle then demands the same cards.

Card identity is (rule, indicator, evidence): the evidence references of the rewritten answer are first mapped back
to the resources they were made from (`Rewritten.back`), so a panel split into two Observations is still evidenced by
the panel. Text (summary, detail) is not compared: it may legitimately name a time in another offset.

A rewrite that makes the service add a data-quality card is a bug in the rewrite (it did not keep the situation the
same), with one exception the issue mandates: resources of another patient are dropped *with* a data-quality card
naming them, so for those additions a data-quality card that cites only the added resources is expected, not a
difference (`Rewritten.tolerated_dq`).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

PATIENT = "test-patient"
OTHER = "other-patient"
BASE = "https://ehr.example.org/fhir"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"
OIDS = {  # HL7's registered OIDs of the code systems the rules use (terminology.hl7.org CodeSystem pages)
    RXNORM: "urn:oid:2.16.840.1.113883.6.88",
    LOINC: "urn:oid:2.16.840.1.113883.6.1",
    SNOMED: "urn:oid:2.16.840.1.113883.6.96",
    ICD10CM: "urn:oid:2.16.840.1.113883.6.90",
}
BP_PANEL, SYSTOLIC, DIASTOLIC = "85354-9", "8480-6", "8462-4"
PAIRING = dt.timedelta(minutes=2)  # protocol.yaml measures.blood_pressure.pairing (G4)
MED_TYPES = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")
_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(Z|[+-]\d{2}:\d{2})$")


@dataclass
class Rewritten:
    request: dict[str, Any]
    back: dict[str, set[str]] = field(default_factory=dict)  # rewritten ref -> the original refs it stands for
    added: set[str] = field(default_factory=set)  # refs of resources the rewrite added
    tolerated_dq: bool = False  # another patient's data: a data-quality card citing only `added` is expected
    # Reduced-precision dates: the same request with every reduced date at its earliest / latest full value.
    bounds: tuple[dict[str, Any], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Rewrite:
    name: str
    kind: str  # "equivalent" (same data, another shape) or "addition" (data that must not matter)
    description: str
    apply: Callable[[dict[str, Any], str, dt.datetime], Rewritten | None]


def _clone(value: Any) -> Any:
    """A deep copy of JSON data (several times faster than copy.deepcopy, and requests are JSON)."""
    return json.loads(json.dumps(value))


# -- walking a request ------------------------------------------------------------------------------------------
def bundles(request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every Bundle of the request: prefetch searchsets, draftOrders, appointments."""
    for value in (request.get("prefetch") or {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            yield value
    for key in ("draftOrders", "appointments"):
        value = request["context"].get(key)
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            yield value


def entries(request: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(bundle, entry) for every entry holding a resource."""
    for bundle in bundles(request):
        for entry in bundle.get("entry") or ():
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                yield bundle, entry


def resources(request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every top-level resource: bundle entries and single-resource prefetch values."""
    for value in (request.get("prefetch") or {}).values():
        if isinstance(value, dict) and value.get("resourceType") not in (None, "Bundle"):
            yield value
    for _, entry in entries(request):
        yield entry["resource"]


def ref(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource.get('id')}"


def key_of_type(request: dict[str, Any], rtype: str) -> dict[str, Any] | None:
    """The prefetch searchset that holds resources of `rtype` (the service asks one key per type)."""
    from adapters.fhir.prefetch import TEMPLATES

    key = TEMPLATES.get(rtype, (None,))[0]
    value = (request.get("prefetch") or {}).get(key) if key else None
    return value if isinstance(value, dict) and value.get("resourceType") == "Bundle" else None


def _seed(case_id: str, name: str) -> int:
    return zlib.crc32(f"{case_id}|{name}".encode())


def _uuid(case_id: str, what: str) -> str:
    return str(uuid.UUID(int=random.Random(_seed(case_id, what)).getrandbits(128), version=4))


def _has_code(cc: Any, system: str, code: str) -> bool:
    return isinstance(cc, dict) and any(isinstance(c, dict) and c.get("system") == system and c.get("code") == code
                                        for c in cc.get("coding") or ())


def _walk_strings(node: Any, change: Callable[[str, str], str | None], key: str = "") -> int:
    """Apply `change(key, text)` to every string under `node`; returns how many changed."""
    changed = 0
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str):
                new = change(k, v)
                if new is not None and new != v:
                    node[k] = new
                    changed += 1
            else:
                changed += _walk_strings(v, change, k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, str):
                new = change(key, v)
                if new is not None and new != v:
                    node[i] = new
                    changed += 1
            else:
                changed += _walk_strings(v, change, key)
    return changed


# -- medication: codeable concept -> Medication resource ---------------------------------------------------------
def _medication_rewrite(mode: str) -> Callable[[dict[str, Any], str, dt.datetime], Rewritten | None]:
    """Move every medicationCodeableConcept into a Medication resource and refer to it.

    contained: a contained Medication, `#id`.  bundle: an entry of the same Bundle (search.mode include in a
    searchset), referred to by `Medication/id`; bundle-absolute: the same by its absolute URL; bundle-urn: with a
    `urn:uuid` fullUrl.  elsewhere: every Medication in the MedicationRequest searchset (as `_include` returns them),
    including those the draft orders refer to.
    """
    def apply(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
        out = _clone(request)
        moved = 0
        pool = key_of_type(out, "MedicationRequest") if mode == "elsewhere" else None
        if mode == "elsewhere" and pool is None:
            return None
        for bundle in list(bundles(out)):
            additions = []
            for entry in bundle.get("entry") or ():
                res = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(res, dict) or res.get("resourceType") not in MED_TYPES:
                    continue
                cc = res.get("medicationCodeableConcept")
                if not isinstance(cc, dict):
                    continue
                moved += 1
                med_id = f"med-{res.get('id')}"
                medication = {"resourceType": "Medication", "id": med_id, "code": cc}
                del res["medicationCodeableConcept"]
                if mode == "contained":
                    res.setdefault("contained", []).append(medication)
                    res["medicationReference"] = {"reference": f"#{med_id}"}
                    continue
                urn = f"urn:uuid:{_uuid(case_id, ref(res))}"
                full = urn if mode == "bundle-urn" else f"{BASE}/Medication/{med_id}"
                reference = {"bundle": f"Medication/{med_id}", "bundle-absolute": full, "bundle-urn": urn,
                             "elsewhere": f"Medication/{med_id}"}[mode]
                res["medicationReference"] = {"reference": reference}
                new_entry: dict[str, Any] = {"fullUrl": full, "resource": medication}
                target = pool if mode == "elsewhere" else bundle
                if target is not None and target.get("type") == "searchset":
                    new_entry["search"] = {"mode": "include"}
                additions.append((target, new_entry))
            for target, new_entry in additions:
                target.setdefault("entry", []).append(new_entry)
        return Rewritten(out) if moved else None
    return apply


# -- code systems: URI -> OID ---------------------------------------------------------------------------------------
def oid_systems(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
    out = _clone(request)
    changed = _walk_strings(out, lambda key, text: OIDS.get(text) if key == "system" else None)
    return Rewritten(out) if changed else None


# -- blood pressure: panel <-> separate systolic / diastolic -------------------------------------------------------
def _component(components: list[Any], code: str) -> dict[str, Any] | None:
    found = [c for c in components if isinstance(c, dict) and _has_code(c.get("code"), LOINC, code)]
    return found[0] if len(found) == 1 else None


def _shift(text: str, delta: dt.timedelta) -> str:
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parsed + delta).isoformat()


def _split_panels(gap: dt.timedelta) -> Callable[[dict[str, Any], str, dt.datetime], Rewritten | None]:
    """A BP panel becomes a systolic and a diastolic Observation; the diastolic is taken `gap` earlier (G4 pairs
    halves within the pairing window, and the pair is timed by its newer half)."""
    def apply(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
        out = _clone(request)
        back: dict[str, set[str]] = {}
        for bundle in bundles(out):
            new_entries = []
            for entry in bundle.get("entry") or ():
                res = entry.get("resource") if isinstance(entry, dict) else None
                halves = _halves_of(res, gap) if isinstance(res, dict) else None
                if halves is None:
                    new_entries.append(entry)
                    continue
                for half in halves:
                    back[ref(half)] = {ref(res)}  # type: ignore[arg-type]
                    new_entries.append({"resource": half})
            bundle["entry"] = new_entries
        return Rewritten(out, back) if back else None
    return apply


def _halves_of(res: dict[str, Any], gap: dt.timedelta) -> list[dict[str, Any]] | None:
    if res.get("resourceType") != "Observation" or not _has_code(res.get("code"), LOINC, BP_PANEL):
        return None
    components = res.get("component")
    if not isinstance(components, list) or len(components) != 2:
        return None
    sys_c, dia_c = _component(components, SYSTOLIC), _component(components, DIASTOLIC)
    if sys_c is None or dia_c is None:
        return None
    if gap and not isinstance(res.get("effectiveDateTime"), str):
        return None
    halves = []
    for suffix, comp in (("sys", sys_c), ("dia", dia_c)):
        half = {k: _clone(v) for k, v in res.items() if k not in ("component", "code", "id")}
        half["id"] = f"{res.get('id')}-{suffix}"
        half["code"] = _clone(comp["code"])
        for k, v in comp.items():
            if k.startswith("value") or k in ("dataAbsentReason", "interpretation", "referenceRange"):
                half[k] = _clone(v)
        if suffix == "dia" and gap:
            half["effectiveDateTime"] = _shift(res["effectiveDateTime"], -gap)
        halves.append(half)
    return halves


def join_halves(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
    """A standalone systolic and diastolic that pair unambiguously (each the other's only partner within the
    pairing window, same status) become one panel, timed at the newer half."""
    out = _clone(request)
    bundle = key_of_type(out, "Observation")
    if bundle is None:
        return None

    def half(entry: Any, code: str) -> bool:
        res = entry.get("resource") if isinstance(entry, dict) else None
        return (isinstance(res, dict) and res.get("resourceType") == "Observation"
                and isinstance(res.get("effectiveDateTime"), str) and _has_code(res.get("code"), LOINC, code)
                and len(res["code"].get("coding") or ()) == 1 and "component" not in res)

    def at(entry: dict[str, Any]) -> dt.datetime:
        return dt.datetime.fromisoformat(entry["resource"]["effectiveDateTime"].replace("Z", "+00:00"))

    items = bundle.get("entry") or []
    systolics = [e for e in items if half(e, SYSTOLIC)]
    diastolics = [e for e in items if half(e, DIASTOLIC)]
    panels = [e for e in items if isinstance(e, dict) and isinstance(e.get("resource"), dict)
              and _has_code(e["resource"].get("code"), LOINC, BP_PANEL)]
    back: dict[str, set[str]] = {}
    joined: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for s in systolics:
        near = [d for d in diastolics if abs(at(d) - at(s)) <= PAIRING]
        if len(near) != 1:
            continue
        d = near[0]
        if len([x for x in systolics if abs(at(x) - at(d)) <= PAIRING]) != 1:
            continue
        if any(isinstance(p["resource"].get("effectiveDateTime"), str) and abs(at(p) - at(s)) <= PAIRING
               for p in panels):
            continue
        if s["resource"].get("status") != d["resource"].get("status"):
            continue
        joined.append((s, d))
    if not joined:
        return None
    drop = set()
    for s, d in joined:
        sres, dres = s["resource"], d["resource"]
        newer = sres if at(s) >= at(d) else dres
        panel = {k: _clone(v) for k, v in newer.items()
                 if k not in ("code", "id", "interpretation", "referenceRange", "dataAbsentReason")
                 and not k.startswith("value")}
        panel["id"] = f"{sres.get('id')}-{dres.get('id')}"
        panel["code"] = {"coding": [{"system": LOINC, "code": BP_PANEL,
                                     "display": "Blood pressure panel with all children optional"}]}
        panel["component"] = []
        for part in (sres, dres):
            comp = {"code": _clone(part["code"])}
            comp.update({k: _clone(v) for k, v in part.items()
                         if k.startswith("value") or k in ("dataAbsentReason", "interpretation", "referenceRange")})
            panel["component"].append(comp)
        back[ref(panel)] = {ref(sres), ref(dres)}
        drop |= {id(s), id(d)}
        items.append({"resource": panel})
    bundle["entry"] = [e for e in items if id(e) not in drop]
    return Rewritten(out, back)


# -- the patient reference: relative -> absolute URL -> urn:uuid ---------------------------------------------------
def _patient_refs(out: dict[str, Any], target: str) -> int:
    return _walk_strings(out, lambda key, text: target if key == "reference" and text == f"Patient/{PATIENT}"
                         else None)


def subject_absolute(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
    """References to the patient as absolute URLs on the EHR's FHIR server (which the request names), and every
    searchset entry with its fullUrl there, as a FHIR server returns them."""
    out = _clone(request)
    if not _patient_refs(out, f"{BASE}/Patient/{PATIENT}"):
        return None
    out["fhirServer"] = BASE
    for bundle in bundles(out):
        if bundle.get("type") == "searchset":
            for entry in bundle.get("entry") or ():
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                    entry.setdefault("fullUrl", f"{BASE}/{ref(entry['resource'])}")
    return Rewritten(out)


def subject_urn_uuid(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
    """References to the patient as a `urn:uuid`, resolved by a Patient entry with that fullUrl in each Bundle
    (search.mode include in a searchset, as `_include=...:patient` returns it)."""
    patient = next((r for r in resources(request) if r.get("resourceType") == "Patient" and r.get("id") == PATIENT),
                   None)
    if patient is None:
        return None
    out = _clone(request)
    urn = f"urn:uuid:{_uuid(case_id, 'patient')}"
    if not _patient_refs(out, urn):
        return None
    for bundle in bundles(out):
        items = bundle.get("entry") or []
        if not any(isinstance(e, dict) and urn in repr(e.get("resource")) for e in items):
            continue
        entry: dict[str, Any] = {"fullUrl": urn, "resource": _clone(patient)}
        if bundle.get("type") == "searchset":
            entry["search"] = {"mode": "include"}
        items.append(entry)
    return Rewritten(out)


# -- time zones ---------------------------------------------------------------------------------------------------
def _timezone(offset: str) -> Callable[[dict[str, Any], str, dt.datetime], Rewritten | None]:
    if offset == "Z":
        tz = dt.UTC
    else:
        sign = 1 if offset[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))

    def change(key: str, text: str) -> str | None:
        found = _DATETIME.match(text)
        if not found:
            return None
        moved = dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(tz).isoformat()
        return moved.replace("+00:00", "Z") if offset == "Z" else moved

    def apply(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
        out = _clone(request)
        return Rewritten(out) if _walk_strings(out, change) else None
    return apply


# -- reduced-precision dates ----------------------------------------------------------------------------------------
def _reduce(precision: str) -> Callable[[dict[str, Any], str, dt.datetime], Rewritten | None]:
    """Patient.birthDate and Condition.onsetDateTime at month or year precision (onset also at day precision).

    The rewrite carries the request with each reduced date at its earliest and at its latest full value (with the
    widest offsets for a dateTime); the test uses it only when those bounds give the original cards, i.e. when the
    imprecision does not straddle a threshold."""
    cut = {"day": 10, "month": 7, "year": 4}[precision]

    def bounds(text: str, is_datetime: bool) -> tuple[str, str]:
        reduced = text[:cut]
        year = int(reduced[:4])
        month = int(reduced[5:7]) if cut >= 7 else None
        day = int(reduced[8:10]) if cut >= 10 else None
        first = dt.date(year, month or 1, day or 1)
        if day is not None:
            last = first
        elif month is not None:
            last = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
        else:
            last = dt.date(year, 12, 31)
        if not is_datetime:
            return first.isoformat(), last.isoformat()
        return f"{first.isoformat()}T00:00:00+14:00", f"{last.isoformat()}T23:59:59-12:00"

    def apply(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
        out, low, high = _clone(request), _clone(request), _clone(request)
        changed = 0
        for copies in zip(resources(out), resources(low), resources(high), strict=True):
            res = copies[0]
            if res.get("resourceType") == "Patient" and precision != "day":
                element, is_datetime = "birthDate", False
            elif res.get("resourceType") == "Condition":
                element, is_datetime = "onsetDateTime", True
            else:
                continue
            text = res.get(element)
            if not isinstance(text, str) or len(text) <= cut:
                continue
            changed += 1
            lo, hi = bounds(text, is_datetime)
            res[element] = text[:cut]
            copies[1][element], copies[2][element] = lo, hi
        return Rewritten(out, bounds=(low, high)) if changed else None
    return apply


# -- entry order ----------------------------------------------------------------------------------------------------
def shuffle_entries(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
    out = _clone(request)
    rng = random.Random(_seed(case_id, "shuffle"))
    changed = False
    for bundle in bundles(out):
        items = bundle.get("entry") or []
        if len(items) < 2:
            continue
        order = list(range(len(items)))
        while order == sorted(order):
            rng.shuffle(order)
        bundle["entry"] = [items[i] for i in order]
        changed = True
    return Rewritten(out) if changed else None


# -- qualitative results: text <-> SNOMED CT coded value <-> valueString ------------------------------------------
# SNOMED CT qualifier values labs send for a qualitative result (protocol.yaml `presence` reads each of them).
QUALITATIVE = {"positive": ("10828004", "Positive"), "negative": ("260385009", "Negative"),
               "detected": ("260373001", "Detected"), "not detected": ("260415000", "Not detected")}


def _qualitative(mode: str) -> Callable[[dict[str, Any], str, dt.datetime], Rewritten | None]:
    """A qualitative Observation result written as text (valueCodeableConcept.text) becomes the SNOMED CT coded
    value with no text (`coded`, as many lab interfaces send it) or a valueString (`string`)."""
    def apply(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
        out = _clone(request)
        changed = False
        for res in resources(out):
            value = res.get("valueCodeableConcept") if res.get("resourceType") == "Observation" else None
            if not isinstance(value, dict) or value.get("coding") or not isinstance(value.get("text"), str):
                continue
            found = QUALITATIVE.get(value["text"].strip().lower())
            if found is None:
                continue
            if mode == "coded":
                res["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": found[0]}]}
            else:
                del res["valueCodeableConcept"]
                res["valueString"] = found[1].upper()
            changed = True
        return Rewritten(out) if changed else None
    return apply


# -- additions ----------------------------------------------------------------------------------------------------
def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _add(out: dict[str, Any], resource: dict[str, Any]) -> bool:
    bundle = key_of_type(out, resource["resourceType"])
    if bundle is None:
        return False
    bundle.setdefault("entry", []).append({"resource": resource})
    return True


def _other_subject(res: dict[str, Any]) -> None:
    for element in ("subject", "patient"):
        if element in res:
            res[element] = {"reference": f"Patient/{OTHER}"}


def other_patient_copies(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
    """Every resource of this patient copied to another patient, one minute newer (so that, read as this
    patient's, the copy would govern), draft orders included."""
    out = _clone(request)
    added: set[str] = set()
    for bundle in bundles(out):
        copies = []
        for entry in bundle.get("entry") or ():
            res = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(res, dict) or res.get("resourceType") in ("Patient", "Appointment", "Medication"):
                continue
            twin = _clone(res)
            twin["id"] = f"{res.get('id')}-of-{OTHER}"
            _other_subject(twin)
            _walk_strings(twin, lambda key, text: _shift(text, dt.timedelta(minutes=1))
                          if _DATETIME.match(text) and key != "lastUpdated" else None)
            copies.append({"resource": twin})
            added.add(ref(twin))
        bundle.setdefault("entry", []).extend(copies)
    return Rewritten(out, added=added, tolerated_dq=True) if added else None


def _bp_panel(rid: str, subject: str, at: dt.datetime, systolic: float, diastolic: float) -> dict[str, Any]:
    def comp(code: str, display: str, value: float) -> dict[str, Any]:
        return {"code": _coding(LOINC, code, display),
                "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": _coding(LOINC, BP_PANEL, "Blood pressure panel with all children optional"),
            "subject": {"reference": subject}, "effectiveDateTime": at.isoformat(),
            "component": [comp(SYSTOLIC, "Systolic blood pressure", systolic),
                          comp(DIASTOLIC, "Diastolic blood pressure", diastolic)]}


def _vital(rid: str, subject: str, at: dt.datetime, code: str, display: str, value: float,
           unit: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": rid, "status": "final", "code": _coding(LOINC, code, display),
            "subject": {"reference": subject}, "effectiveDateTime": at.isoformat(),
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def _other_normal(now: dt.datetime) -> list[dict[str, Any]]:
    """Another patient's normal readings, newer than anything in a rule case."""
    s, at = f"Patient/{OTHER}", now - dt.timedelta(minutes=1)
    return [
        _bp_panel("other-bp", s, at, 118, 76),
        _vital("other-hr", s, at, "8867-4", "Heart rate", 72, "/min"),
        _vital("other-spo2", s, at, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", 98, "%"),
        _vital("other-rr", s, at, "9279-1", "Respiratory rate", 14, "/min"),
        _vital("other-weight", s, at, "29463-7", "Body weight", 70, "kg"),
        {**_vital("other-phq9", s, at, "44261-6", "PHQ-9 total score", 4, "{score}")},
        {"resourceType": "Observation", "id": "other-hcg", "status": "final",
         "code": _coding(LOINC, "2106-3", "Choriogonadotropin (pregnancy test) [Presence] in Urine"),
         "subject": {"reference": s}, "effectiveDateTime": at.isoformat(),
         "valueCodeableConcept": _coding(SNOMED, "260385009", "Negative")},
    ]


def _other_findings(now: dt.datetime) -> list[dict[str, Any]]:
    """Another patient's contraindications, interactions and doses, all recent."""
    s = f"Patient/{OTHER}"
    recent = now - dt.timedelta(minutes=3)

    def condition(rid: str, code: str, display: str) -> dict[str, Any]:
        return {"resourceType": "Condition", "id": rid, "subject": {"reference": s},
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": "active"}]},
                "verificationStatus": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                "code": _coding(ICD10CM, code, display), "onsetDateTime": (now - dt.timedelta(days=20)).isoformat()}

    def med(rid: str, code: str, display: str) -> dict[str, Any]:
        return {"resourceType": "MedicationRequest", "id": rid, "status": "active", "intent": "order",
                "subject": {"reference": s}, "medicationCodeableConcept": _coding(RXNORM, code, display),
                "authoredOn": (now - dt.timedelta(days=10)).isoformat()}

    def dose(rid: str, ago: dt.timedelta) -> dict[str, Any]:
        return {"resourceType": "MedicationAdministration", "id": rid, "status": "completed",
                "subject": {"reference": s}, "medicationCodeableConcept": _coding(RXNORM, "6130", "ketamine"),
                "effectiveDateTime": (now - ago).isoformat()}

    return [
        _bp_panel("other-severe-bp", s, recent, 200, 120),
        {"resourceType": "Observation", "id": "other-hcg-positive", "status": "final",
         "code": _coding(LOINC, "2106-3", "Choriogonadotropin (pregnancy test) [Presence] in Urine"),
         "subject": {"reference": s}, "effectiveDateTime": recent.isoformat(),
         "valueCodeableConcept": _coding(SNOMED, "10828004", "Positive")},
        condition("other-schizophrenia", "F20.9", "Schizophrenia, unspecified"),
        condition("other-glaucoma", "H40.9", "Unspecified glaucoma"),
        condition("other-pregnancy", "Z33.1", "Pregnant state, incidental"),
        med("other-lorazepam", "6470", "lorazepam"),
        med("other-phenelzine", "8123", "phenelzine"),
        {"resourceType": "AllergyIntolerance", "id": "other-ketamine-allergy", "patient": {"reference": s},
         "clinicalStatus": {"coding": [{
             "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
         "code": _coding(RXNORM, "6130", "ketamine")},
        dose("other-dose-2h", dt.timedelta(hours=2)),
        dose("other-dose-3d", dt.timedelta(days=3)),
    ]


def _other_additions(make: Callable[[dt.datetime], list[dict[str, Any]]]
                     ) -> Callable[[dict[str, Any], str, dt.datetime], Rewritten | None]:
    def apply(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
        out = _clone(request)
        added = {ref(r) for r in make(now) if _add(out, r)}
        return Rewritten(out, added=added, tolerated_dq=True) if added else None
    return apply


def unrelated_medicine(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
    """An active sertraline order and statement of this patient (an antidepressant no rule reads)."""
    out = _clone(request)
    sertraline = _coding(RXNORM, "312941", "sertraline 100 MG Oral Tablet")
    subject = {"reference": f"Patient/{PATIENT}"}
    added = set()
    for res in ({"resourceType": "MedicationRequest", "id": "unrelated-sertraline", "status": "active",
                 "intent": "order", "subject": subject, "medicationCodeableConcept": sertraline,
                 "authoredOn": (now - dt.timedelta(days=30)).isoformat(),
                 "dosageInstruction": [{"text": "100 mg by mouth daily"}]},
                {"resourceType": "MedicationStatement", "id": "unrelated-sertraline-statement", "status": "active",
                 "subject": subject, "medicationCodeableConcept": sertraline}):
        if _add(out, res):
            added.add(ref(res))
    return Rewritten(out, added=added) if added else None


def _extra_draft(kind: str) -> Callable[[dict[str, Any], str, dt.datetime], Rewritten | None]:
    """A draft order no rule is about, beside the protocol's draft orders (order hooks only)."""
    def apply(request: dict[str, Any], case_id: str, now: dt.datetime) -> Rewritten | None:
        draft = request["context"].get("draftOrders")
        if not isinstance(draft, dict):
            return None
        out = _clone(request)
        subject = {"reference": f"Patient/{PATIENT}"}
        if kind == "medication":
            res = {"resourceType": "MedicationRequest", "id": "extra-acetaminophen", "status": "draft",
                   "intent": "order", "subject": subject, "authoredOn": now.isoformat(),
                   "medicationCodeableConcept": _coding(RXNORM, "313782", "acetaminophen 325 MG Oral Tablet"),
                   "dosageInstruction": [{"route": _coding(SNOMED, "26643006", "Oral route"), "doseAndRate": [
                       {"doseQuantity": {"value": 650, "unit": "mg", "system": UCUM, "code": "mg"}}]}]}
        else:
            res = {"resourceType": "ServiceRequest", "id": "extra-metabolic-panel", "status": "draft",
                   "intent": "order", "subject": subject, "authoredOn": now.isoformat(),
                   "code": _coding(LOINC, "24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma")}
        out["context"]["draftOrders"].setdefault("entry", []).append({"resource": res})
        return Rewritten(out, added={ref(res)})
    return apply


REWRITES: list[Rewrite] = [
    Rewrite("medication-contained", "equivalent", "medicationCodeableConcept -> contained Medication (#ref)",
            _medication_rewrite("contained")),
    Rewrite("medication-bundle", "equivalent",
            "medicationCodeableConcept -> Medication entry of the same Bundle, referred to as Medication/id",
            _medication_rewrite("bundle")),
    Rewrite("medication-bundle-absolute", "equivalent",
            "medicationCodeableConcept -> Medication entry of the same Bundle, referred to by its absolute URL",
            _medication_rewrite("bundle-absolute")),
    Rewrite("medication-bundle-urn-uuid", "equivalent",
            "medicationCodeableConcept -> Medication entry of the same Bundle with a urn:uuid fullUrl",
            _medication_rewrite("bundle-urn")),
    Rewrite("medication-included", "equivalent",
            "medicationCodeableConcept -> Medication included (search.mode include) in the MedicationRequest "
            "searchset, draft orders' Medications too", _medication_rewrite("elsewhere")),
    Rewrite("oid-systems", "equivalent", "RxNorm, LOINC, SNOMED CT and ICD-10-CM system URIs -> their urn:oid",
            oid_systems),
    Rewrite("bp-panel-split", "equivalent", "BP panel -> systolic and diastolic Observations at the same time",
            _split_panels(dt.timedelta(0))),
    Rewrite("bp-panel-split-60s", "equivalent",
            "BP panel -> systolic and diastolic Observations, the diastolic 60 s earlier (inside the pairing window)",
            _split_panels(dt.timedelta(seconds=60))),
    Rewrite("bp-halves-join", "equivalent", "systolic + diastolic Observations paired by G4 -> one BP panel",
            join_halves),
    Rewrite("subject-absolute", "equivalent",
            "Patient/id references -> absolute URLs on the request's fhirServer (entries get fullUrls)",
            subject_absolute),
    Rewrite("subject-urn-uuid", "equivalent",
            "Patient/id references -> urn:uuid of a Patient entry in the same Bundle", subject_urn_uuid),
    Rewrite("timezone-z", "equivalent", "every dateTime written with Z instead of +00:00 (same instant)",
            _timezone("Z")),
    Rewrite("timezone-+05:30", "equivalent", "every dateTime moved to +05:30 (same instant)",
            _timezone("+05:30")),
    Rewrite("timezone--08:00", "equivalent", "every dateTime moved to -08:00 (same instant, the date often earlier)",
            _timezone("-08:00")),
    Rewrite("date-day", "equivalent", "Condition.onsetDateTime -> date only", _reduce("day")),
    Rewrite("date-month", "equivalent", "birthDate and onsetDateTime -> YYYY-MM", _reduce("month")),
    Rewrite("date-year", "equivalent", "birthDate and onsetDateTime -> YYYY", _reduce("year")),
    Rewrite("shuffle-entries", "equivalent", "entries of every Bundle in another order", shuffle_entries),
    Rewrite("qualitative-coded", "equivalent",
            "a qualitative result's text (Positive, Negative, Detected) -> its SNOMED CT code alone",
            _qualitative("coded")),
    Rewrite("qualitative-string", "equivalent", "a qualitative result's valueCodeableConcept text -> valueString",
            _qualitative("string")),
    Rewrite("other-patient-copies", "addition",
            "a copy of every resource for another patient, one minute newer", other_patient_copies),
    Rewrite("other-patient-normal", "addition",
            "another patient's normal vitals, weight, PHQ-9 and negative hCG, newest of all",
            _other_additions(_other_normal)),
    Rewrite("other-patient-findings", "addition",
            "another patient's 200/120, schizophrenia, pregnancy, benzodiazepine, MAOI, ketamine allergy and doses",
            _other_additions(_other_findings)),
    Rewrite("unrelated-medicine", "addition", "an active sertraline 100 MG Oral Tablet (RxNorm 312941)",
            unrelated_medicine),
    Rewrite("extra-draft-medication", "addition", "an extra draft order for acetaminophen 325 MG Oral Tablet",
            _extra_draft("medication")),
    Rewrite("extra-draft-service-request", "addition", "an extra draft ServiceRequest (metabolic panel)",
            _extra_draft("service")),
]
BY_NAME = {r.name: r for r in REWRITES}


# -- the oracle -----------------------------------------------------------------------------------------------------
CardKey = tuple[str, str, tuple[str, ...]]


def anchors(request: dict[str, Any]) -> set[str]:
    """The resources a hook is about (draft orders, appointments): cards of those hooks may cite them too."""
    found = set()
    for key in ("draftOrders", "appointments"):
        bundle = request["context"].get(key)
        for entry in bundle.get("entry") or () if isinstance(bundle, dict) else ():
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                found.add(ref(entry["resource"]))
    return found


def card_keys(cards: list[dict[str, Any]], rewritten: Rewritten | None = None,
              before: frozenset[str] = frozenset()) -> Counter[CardKey]:
    """Cards as (rule, indicator, evidence mapped back to the original resources); `before`: the original
    answer's rules."""
    keys: Counter[CardKey] = Counter()
    for card in cards:
        ext = card.get("extension", {}).get("protocol-engine", {})
        evidence: set[str] = set()
        for item in ext.get("evidence") or ():
            evidence |= rewritten.back.get(item, {item}) if rewritten is not None else {item}
        if rewritten is not None and rewritten.tolerated_dq and ext.get("category") == "data-quality":
            # Another patient's resources are set aside with a data-quality card naming them (issue 16 item 1),
            # possibly also citing the order or appointment the hook is about; it must cite nothing else. A
            # data-quality card the original answer had already must stay the same, apart from naming them too.
            if (ext.get("rule") not in before and evidence & rewritten.added
                    and not evidence - rewritten.added - anchors(rewritten.request)):
                continue
            evidence -= rewritten.added
        keys[(str(ext.get("rule")), str(card.get("indicator")), tuple(sorted(evidence)))] += 1
    return keys


def difference(before: list[dict[str, Any]], after: list[dict[str, Any]], rewritten: Rewritten) -> str:
    """'' when the cards are the same; otherwise what was lost and what was gained, with summaries."""
    want = card_keys(before)
    got = card_keys(after, rewritten, frozenset(rule for rule, _, _ in want))
    if want == got:
        return ""
    summaries = {}
    for card in before + after:
        ext = card.get("extension", {}).get("protocol-engine", {})
        summaries.setdefault(ext.get("rule"), card.get("summary"))
    lines = []
    for label, keys in (("lost", want - got), ("gained", got - want)):
        for (rule, indicator, evidence), n in sorted(keys.items()):
            lines.append(f"  {label}: {rule} {indicator} evidence={list(evidence)}{f' x{n}' if n > 1 else ''}"
                         f" - {summaries.get(rule)!r}")
    return "\n".join(lines)


def describe(keys: Counter[CardKey]) -> str:
    return ", ".join(f"{rule}({indicator})" for rule, indicator, _ in sorted(keys)) or "no cards"
