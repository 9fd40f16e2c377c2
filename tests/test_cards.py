"""core/cards.py on its own: one finding -> one CDS Hooks card (fields, escaping, links, the template fallback) and
render_all's order and shadow rules. The finding is CI-05's on a small shorthand chart, then edited by hand."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from conftest import ADULT, KETAMINE_ORDER, bp, request_for

from protocol_engine.core import cards
from protocol_engine.core.model import Citation, Finding
from protocol_engine.hooks.pipeline import run

NOW = dt.datetime(2026, 11, 21, 10, tzinfo=dt.UTC)
SIGN = "ketamine-order-sign"


def finding(loaded: Any, rule_id: str = "CI-05") -> Finding:
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


def test_chart_text_is_escaped_in_the_evidence_and_the_template(loaded: Any) -> None:
    f = finding(loaded)
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


def test_a_long_summary_is_cut_at_the_limit_and_a_failing_template_falls_back_to_the_plain_words(
        loaded: Any) -> None:
    f = finding(loaded)
    long = dataclasses.replace(f.rule, card=dataclasses.replace(f.rule.card, summary="word " * 60))
    summary = cards.render(Finding(long, f.matches, f.held), "r", None, now=NOW)["summary"]
    assert len(summary) == cards.SUMMARY_MAX and summary.endswith("…")
    broken = dataclasses.replace(f.rule, card=dataclasses.replace(f.rule.card, summary="{{ nothing.here.at_all }}"))
    card = cards.render(Finding(broken, f.matches, f.held), "r", None, now=NOW)
    assert card["summary"] == broken.title and card["detail"].startswith(broken.then_text)


def test_render_all_puts_critical_first_and_gives_a_shadow_rule_no_card(loaded: Any) -> None:
    f = finding(loaded)
    info = dataclasses.replace(f.rule, id="ZZ-INFO", card=dataclasses.replace(f.rule.card, indicator="info"))
    draft = dataclasses.replace(f.rule, id="ZZ-DRAFT", status="draft")
    later = dataclasses.replace(f.rule, id="ZZ-LATER", effective=NOW + dt.timedelta(days=1))
    findings = [Finding(r, f.matches, f.held) for r in (info, draft, later)] + [f]
    issued = cards.render_all(findings, "r", None, now=NOW)
    assert [c.rule.id for c in issued] == ["CI-05", "ZZ-INFO"]
    assert all(c.findings and c.findings[0].rule is c.rule for c in issued)
