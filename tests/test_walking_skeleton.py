"""The acceptance path of the walking skeleton, through Flask's test client."""

from __future__ import annotations

from typing import Any

from conftest import ADULT, KETAMINE_ORDER, bp, request_for

SIGN = "/cds-services/ketamine-order-sign"


def _sign(client: Any, loaded: Any, given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER, "given": given})
    response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return list(response.json["cards"])


def _rules(cards: list[dict[str, Any]]) -> list[str]:
    return [c["extension"]["protocol-engine"]["rule"] for c in cards]


def test_severe_bp_gives_one_critical_ci05_card_citing_the_observation(client: Any, loaded: Any) -> None:
    cards = _sign(client, loaded, [bp(172, 104, id="bp-1")])
    ci05 = [c for c in cards if _rules([c]) == ["CI-05"]]
    assert len(ci05) == 1
    card = ci05[0]
    assert card["indicator"] == "critical"
    assert "172/104 mmHg" in card["summary"] and len(card["summary"]) <= 139
    assert "Observation/bp-1" in card["detail"]
    ext = card["extension"]["protocol-engine"]
    assert ext["evidence"] == ["Observation/bp-1"]
    assert ext["ruleVersion"] and ext["category"] == "contraindication" and ext["ruleset"]
    assert card["source"]["label"] and card["source"]["url"].startswith("https://")
    assert all(r["display"] for r in card["overrideReasons"])
    assert card["selectionBehavior"] == "at-most-one"
    assert "CI-06" not in _rules(cards) and "MON-01" not in _rules(cards)


def test_elevated_bp_gives_one_ci06_warning(client: Any, loaded: Any) -> None:
    cards = _sign(client, loaded, [bp(152, 94)])
    assert [c["indicator"] for c in cards if _rules([c]) == ["CI-06"]] == ["warning"]
    assert "CI-05" not in _rules(cards)


def test_exactly_140_over_90_gives_no_bp_card(client: Any, loaded: Any) -> None:
    cards = _sign(client, loaded, [bp(140, 90)])
    assert not {"CI-05", "CI-06", "MON-01", "MON-02"} & set(_rules(cards))


def test_no_bp_in_24h_gives_mon01(client: Any, loaded: Any) -> None:
    cards = _sign(client, loaded, [bp(120, 80, at="-26h")])
    assert "MON-01" in _rules(cards)
    mon = next(c for c in cards if _rules([c]) == ["MON-01"])
    assert mon["extension"]["protocol-engine"]["evidence"] == ["MedicationRequest/draft-0"]


def test_cards_carry_unique_uuids(client: Any, loaded: Any) -> None:
    cards = _sign(client, loaded, [bp(190, 110)]) + _sign(client, loaded, [bp(190, 110)])
    uuids = [c["uuid"] for c in cards] + [s["uuid"] for c in cards for s in c.get("suggestions", [])]
    assert len(uuids) == len(set(uuids))


def test_discovery_lists_services_with_derived_prefetch(client: Any) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = {s["id"]: s for s in response.json["services"]}
    sign = services["ketamine-order-sign"]
    assert sign["hook"] == "order-sign"
    assert sign["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert "http://loinc.org|8480-6" in sign["prefetch"]["observations"]


def test_bad_input_gets_operation_outcomes(client: Any, loaded: Any) -> None:
    good = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER})
    cases = [
        (client.post(SIGN, data="{not json", content_type="application/json"), 400),
        (client.post(SIGN, json=[1, 2]), 400),
        (client.post(SIGN, json={k: v for k, v in good.items() if k != "hook"}), 400),
        (client.post(SIGN, json={k: v for k, v in good.items() if k != "hookInstance"}), 400),
        (client.post(SIGN, json={k: v for k, v in good.items() if k != "context"}), 400),
        (client.post(SIGN, json={**good, "hook": "patient-view"}), 400),
        (client.post("/cds-services/no-such-service", json=good), 404),
        (client.post(SIGN, data="hook=order-sign", content_type="text/plain"), 415),
        (client.get(SIGN), 405),
    ]
    for response, status in cases:
        assert response.status_code == status, response.get_data(as_text=True)
        body = response.json
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["diagnostics"]
        assert "Traceback" not in response.get_data(as_text=True)
