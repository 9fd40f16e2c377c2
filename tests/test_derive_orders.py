"""core/derive/orders.py: draft orders -> `order` facts (drug, route, mg and mg/kg, the dose as written) and
`order-issue` facts for what cannot be read.

HL7's published MedicationRequest example (medrx0301: oxycodone tablets, doseRange 1-2 TAB, oral) is read as is,
and with its contained Medication coded as ketamine (the one change), to see how an order in tablets is reported.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hl7_examples import NOW, chart_of, deriver, example

from protocol_engine.core.derive.course import Course
from protocol_engine.core.derive.readings import Reading
from protocol_engine.core.records import Chart, Concept, MedicationRecord, Quantity
from protocol_engine.core.valuesets import SYSTEMS

KETAMINE = Concept(((SYSTEMS["RXNORM"], "6130", "ketamine"),))
IV = Concept(((SYSTEMS["ROUTE"], "IV", "Intravenous"),))


def as_draft(resource: dict[str, Any]) -> Chart:
    """HL7's MedicationRequest as the draft order of an order-sign call."""
    chart = chart_of(resource)
    [order] = chart.medications
    chart.medications = []
    chart.draft_orders = [(order, True)]
    return chart


def order_facts(loaded: Any, chart: Chart, weight_kg: float | None = None) -> list[dict[str, Any]]:
    d = deriver(loaded)
    governing: dict[str, Reading] = {}
    if weight_kg is not None:
        governing["weight"] = Reading("weight", NOW - dt.timedelta(days=1), ["Observation/w"], {"value": weight_kg})
    course = Course.of(d.p.course, [], NOW)
    out: list[dict[str, Any]] = d.orders.facts(chart, "order-sign", governing, course, NOW)
    return out


def test_hl7_oxycodone_order_is_out_of_scope(loaded: Any) -> None:
    chart = as_draft(example("medicationrequest0301"))
    assert deriver(loaded).orders.in_scope(chart) is False
    assert order_facts(loaded, chart) == []


def test_hl7_order_in_tablets_reads_its_route_and_reports_the_dose_it_cannot_read(loaded: Any) -> None:
    resource = example("medicationrequest0301")
    resource["contained"][0]["code"] = {"coding": [{"system": SYSTEMS["RXNORM"], "code": "6130",
                                                    "display": "ketamine"}]}
    chart = as_draft(resource)
    assert deriver(loaded).orders.in_scope(chart) is True
    order, issue = order_facts(loaded, chart)
    assert (order["t"], order["drug"], order["route"]) == ("order", "ketamine", "oral")
    assert order["dose_range"] == "1-2 TAB" and order["dose_problem"] == "dose unit 'TAB' cannot be read"
    assert "dose" not in order and "dose_per_kg" not in order
    assert issue["t"] == "order-issue" and issue["unread"] == ["dose"]
    assert issue["problem"] == "the dose could not be read (dose unit 'TAB' cannot be read)"


def draft(dose: Quantity, **more: Any) -> Chart:
    return Chart(draft_orders=[(MedicationRecord("MedicationRequest/k", "request", KETAMINE, "draft", IV, dose,
                                                 **more), True)])


def test_a_per_kg_dose_uses_the_governing_weight(loaded: Any) -> None:
    """0.5 mg/kg for HL7's 185 lb patient (83.91 kg): the mg dose is computed, both are facts."""
    [order] = order_facts(loaded, draft(Quantity(0.5, "mg/kg"), duration_h=40 / 60), weight_kg=83.915)
    assert order["dose_per_kg"] == 0.5 and order["dose"] == 41.958 and order["weight"] == 83.915
    assert order["infusion_time"] == 0.6667 and order["weight_known"] is True


def test_a_volume_dose_reads_through_the_products_concentration(loaded: Any) -> None:
    [order] = order_facts(loaded, draft(Quantity(2, "mL"), concentration=Quantity(50, "mg/mL")))
    assert order["dose"] == 100 and order["weight_known"] is False and "dose_problem" not in order
