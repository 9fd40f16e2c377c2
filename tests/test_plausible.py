"""Implausible values are not used, and said (issue 20 probe; the project's rule: missing or uninterpretable data
gives a data-quality card, never a guess).

The probe posted its own order-sign with body weights of 0, -5, 0.00001 and 1e16 kg, a systolic of 0.0001 and a
weight sent as the JSON string "70": each was either silently dropped or believed. Here the probe's own request
(tests/data, times moved to now by test_engine_numbers' helper) and HL7's published R4 weight and blood-pressure
examples, rewritten to implausible values, must give the data-quality card quoting the value, the "could not check"
card of the rule that needed it (MON-06 for DOS-01's weight), and never a card computed from the value.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from test_engine_numbers import _probe_request

from protocol_engine.core import display

HL7 = Path(__file__).parent / "corpus" / "hl7-r4"
SIGN = "/cds-services/ketamine-order-sign"
WEIGHT_RANGE = "outside the plausible range 0.2-650 kg"


def _post(client: Any, body: str | dict[str, Any]) -> list[dict[str, Any]]:
    data = body if isinstance(body, str) else json.dumps(body)
    answer = client.post(SIGN, data=data, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    cards: list[dict[str, Any]] = answer.get_json()["cards"]
    return cards


def _by_rule(cards: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["extension"]["protocol-engine"]["rule"]: c for c in cards}


def _observations(request: dict[str, Any]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = request["prefetch"]["observations"]["entry"]
    return entries


def _resource(request: dict[str, Any], rid: str) -> dict[str, Any]:
    found: dict[str, Any] = next(e["resource"] for e in _observations(request) if e["resource"]["id"] == rid)
    return found


def _hl7(name: str, ago: dt.timedelta) -> dict[str, Any]:
    """An HL7 R4 example as published, moved to the probe's patient and to `ago` before now."""
    resource: dict[str, Any] = json.loads((HL7 / f"{name}.json").read_text())
    resource["subject"] = {"reference": "Patient/wz"}
    resource["effectiveDateTime"] = (dt.datetime.now(dt.UTC) - ago).replace(microsecond=0).isoformat()
    return resource


def _with(request: dict[str, Any], *resources: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(request))
    _observations(out).extend({"resource": r} for r in resources)
    return out


def _text(cards: list[dict[str, Any]]) -> str:
    return "\n".join(c["summary"] + "\n" + c.get("detail", "") for c in cards)


# -- the probe's own request -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("weight", "quoted"), [("0", "value 0 kg"), ("-5", "value -5 kg"),
                                                ("0.00001", "value 0.00001 kg"), ("1e16", "value 10000000000000000 kg")])
def test_an_implausible_weight_is_said_and_the_dose_check_says_it_could_not_run(client: Any, weight: str,
                                                                               quoted: str) -> None:
    cards = _post(client, _probe_request(weight))
    rules = _by_rule(cards)
    assert f"{quoted} is {WEIGHT_RANGE}" in rules["DQ-02"]["detail"]
    assert "Observation/wz-obs-2" in rules["DQ-02"]["detail"]
    assert "MON-06" in rules and "DOS-01" not in rules  # "cannot be checked per kg", as with no weight
    assert "weight 0 kg" not in _text(cards) and "4000000" not in _text(cards)


def test_a_weight_sent_as_a_json_string_is_not_believed(client: Any) -> None:
    cards = _post(client, _probe_request('"70"'))
    rules = _by_rule(cards)
    detail = rules["DQ-02"]["detail"]
    assert "value sent as the JSON string '70'; FHIR JSON requires a number" in detail
    assert "Observation/wz-obs-2" in detail  # the newest; the older one is not used either (as for any unit)
    assert "MON-06" in rules and "DOS-01" not in rules


def test_a_plausible_weight_is_used(client: Any) -> None:
    rules = _by_rule(_post(client, _probe_request("30")))
    assert "(weight 30 kg)" in rules["DOS-01"]["summary"]
    assert "DQ-02" not in rules and "MON-06" not in rules


def test_a_small_plausible_weight_is_never_shown_as_0_kg(client: Any) -> None:
    rules = _by_rule(_post(client, _probe_request("0.25")))  # a newborn's weight: inside the range
    assert "160 mg/kg (weight 0.25 kg)" in rules["DOS-01"]["summary"]


@pytest.mark.parametrize("value", [0.00001, -0.00001, 0.0049, 0.004, 1e-9, 1e-15, 5e-324])
def test_a_non_zero_number_is_never_written_as_zero(value: float) -> None:
    text = display.number(value)
    assert text not in ("0", "-0") and float(text) != 0
    assert float(text) == pytest.approx(value, rel=0.1)


@pytest.mark.parametrize("systolic", ["0.0001", "0"])
def test_an_implausible_systolic_is_said(client: Any, systolic: str) -> None:
    request = json.loads(_probe_request("70"))
    _resource(request, "wz-obs-0")["component"][0]["valueQuantity"]["value"] = float(systolic)
    rules = _by_rule(_post(client, request))
    assert f"systolic: value {systolic} mmHg is outside the plausible range 20-300 mmHg" in rules["MON-02"]["detail"]
    assert "CI-05" not in rules


def test_a_systolic_sent_as_a_json_string_is_not_believed(client: Any) -> None:
    request = json.loads(_probe_request("70"))
    _resource(request, "wz-obs-0")["component"][0]["valueQuantity"]["value"] = "190"
    rules = _by_rule(_post(client, request))
    assert "systolic: value sent as the JSON string '190'" in rules["MON-02"]["detail"]
    assert "CI-05" not in rules and "CI-06" not in rules  # "190" was not read as 190


# -- HL7's R4 examples, rewritten ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("pounds", "quoted"), [(0, "value 0 lb"), (2000, "value 2000 lb")])
def test_hl7_weight_example_rewritten_to_an_implausible_value(client: Any, pounds: float, quoted: str) -> None:
    """HL7's body weight (185 lb, [lb_av]) at 0 or 2000 lb (907 kg): not used; the probe's older 70 kg governs
    instead, as it would for an unreadable unit."""
    weight = _hl7("observation-example", dt.timedelta(minutes=10))
    weight["valueQuantity"]["value"] = pounds
    rules = _by_rule(_post(client, _with(json.loads(_probe_request("70")), weight)))
    assert f"{quoted} is {WEIGHT_RANGE}" in rules["DQ-02"]["detail"]
    assert "Observation/example" in rules["DQ-02"]["detail"]
    assert "MON-06" not in rules  # the older, plausible weight governs


def test_hl7_weight_example_as_published_is_used(client: Any) -> None:
    weight = _hl7("observation-example", dt.timedelta(minutes=10))  # 185 lb = 83.9 kg
    request = _with(json.loads(_probe_request("0")), weight)
    request["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0]["doseAndRate"][0][
        "doseQuantity"]["value"] = 100  # 1.19 mg/kg of HL7's weight
    rules = _by_rule(_post(client, request))
    assert "(weight 83.9 kg)" in rules["DOS-01"]["summary"] and "MON-06" not in rules
    assert "DQ-02" not in rules  # the probe's 0 kg weights are older than HL7's: not the governing reading


@pytest.mark.parametrize(("systolic", "diastolic", "problem"), [
    (0, 60, "systolic: value 0 mmHg is outside the plausible range 20-300 mmHg"),
    (400, 60, "systolic: value 400 mmHg is outside the plausible range 20-300 mmHg"),
    (107, 250, "diastolic: value 250 mmHg is outside the plausible range 10-200 mmHg"),
])
def test_hl7_bp_example_rewritten_to_an_implausible_value(client: Any, systolic: float, diastolic: float,
                                                          problem: str) -> None:
    bp = _hl7("observation-example-bloodpressure", dt.timedelta(minutes=10))
    bp["component"][0]["valueQuantity"]["value"] = systolic
    bp["component"][1]["valueQuantity"]["value"] = diastolic
    rules = _by_rule(_post(client, _with(json.loads(_probe_request("70")), bp)))
    assert problem in rules["MON-02"]["detail"] and "Observation/blood-pressure" in rules["MON-02"]["detail"]
    assert "CI-05" not in rules  # 400 or 250 is not read as severe hypertension


def test_hl7_bp_example_as_published_is_used(client: Any) -> None:
    bp = _hl7("observation-example-bloodpressure", dt.timedelta(minutes=10))  # 107/60
    rules = _by_rule(_post(client, _with(json.loads(_probe_request("70")), bp)))
    assert "MON-02" not in rules and "MON-01" not in rules


# -- metamorphic: an implausible older reading changes nothing -----------------------------------------------------
def _signature(cards: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return sorted((c["extension"]["protocol-engine"]["rule"], c["indicator"], c["summary"], c.get("detail", ""))
                  for c in cards)


@pytest.mark.parametrize("weight", ["30", "70"])
def test_an_older_implausible_weight_changes_no_card(client: Any, weight: str) -> None:
    base = json.loads(_probe_request(weight))
    older = _hl7("observation-example", dt.timedelta(days=5))  # older than the probe's weights, inside 30 days
    older["valueQuantity"]["value"] = 5000  # lb
    zero = _hl7("observation-example", dt.timedelta(days=6))
    zero["id"], zero["valueQuantity"] = "zero", {"value": 0, "unit": "kg", "system": "http://unitsofmeasure.org",
                                                 "code": "kg"}
    assert _signature(_post(client, base)) == _signature(_post(client, _with(base, older, zero)))


def test_an_older_implausible_bp_changes_no_card(client: Any) -> None:
    base = json.loads(_probe_request("70"))
    older = _hl7("observation-example-bloodpressure", dt.timedelta(hours=20))  # older than the probe's 14 h one
    older["component"][0]["valueQuantity"]["value"] = 0
    older["component"][1]["valueQuantity"]["value"] = 0
    assert _signature(_post(client, base)) == _signature(_post(client, _with(base, older)))


# -- the pack declares every range ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("old", "new", "message"), [
    ("    plausible: [0.2, 650]\n", "", "measures.weight needs 'plausible'"),
    ("    plausible: [0.2, 650]\n", "    plausible: [650, 0.2]\n", "measures.weight.plausible is [low, high]"),
    ("    plausible: {systolic: [20, 300], diastolic: [10, 200]}\n", "    plausible: [10, 300]\n",
     "measures.blood-pressure.plausible gives each half its [low, high]: systolic, diastolic"),
])
def test_a_missing_or_malformed_range_is_a_positioned_load_error(tmp_path: Path, old: str, new: str,
                                                                 message: str) -> None:
    from test_protocol_shape import errors, pack_with

    found = errors(pack_with(tmp_path, old, new) / "protocol.yaml")
    assert len(found) == 1 and message in found[0], found
