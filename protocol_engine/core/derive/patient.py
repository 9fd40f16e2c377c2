"""The `patient` fact: age in whole years (G13, a range when only a year or month of birth is known) and sex."""

from __future__ import annotations

import datetime as dt

from ..durations import whole_years
from ..model import Fact
from ..records import Chart


def patient_fact(chart: Chart, now: dt.datetime) -> Fact | None:
    p = chart.patient
    if p is None:
        # No Patient (prefetch `patient: null`, or not this patient's): the age rules cannot run, and DQ-03
        # says so rather than leaving them silently out.
        return {"t": "patient", "refs": [], "birthdate_known": False, "sex": "unknown",
                "describe": "No Patient record for the patient in context was supplied"}
    fact: Fact = {"t": "patient", "refs": [p.ref], "birthdate_known": p.birth_date is not None,
                  "sex": p.gender or "unknown"}
    if p.birth_date is not None:
        today = now.date()
        oldest = whole_years(p.birth_date, today)  # G13
        youngest = whole_years(p.birth_latest or p.birth_date, today)
        fact["age"] = youngest
        if youngest != oldest:
            fact["ranges"] = {"age": [youngest, oldest]}
            fact["describe"] = (f"Patient aged {youngest}-{oldest} years (birth date {p.birth_text}, "
                                f"{p.ref})")
        else:
            fact["describe"] = f"Patient aged {youngest} years ({p.ref})"
    else:
        fact["describe"] = f"Patient record has no birth date ({p.ref})"
    return fact
