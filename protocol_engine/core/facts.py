"""The fact catalogue: every fact type a rule may read, its fields and their kinds.

Kinds: text, number, bool, duration (stored in hours; written `24h`, `30d` in rule files).
A `number:<ucum>` kind carries the unit rule thresholds must be written in.
"""

from __future__ import annotations

FACTS: dict[str, dict[str, str]] = {
    "patient": {"age": "number:a", "sex": "text", "birthdate_known": "bool"},
    "order": {
        "drug": "text", "route": "text", "draft": "bool", "new_course": "bool", "dose": "number:mg",
        "dose_per_kg": "number:mg/kg", "weight": "number:kg", "weight_known": "bool",
        "infusion_time": "duration", "readable": "bool", "dose_range": "text", "dose_problem": "text",
    },
    # A draft order in scope that could not be fully read (DQ-06); `checks` names the rules that could not run.
    "order-issue": {"drug": "text", "problem": "text", "checks": "text"},
    # A resource that is not the context patient's, set aside unused (DQ-05).
    "foreign-record": {"problem": "text"},
    # A proposed appointment of appointment-book not recognised as a protocol session (DQ-07).
    "unrecognised-session": {"problem": "text"},
    "measurement": {
        "measure": "text", "taken_ago": "duration", "value": "number:measure", "positive": "bool",
        "uln_ratio": "number", "unit": "text",
    },
    "unreadable": {"measure": "text", "taken_ago": "duration", "problem": "text", "partial": "bool",
                   "in_read_window": "bool"},
    "imprecise": {"rule": "text", "title": "text", "values": "text"},
    "future": {"measure": "text"},
    # `measure` and `taken_ago` when the record is an Observation of a measure with a readable time (MON-10).
    "data-issue": {"problem": "text", "measure": "text", "taken_ago": "duration"},
    "condition": {
        "valueset": "valueset", "active": "bool", "clinical_status": "text", "onset_ago": "duration",
        "code": "text",
    },
    "medication": {"valueset": "valueset", "status": "text"},
    "allergy": {"valueset": "valueset"},
    "course": {
        "drug": "text", "doses": "number", "phase": "text", "has_prior": "bool", "since_last": "duration",
        "new_course": "bool", "course_day": "number", "course_week": "number", "doses_7d": "number",
        "last_planned": "bool",  # the last dose is a proposed session booked in the same request (not given)
        "induction_complete": "bool", "last_post_dose_check": "bool", "until": "text",
    },
    "score": {
        "instrument": "text", "has_baseline": "bool", "has_current": "bool", "baseline": "number",
        "current": "number", "rise": "number", "change_pct": "number",
    },
}

# Fields renamed, with the fact types they were renamed in: the loader names the new field for the old one.
# A reading's `age` (hours since it was taken) was confused with the patient's `age` (years).
RENAMED: dict[str, tuple[str, tuple[str, ...]]] = {"age": ("taken_ago", ("measurement", "unreadable", "data-issue"))}

# Roughly how many facts of a type one request asserts (default 1). Used only to place rules in engine
# shards so that the numerous types are asserted into as few shards as possible.
VOLUME: dict[str, int] = {"measurement": 5, "condition": 3, "medication": 2, "unreadable": 2}

# Which FHIR resource types each fact type is computed from (drives the derived prefetch templates).
SOURCES: dict[str, tuple[str, ...]] = {
    "patient": ("Patient",),
    "order": ("MedicationRequest", "Observation", "MedicationAdministration"),
    "measurement": ("Observation",),
    "unreadable": ("Observation",),
    "future": ("Observation",),
    "data-issue": (),
    "imprecise": (),
    "order-issue": ("MedicationRequest",),
    "foreign-record": (),
    "unrecognised-session": (),
    "condition": ("Condition",),
    "medication": ("MedicationRequest", "MedicationStatement"),
    "allergy": ("AllergyIntolerance",),
    "course": ("MedicationAdministration", "Observation"),
    "score": ("Observation", "MedicationAdministration"),
}
