"""core/cards.py on its own: one finding -> one CDS Hooks card (fields, escaping, links, the template fallback, times
in the zone given) and render_all's order and shadow rules.

The findings are built by hand (`hand_rule`, `hand_finding`: a Rule with its card template and the facts it matched),
so a derive or engine bug cannot fail these tests; one end-to-end test renders CI-05's finding from a shorthand chart
run through the whole pipeline, to show the two agree."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from conftest import ADULT, KETAMINE_ORDER, bp, request_for

from protocol_engine.core import cards, display
from protocol_engine.core.model import CardTemplate, Citation, Finding, Rule
from protocol_engine.hooks.pipeline import run

NOW = dt.datetime(2026, 11, 21, 10, tzinfo=dt.UTC)
SIGN = "ketamine-order-sign"


KETALAR = Citation("KETALAR label", "https://dailymed.nlm.nih.gov/ketalar", ("ketamine",))
SPRAVATO = Citation("SPRAVATO label", "https://dailymed.nlm.nih.gov/spravato", ("esketamine",))
SPRAVATO_REMS = Citation("SPRAVATO REMS", "https://www.spravatorems.com", ("esketamine",))


def hand_rule(**changes: Any) -> Rule:
    """A rule as the pack loader would give it, written out: only what cards.render reads."""
    card = CardTemplate(
        indicator="critical",
        summary="BP {{ bp | bp }} {{ bp.at | time }}: hold {{ order.drug }} (limit {{ systolic_max | qty }})",
        detail="Blood pressure above {{ systolic_max }} before dosing.",
        override_reasons=(("benefit-outweighs-risk", "Benefit outweighs risk"),),
        suggestions=())
    rule = Rule(id="ZZ-01", version="1.0.0", status="active", category="contraindication",
                title="Severe hypertension before dosing", hooks=("order-sign",), drugs=("ketamine",),
                when_text="BP above the limit", then_text="Hold the dose.", settings={"systolic_max": 180},
                conjuncts=(), card=card, citation=KETALAR, suppressed_by=(), path="ZZ-01.rule.yaml",
                citations=(KETALAR, SPRAVATO, SPRAVATO_REMS), setting_units={"systolic_max": "mm[Hg]"},
                display_units={"mm[Hg]": "mmHg"})
    return dataclasses.replace(rule, **changes)


def hand_finding(rule: Rule | None = None, describe: str = "BP 190/110 mmHg, Observation/bp-1") -> Finding:
    bp_fact = {"t": "measurement", "measure": "bp", "systolic": 190, "diastolic": 110, "unit": "mm[Hg]",
               "at": "2026-11-21T09:30:00+00:00", "refs": ["Observation/bp-1"], "describe": describe}
    order = {"t": "order", "drug": "ketamine", "route": "iv", "refs": ["MedicationRequest/draft-1"],
             "describe": "Draft order: ketamine 35 mg IV, MedicationRequest/draft-1"}
    return Finding(rule or hand_rule(), ({"bp": bp_fact, "order": order, "_scope": order},))


def test_a_hand_built_finding_renders_every_field_of_its_card() -> None:
    f = hand_finding()
    card = cards.render(f, "rev-1", "p1", now=NOW)
    assert card["summary"] == "BP 190/110 mmHg today 09:30 UTC: hold ketamine (limit 180 mmHg)"
    assert card["detail"].startswith("Blood pressure above 180 before dosing.\n\n**Evidence**\n\n"
                                     "- BP 190/110 mmHg, Observation/bp-1\n- Draft order: ketamine 35 mg IV")
    assert card["detail"].endswith("_Rule ZZ-01 v1.0.0 (Severe hypertension before dosing)._")
    assert card["indicator"] == "critical"
    assert card["source"] == {"label": "KETALAR label", "url": "https://dailymed.nlm.nih.gov/ketalar",
                              "topic": {"system": cards.TOPIC_SYSTEM, "code": "contraindication",
                                        "display": "contraindication"}}
    assert card["overrideReasons"] == [{"system": cards.OVERRIDE_SYSTEM, "code": "benefit-outweighs-risk",
                                        "display": "Benefit outweighs risk"}]
    assert card["extension"] == {"protocol-engine": {
        "rule": "ZZ-01", "ruleVersion": "1.0.0", "category": "contraindication",
        "evidence": ["Observation/bp-1", "MedicationRequest/draft-1"], "ruleset": "rev-1"}}
    # Further sources: the other drug's label stays as reading, its REMS (binding that product only) does not.
    assert "[SPRAVATO label](https://dailymed.nlm.nih.gov/spravato)" in card["detail"]
    assert "REMS" not in card["detail"]


def test_times_on_a_card_are_in_the_zone_and_against_the_now_given() -> None:
    """The zone and `now` are arguments (core reads no environment): the same finding, two zones, two days."""
    f = hand_finding()
    zurich = display.zone_named("Europe/Zurich")
    assert "BP 190/110 mmHg today 10:30 UTC+01:00:" in cards.render(f, "r", None, now=NOW, zone=zurich)["summary"]
    tomorrow = NOW + dt.timedelta(days=1)
    assert "yesterday 09:30 UTC:" in cards.render(f, "r", None, now=tomorrow)["summary"]
    assert "21 Nov 2026 09:30 UTC:" in cards.render(f, "r", None)["summary"]  # no now: no day word


def test_an_esketamine_card_leads_with_its_own_label_and_keeps_its_rems() -> None:
    order = {"t": "order", "drug": "esketamine", "route": "nasal", "refs": ["MedicationRequest/d2"]}
    f = Finding(hand_rule(), ({"order": order, "_scope": order},))
    card = cards.render(f, "r", None, now=NOW)
    assert card["source"]["label"] == "SPRAVATO label"
    assert "[SPRAVATO REMS](https://www.spravatorems.com)" in card["detail"]


def finding(loaded: Any, rule_id: str = "CI-05") -> Finding:
    """The end-to-end finding: CI-05's, from a shorthand chart run through prepare, gather and evaluate."""
    body = request_for(loaded, SIGN, {"patient": ADULT, "order": KETAMINE_ORDER, "given": [bp(190, 110, id="bp-1")]},
                       NOW)
    return next(f for f in run(loaded.runtimes, "rev-1", SIGN, body, NOW).findings if f.rule.id == rule_id)


def test_a_finding_renders_to_a_card_that_names_its_rule_evidence_source_and_revision(loaded: Any) -> None:
    f = finding(loaded)
    card = cards.render(f, "rev-1", "test-patient", now=NOW)
    assert card["indicator"] == "critical" and "190/110" in card["summary"]
    ext = card["extension"]["protocol-engine"]
    assert ext == {"rule": "CI-05", "ruleVersion": f.rule.version, "category": f.rule.category,
                   "evidence": f.evidence, "ruleset": "rev-1"}
    assert "Observation/bp-1" in f.evidence
    lead = f.rule.sources_for(cards.card_drug(f))[0]
    assert card["source"]["label"] == lead.label and card["source"].get("url") == lead.url
    assert card["detail"].endswith(f"_Rule CI-05 v{f.rule.version} ({f.rule.title})._")
    assert "**Evidence**" in card["detail"]
    if f.rule.card.override_reasons:  # a critical card offers the rule's override reasons
        assert [r["code"] for r in card["overrideReasons"]] == [c for c, _ in f.rule.card.override_reasons]
    assert cards.render(f, "rev-1", "test-patient", now=NOW)["uuid"] != card["uuid"]  # fresh per rendering


def test_chart_text_is_escaped_in_the_evidence_and_the_template() -> None:
    f = hand_finding()
    hostile = "<script>alert(1)</script> BP [x](javascript:alert(1))"
    matches = tuple({name: ({**fact, "describe": hostile} if isinstance(fact, dict) and "describe" in fact else fact)
                     for name, fact in m.items()} for m in f.matches)
    card = cards.render(dataclasses.replace(f, matches=matches), "rev-1", "test-patient", now=NOW)
    assert "<script" not in card["detail"] and "&lt;script&gt;alert(1)&lt;/script&gt; BP" in card["detail"]
    name = next(n for n, fact in f.matches[0].items() if not n.startswith("_") and "describe" in fact)
    rule = dataclasses.replace(f.rule, card=dataclasses.replace(f.rule.card, summary=f"{{{{ {name}.describe }}}}"))
    shown = cards.render(Finding(rule, matches, f.held), "rev-1", None, now=NOW)["summary"]
    assert shown.startswith("&lt;script&gt;alert(1)&lt;/script&gt;")  # the template sees the escaped text too


def test_a_source_link_escapes_its_label_and_keeps_its_url() -> None:
    assert cards._link(Citation("KETALAR label [2023] <b>", "https://example.org/k?a=1")) == (
        "[KETALAR label \\[2023\\] &lt;b&gt;](https://example.org/k?a=1)")
    assert cards._link(Citation("A textbook, p. 12", None)) == "A textbook, p. 12"


def test_a_long_summary_is_cut_at_the_limit_and_a_failing_template_falls_back_to_the_plain_words() -> None:
    f = hand_finding()
    long = dataclasses.replace(f.rule, card=dataclasses.replace(f.rule.card, summary="word " * 60))
    summary = cards.render(Finding(long, f.matches, f.held), "r", None, now=NOW)["summary"]
    assert len(summary) == cards.SUMMARY_MAX and summary.endswith("…")
    broken = dataclasses.replace(f.rule, card=dataclasses.replace(f.rule.card, summary="{{ nothing.here.at_all }}"))
    card = cards.render(Finding(broken, f.matches, f.held), "r", None, now=NOW)
    assert card["summary"] == broken.title and card["detail"].startswith(broken.then_text)


def test_render_all_puts_critical_first_and_gives_a_shadow_rule_no_card() -> None:
    f = hand_finding()
    info = dataclasses.replace(f.rule, id="ZZ-INFO", card=dataclasses.replace(f.rule.card, indicator="info"))
    draft = dataclasses.replace(f.rule, id="ZZ-DRAFT", status="draft")
    later = dataclasses.replace(f.rule, id="ZZ-LATER", effective=NOW + dt.timedelta(days=1))
    findings = [Finding(r, f.matches, f.held) for r in (info, draft, later)] + [f]
    issued = cards.render_all(findings, "r", None, now=NOW)
    assert [c.rule.id for c in issued] == ["ZZ-01", "ZZ-INFO"]
    assert all(c.findings and c.findings[0].rule is c.rule for c in issued)
