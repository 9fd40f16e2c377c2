"""Issue 16, second probe (a new user's real-EHR shapes): the probe's own payloads (tests/data/probe16b, written by
the probe's harness, not by this project), evaluated at the probe's time, plus metamorphic rewrites.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from protocol_engine.hooks.pipeline import run

DATA = Path(__file__).resolve().parent / "data" / "probe16b"
PROBE_NOW = dt.datetime(2026, 11, 30, 13, 0, tzinfo=dt.UTC)  # the payloads were written at 12:57 UTC


def payload(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return body


def cards(loaded: Any, body: dict[str, Any], now: dt.datetime = PROBE_NOW) -> dict[str, dict[str, Any]]:
    out = run(loaded.runtimes, "r", f"ketamine-{body['hook']}", copy.deepcopy(body), now)
    return {c["extension"]["protocol-engine"]["rule"]: c for c in out.cards}


def text(card: dict[str, Any]) -> str:
    return f"{card['summary']}\n{card.get('detail', '')}"


def _admin(body: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = body["prefetch"]["medicationAdministrations"]["entry"][0]["resource"]
    return resource


# -- 1. a dose recorded as a date only is the whole day, not midnight --------------------------------------
def test_a_date_only_dose_yesterday_leaves_the_duplicate_check_undecided(loaded: Any) -> None:
    got = cards(loaded, payload("J8b-admin-dateonly-yesterday"))  # "2026-11-29": 13 h to 37 h before 13:00
    assert "TIM-02" not in got  # under 20 h only if given after 17:00
    assert "Probable duplicate dose" in got["DQ-04"]["detail"] and "MedicationAdministration/ma1" in got["DQ-04"]["detail"]
    assert "TIM-01" in got  # under 48 h at both ends of the day
    for card in got.values():
        assert "00:00" not in text(card), text(card)
    assert "yesterday" in text(got["TIM-01"])


def test_a_date_only_dose_today_is_a_probable_duplicate_at_both_ends(loaded: Any) -> None:
    got = cards(loaded, payload("J5-admin-dateonly-today"))
    assert "TIM-02" in got and "DQ-04" not in got
    assert "00:00" not in text(got["TIM-02"]) and "today" in text(got["TIM-02"])


def test_a_full_time_dose_is_decided_as_before(loaded: Any) -> None:
    got = cards(loaded, payload("J9-admin-yesterday-2000Z"))
    assert "TIM-02" in got and "DQ-04" not in got


@pytest.mark.parametrize("rewrite", ["period-start", "period-end"])
def test_a_date_only_period_reads_as_the_same_day(loaded: Any, rewrite: str) -> None:
    body = payload("J8b-admin-dateonly-yesterday")
    admin = _admin(body)
    day = admin.pop("effectiveDateTime")
    admin["effectivePeriod"] = {"start": day} if rewrite == "period-start" else {"end": day}
    assert sorted(cards(loaded, body)) == sorted(cards(loaded, payload("J8b-admin-dateonly-yesterday")))


def test_late_in_the_day_after_the_date_only_dose_no_end_is_under_20h(loaded: Any) -> None:
    got = cards(loaded, payload("J8b-admin-dateonly-yesterday"), PROBE_NOW.replace(hour=22))  # 22 h to 46 h
    assert "TIM-02" not in got and "DQ-04" not in got and "TIM-01" in got


def test_a_date_only_dose_is_segmented_into_the_course_at_both_ends(loaded: Any) -> None:
    """Two earlier timed doses of the course and a date-only one yesterday: still one course, dose 3."""
    body = payload("J8b-admin-dateonly-yesterday")
    entries = body["prefetch"]["medicationAdministrations"]["entry"]
    for i, day in enumerate(("2026-11-23T09:00:00Z", "2026-11-26T09:00:00Z")):
        earlier = copy.deepcopy(entries[0]["resource"])
        earlier["id"], earlier["effectiveDateTime"] = f"ma-early{i}", day
        entries.append({"resource": earlier})
    got = cards(loaded, body)
    assert "dose 3 of the course" in text(got["TIM-01"]) and "13-37 h ago" in got["TIM-01"]["summary"]


# -- 2. a reading set aside for its status is said, with its value ------------------------------------------
@pytest.mark.parametrize(("name", "status"), [("B11-prelim-severe", "preliminary"),
                                              ("B11b-prelim-severe-nobp", "preliminary"),
                                              ("B12-registered-severe-nobp", "registered")])
def test_a_severe_reading_set_aside_for_its_status_gets_a_data_quality_card(loaded: Any, name: str,
                                                                            status: str) -> None:
    got = cards(loaded, payload(name))
    assert "CI-05" not in got  # G1: not used [D]
    assert f"Observation/bp2: BP 195/115 mmHg, today 12:26 UTC, status {status}, was not used" in got["DQ-02"]["detail"]
    assert ("MON-01" in got) == name.endswith("nobp")


def test_a_set_aside_reading_outside_every_read_window_stays_quiet(loaded: Any) -> None:
    got = cards(loaded, payload("B11-prelim-severe"), PROBE_NOW + dt.timedelta(days=400))
    assert "Observation/bp2" not in "".join(text(c) for c in got.values())


def test_entered_in_error_is_still_no_reading_at_all(loaded: Any) -> None:
    body = payload("B11-prelim-severe")  # metamorphic: the same reading, withdrawn
    for entry in body["prefetch"]["observations"]["entry"]:
        if entry["resource"]["id"] == "bp2":
            entry["resource"]["status"] = "entered-in-error"
    assert "Observation/bp2" not in "".join(text(c) for c in cards(loaded, body).values())


def test_a_preliminary_hcg_does_not_stand_in_for_a_pregnancy_test(loaded: Any) -> None:
    body = payload("B11-prelim-severe")
    body["prefetch"]["patient"]["gender"] = "female"
    before = cards(loaded, body)
    hcg = {"resourceType": "Observation", "id": "hcg1", "status": "preliminary",
           "code": {"coding": [{"system": "http://loinc.org", "code": "2106-3"}]},
           "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-11-30T10:00:00Z",
           "valueQuantity": {"value": 2, "unit": "mIU/mL", "system": "http://unitsofmeasure.org", "code": "m[IU]/mL"}}
    body["prefetch"]["observations"]["entry"].append({"resource": hcg})
    after = cards(loaded, body)
    assert ("MON-10" in before) == ("MON-10" in after)


# -- 5. a data-quality card on a severe reading quotes the value read -------------------------------------------
def test_a_reading_with_no_status_quotes_its_value(loaded: Any) -> None:
    got = cards(loaded, payload("B7b-nostatus-severe-nobp"))
    assert "Observation/bp2: no valid status (recorded value BP 195/115 mmHg)" in got["DQ-02"]["detail"]
    assert "CI-05" not in got and "MON-01" in got


def test_a_bp_written_as_a_string_is_quoted_not_guessed(loaded: Any) -> None:
    got = cards(loaded, payload("N5-bp-valuestring"))
    assert "'190/110'" in text(got["MON-02"]) and "CI-05" not in got


# -- 6. a dose as written is shown as written ----------------------------------------------------------------------
def test_a_dose_per_kg_is_shown_with_its_second_decimal(loaded: Any) -> None:
    got = cards(loaded, payload("G12-dose-mgkg"))
    assert "1.25 mg/kg" in text(got["DOS-01"]) and "1.2 mg/kg" not in text(got["DOS-01"])


# -- 3. a Condition with no code is named, not matched by its text, and its text is not copied -------------------
def test_a_text_only_condition_is_reported_by_id_not_by_text(loaded: Any) -> None:
    body = payload("K8-schizo-text-only")
    out = run(loaded.runtimes, "r", "ketamine-order-sign", copy.deepcopy(body), PROBE_NOW)
    got = {c["extension"]["protocol-engine"]["rule"]: c for c in out.cards}
    assert "Condition/c1: the Condition has no code" in got["DQ-02"]["detail"]
    assert "CI-10" not in got and "CI-11" not in got  # diagnoses are matched by code only
    assert "Schizophrenia" not in json.dumps(out.facts) and "Schizophrenia" not in json.dumps(out.cards)


@pytest.mark.parametrize("rewrite", ["no-code-element", "coding-without-code"])
def test_a_condition_without_any_code_is_reported_however_it_is_written(loaded: Any, rewrite: str) -> None:
    body = payload("K8-schizo-text-only")
    condition = body["prefetch"]["conditions"]["entry"][0]["resource"]
    if rewrite == "no-code-element":
        condition.pop("code")
    else:
        condition["code"]["coding"] = [{"system": "http://snomed.info/sct", "display": "Schizophrenia"}]
    assert "Condition/c1" in cards(loaded, body)["DQ-02"]["detail"]


def test_a_resolved_or_refuted_text_only_condition_stays_quiet(loaded: Any) -> None:
    body = payload("K8-schizo-text-only")
    condition = body["prefetch"]["conditions"]["entry"][0]["resource"]
    condition["clinicalStatus"]["coding"][0]["code"] = "resolved"
    assert "DQ-02" not in cards(loaded, body)


# -- 4. patient-view with no protocol course still reports another patient's records -----------------------------
@pytest.mark.parametrize(("name", "ref"), [("M3-pv-other-course", "MedicationRequest/k"),
                                           ("M6-pv-nocourse-other-bp", "Observation/bpX")])
def test_patient_view_without_a_course_names_records_set_aside(loaded: Any, name: str, ref: str) -> None:
    got = cards(loaded, payload(name))
    assert sorted(got) == ["DQ-05"] and ref in got["DQ-05"]["detail"]


@pytest.mark.parametrize("name", ["B11b-prelim-severe-nobp", "B12-registered-severe-nobp"])
def test_no_interpretable_bp_names_the_readings_set_aside(loaded: Any, name: str) -> None:
    detail = cards(loaded, payload(name))["MON-01"]["detail"]
    assert "Not used for their status: Observation/bp2: BP 195/115 mmHg" in detail
