"""authoring/testing.py, the rule-case runner: how a case's expectations are compared with the cards."""

from __future__ import annotations

import pytest

from protocol_engine.authoring.testing import card_matches


@pytest.mark.parametrize(("summary", "problems"), [
    ("Re-check BP about 40 minutes after the dose", 0),
    ("Previous session lacked a post-dose BP: re-check BP about 40 minutes after the dose", 1),
    ("Weigh the patient", 1),
])
def test_excludes_tells_two_wordings_apart(summary: str, problems: int) -> None:
    """MON-08's two summaries share 'e-check BP': only `excludes` says which one a case expects."""
    want = {"summary": {"contains": "e-check BP", "excludes": "Previous session lacked"}}
    assert len(card_matches({"summary": summary}, want)) == problems


def test_contains_alone_and_exact_fields_are_compared_as_before() -> None:
    card = {"summary": "Blood pressure 190/110 mmHg", "indicator": "critical",
            "extension": {"protocol-engine": {"rule": "CI-05", "evidence": ["Observation/bp-1"]}}}
    assert card_matches(card, {"rule": "CI-05", "indicator": "critical", "summary": {"contains": "190/110"},
                               "evidence": ["Observation/bp-1"]}) == []
    assert card_matches(card, {"indicator": "warning"}) == ["indicator: expected 'warning', got 'critical'"]
    assert card_matches(card, {"evidence": ["Observation/bp-2"]}) == [
        "evidence lacks ['Observation/bp-2'] (has ['Observation/bp-1'])"]
