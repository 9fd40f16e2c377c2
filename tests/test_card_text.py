"""Cards a clinician can trust: every rule's cards rendered for its own cases, read as text.

No UCUM code or internal label in what a clinician reads, no sentence glued to the next, every source with a
URL; times in the configured zone; settings are the only source of numbers (a changed setting changes the
text); named `any` alternatives reach templates; `effective` rules run in shadow until their date.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import ADULT, KETAMINE_ORDER, ROOT, bp

from protocol_engine.authoring import rulepage
from protocol_engine.authoring.testing import find_test_files, run_file
from protocol_engine.authoring.vignette import build_request
from protocol_engine.core import display
from protocol_engine.hooks.pipeline import build_runtime, run
from protocol_engine.pack import internal
from protocol_engine.pack.loader import INTERNAL
from protocol_engine.pack.packset import load_packset
from protocol_engine.pack.zone import ZONE_ENV

PACKS = [ROOT / "rules", ROOT / "tests" / "packs"]
# UCUM spellings people do not write: bracketed atoms (mm[Hg], [IU]/L, [lb_av]) and curly annotations ({score}).
UCUM = re.compile(r"\w*\[(?:Hg|IU|lb_av|in_i|degF|iU)\]|\{(?:score|beats|breaths|Score)\}")
# A sentence end glued to the next sentence: "positive**.Esketamine", "mmHg.Re-check".
GLUED = re.compile(r"[a-z0-9)\]*_][.!?;:](?:\*\*|_)?[A-Z][a-z]")
FOOTER = re.compile(r"^_Rule [A-Z]{2,4}-\d{2}[a-z]? v\d+\.\d+\.\d+ .*$", re.M)
UNRENDERED = re.compile(r"\{\{|\{%|%\}|\}\}")
# A Python repr leaked into the text, e.g. a template reading `.values` of a dict (DQ-04, probe 36).
PYREPR = re.compile(r"<built-in|<bound method|<function |object at 0x")


def _all_cards() -> tuple[list[tuple[str, str, dict[str, Any]]], set[str]]:
    cards: list[tuple[str, str, dict[str, Any]]] = []
    rules: set[str] = set()
    for root in PACKS:
        packset, diags = load_packset(root)
        assert packset is not None, [d.render() for d in diags]
        rules |= {r.id for r in packset.all_rules() if r.status == "active"}
        runtimes = build_runtime(packset)
        for path in find_test_files([root]):
            results, _ = run_file(path, packset, runtimes)
            for result in results:
                cards += [(result.rule, result.name, c) for c in result.cards]
    return cards, rules


CARDS, RULES = _all_cards()
# The generic marks and every pack's own source ids (protocol.yaml `internal_labels`: "SP-PDR", "KET-CH").
# And the packs' rule ids: "Checks that could not run: DOS-01" tells a clinician nothing (issue 19, DQ-06).
MARKS = internal.pattern((label for root in PACKS for pack in getattr(load_packset(root)[0], "packs", ())
                          for label in pack.protocol.internal_labels),
                         (r.id for root in PACKS for r in getattr(load_packset(root)[0], "all_rules", list)()))
assert MARKS is not INTERNAL and MARKS.search("see SP-PDR") and MARKS.search("see DOS-01.")


def test_every_active_rule_renders_a_card_in_its_own_cases() -> None:
    rendered = {c["extension"]["protocol-engine"]["rule"] for _, _, c in CARDS}
    assert not RULES - rendered, sorted(RULES - rendered)


@pytest.mark.parametrize("field", ["summary", "detail", "source"])
def test_no_ucum_code_internal_label_or_template_residue_in_what_clinicians_read(field: str) -> None:
    problems = []
    for rule, case, card in CARDS:
        text = card["source"]["label"] if field == "source" else card[field]
        text = FOOTER.sub("", text)  # the card's own rule and version, for whoever reports it, is not prose
        for name, pattern in (("UCUM code", UCUM), ("internal label", MARKS), ("template residue", UNRENDERED),
                              ("Python repr", PYREPR)):
            found = pattern.search(text)
            if found:
                problems.append(f"{card['extension']['protocol-engine']['rule']} ({rule}: {case}): {name} "
                                f"{found.group(0)!r} in {field}: {text[:160]!r}")
    assert not problems, "\n".join(sorted(set(problems))[:30])


def test_no_sentence_is_glued_to_the_next() -> None:
    problems = []
    for rule, case, card in CARDS:
        for field in ("summary", "detail"):
            # links are data, not prose: a URL may hold "x.Y"
            text = re.sub(r"\(https?://[^)]*\)", "()", card[field])
            found = GLUED.search(text)
            if found:
                problems.append(f"{card['extension']['protocol-engine']['rule']} ({rule}: {case}) {field}: "
                                f"...{text[max(found.start() - 40, 0): found.end() + 20]!r}")
    assert not problems, "\n".join(sorted(set(problems))[:30])


def test_every_source_has_a_label_and_a_url_and_further_sources_are_listed() -> None:
    for _, _, card in CARDS:
        source = card["source"]
        assert source["label"] and re.match(r"^https://", source.get("url", "")), source
    packset, _ = load_packset(ROOT / "rules")
    assert packset is not None
    multi = [r for r in packset.all_rules() if len(r.citations) > 1]
    assert len(multi) >= 20
    for r in multi:
        assert all(c.url for c in r.citations), r.id
    ci05 = next(c for _, _, c in CARDS if c["extension"]["protocol-engine"]["rule"] == "CI-05")
    assert "**Further sources**" in ci05["detail"] and "dailymed.nlm.nih.gov" in ci05["detail"]


def test_times_are_shown_in_the_configured_zone_with_the_offset(monkeypatch: pytest.MonkeyPatch,
                                                                 loaded: Any) -> None:
    now = dt.datetime(2026, 7, 1, 10, 0, tzinfo=dt.UTC)
    assert display.when(dt.datetime(2026, 7, 1, 6, 13, tzinfo=dt.UTC), now) == "today 06:13 UTC"
    zurich = display.zone_named("Europe/Zurich")
    assert display.when(dt.datetime(2026, 7, 1, 6, 13, tzinfo=dt.UTC), now, zone=zurich) == "today 08:13 UTC+02:00"
    assert display.when("2026-06-30T21:30:00+00:00", now, zone=zurich) == "yesterday 23:30 UTC+02:00"
    assert display.Local(zurich, now).when("2026-01-15T12:00:00Z") == "15 Jan 2026 13:00 UTC+01:00"
    # The zone is the deployment's, read when the pack is loaded (pack/zone.py), never by the core per card.
    monkeypatch.setenv(ZONE_ENV, "America/New_York")
    runtimes = _runtimes_in_the_configured_zone()
    monkeypatch.delenv(ZONE_ENV)
    rt = runtimes["ketamine-order-sign"]
    body = build_request({"patient": ADULT, "order": KETAMINE_ORDER, "given": [bp(186, 104, at="-30m")]}, rt, now)
    out = run(runtimes, "r", "ketamine-order-sign", body, now)
    ci05 = next(c for c in out.cards if c["extension"]["protocol-engine"]["rule"] == "CI-05")
    assert "BP 186/104 mmHg today 05:30 UTC-04:00" in ci05["summary"], ci05["summary"]
    assert "mm[Hg]" not in ci05["detail"] and "today 05:30 UTC-04:00" in ci05["detail"]


def _runtimes_in_the_configured_zone() -> Any:
    packset, diags = load_packset(ROOT / "rules")
    assert packset is not None, diags
    return build_runtime(packset)


def test_display_forms() -> None:
    table = {"mm[Hg]": "mmHg", "[IU]/L": "IU/L", "%": "%", "/min": "/min"}
    assert display.duration("156h") == "6 days 12 h"
    assert display.duration("48h") == "48 h"
    assert display.duration("30m") == "30 minutes"
    assert display.duration("7d") == "7 days"
    assert display.duration("14d") == "2 weeks"
    assert display.duration("365d") == "1 year"
    assert display.duration(0.5) == "30 minutes"
    assert display.quantity(180, "mm[Hg]", table) == "180 mmHg"
    assert display.quantity(25, "[IU]/L", table) == "25 IU/L"
    assert display.quantity(92, "%", table) == "92%"
    assert display.quantity(0.5, "mg/kg", table) == "0.5 mg/kg"
    assert str(display.Measured(180.0, "mm[Hg]")) == "180"


def _copy_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    return rules


def _ci05(rules: Path, now: dt.datetime, given: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    packset, diags = load_packset(rules)
    assert packset is not None, [d.render() for d in diags]
    runtimes = build_runtime(packset)
    body = build_request({"patient": ADULT, "order": KETAMINE_ORDER, "given": given},
                         runtimes["ketamine-order-sign"], now)
    out = run(runtimes, packset.revision, "ketamine-order-sign", body, now)
    return [c for c in out.cards if c["extension"]["protocol-engine"]["rule"] == "CI-05"], out.trace()


def test_a_changed_setting_changes_the_card_text_and_the_plain_words(tmp_path: Path) -> None:
    rules = _copy_rules(tmp_path)
    path = next(rules.rglob("CI-05-*.rule.yaml"))
    text = path.read_text()
    assert re.search(r"systolic_limit: \{value: 180", text)
    path.write_text(re.sub(r"systolic_limit: \{value: 180", "systolic_limit: {value: 170", text))
    now = dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)
    cards, _ = _ci05(rules, now, [bp(172, 84)])
    assert len(cards) == 1
    assert "(limit 170/100 mmHg)" in cards[0]["summary"] and "180" not in cards[0]["summary"]
    assert "170/100 mmHg" in cards[0]["detail"] and "180" not in cards[0]["detail"].split("**Evidence**")[0]
    packset, _ = load_packset(rules)
    assert packset is not None
    rule = next(r for r in packset.all_rules() if r.id == "CI-05")
    assert "170 mmHg systolic" in rule.when_text and "24 h" in rule.when_text


def test_named_alternatives_tell_the_template_which_one_held(loaded: Any) -> None:
    now = dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)
    rt = loaded.runtimes["ketamine-order-sign"]
    crisis = {"condition": "ICD10#I16.1 Hypertensive emergency", "id": "htn"}
    for given, words in (([bp(190, 95)], "BP 190/95 mmHg"), ([crisis], "active hypertensive crisis diagnosis")):
        body = build_request({"patient": ADULT, "order": KETAMINE_ORDER, "given": given}, rt, now)
        out = run(loaded.runtimes, "r", "ketamine-order-sign", body, now)
        ci05 = next(c for c in out.cards if c["extension"]["protocol-engine"]["rule"] == "CI-05")
        assert words in ci05["summary"], ci05["summary"]
        finding = next(f for f in out.findings if f.rule.id == "CI-05")
        assert finding.held and set(finding.held[0]) <= {"reading", "diagnosis"}


def test_a_rule_runs_in_shadow_until_its_effective_date(tmp_path: Path) -> None:
    rules = _copy_rules(tmp_path)
    path = next(rules.rglob("CI-05-*.rule.yaml"))
    path.write_text(path.read_text().replace("status: active\n", "status: active\neffective: 2026-12-01\n"))
    before = dt.datetime(2026, 11, 30, 23, 0, tzinfo=dt.UTC)
    cards, trace = _ci05(rules, before, [bp(190, 110)])
    assert cards == []
    assert "CI-05" in [s["rule"] for s in trace["shadow"]] and "CI-05" not in [f["rule"] for f in trace["fired"]]
    after = dt.datetime(2026, 12, 1, 0, 30, tzinfo=dt.UTC)
    cards, trace = _ci05(rules, after, [bp(190, 110)])
    assert len(cards) == 1 and "CI-05" in [f["rule"] for f in trace["fired"]]


@pytest.mark.parametrize("change", ["status: active\neffective: 2027-01-01\n", "status: draft\n"])
def test_a_rule_in_shadow_never_silences_the_card_below_it(tmp_path: Path, change: str) -> None:
    """CI-06 is suppressed by CI-05; a CI-05 that gives no card (draft, or not yet effective) must not hide it."""
    rules = _copy_rules(tmp_path)
    path = next(rules.rglob("CI-05-*.rule.yaml"))
    path.write_text(path.read_text().replace("status: active\n", change))
    packset, diags = load_packset(rules)
    assert packset is not None, [d.render() for d in diags]
    runtimes = build_runtime(packset)
    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    body = build_request({"patient": ADULT, "order": KETAMINE_ORDER, "given": [bp(184, 106)]},
                         runtimes["ketamine-order-sign"], now)
    out = run(runtimes, packset.revision, "ketamine-order-sign", body, now)
    trace = out.trace()
    shown = [c["extension"]["protocol-engine"]["rule"] for c in out.cards]
    assert "CI-06" in shown and "CI-05" not in shown
    assert "CI-05" in [s["rule"] for s in trace["shadow"]]


def test_pack_defaults_are_inherited_and_may_be_overridden(tmp_path: Path) -> None:
    packset, _ = load_packset(ROOT / "rules")
    assert packset is not None
    rules = {r.id: r for r in packset.all_rules()}
    assert rules["CI-05"].drugs == ("ketamine", "esketamine")
    assert rules["CI-05"].hooks == ("order-select", "order-sign", "patient-view", "encounter-start")
    assert rules["TIM-01"].hooks == ("order-select", "order-sign", "appointment-book")  # its own
    texts = [p.read_text() for p in (ROOT / "rules").rglob("*.rule.yaml")]
    assert sum(bool(re.search(r"^drugs: \[ketamine, esketamine\]", t, re.M)) for t in texts) == 0
    assert not any(re.search(r"^# (When|Then):", t, re.M) for t in texts)


def ruleset_ids() -> set[str]:
    packset, _ = load_packset(ROOT / "rules")
    assert packset is not None
    return {r.id for r in packset.all_rules()}


def test_rule_pages_show_plain_words_settings_codes_sources_and_cases(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from protocol_engine.cli import main

    out = tmp_path / "pages"
    result = CliRunner().invoke(main, ["docs", "--rules", str(ROOT / "rules"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "CI-05.md").read_text()
    assert "## When" in page and "180 mmHg systolic" in page
    assert "| `systolic_limit` | 180 mmHg |" in page
    assert "`ICD10#I16.1" in page or "I16.1" in page
    assert "https://ch.oddb.org" in page and "dailymed.nlm.nih.gov" in page
    assert "(the source of ketamine cards)" in page and "(the source of esketamine cards)" in page
    assert "| fires on a 172/104 panel taken 30 minutes ago" in page and "critical: Hold ketamine" in page
    assert len(list(out.glob("*.md"))) == len(ruleset_ids()) + 1
    packset, _ = load_packset(ROOT / "rules")
    assert packset is not None
    found = rulepage.find(packset, "TIM-01")
    assert found is not None
    html_page = rulepage.to_html(rulepage.build(packset, build_runtime(packset), *found))
    assert "<h2>Test cases</h2>" in html_page and "FAIL" not in html_page


def test_rule_page_is_served(client: Any) -> None:
    page = client.get("/rules/CI-11")
    assert page.status_code == 200 and page.mimetype == "text/html"
    body = page.get_data(as_text=True)
    assert "History of psychosis" in body and "doi.org/10.1001/jamapsychiatry.2017.0080" in body
    assert client.get("/rules/XX-99").status_code == 404


# -- restated settings: ranges, filter-printed durations, other units, counts in words, the right name ----------

POST_DOSE = {"course": {"post_dose_check": {"measure": "blood-pressure", "from": "30m", "to": "90m"}}}


@pytest.mark.parametrize(("text", "settings", "units", "literal", "setting", "hint"), [
    ("no BP charted 30-90 minutes after the dose", {}, {}, "30-90 minutes",
     "protocol.course.post_dose_check.from", "{{ protocol.course.post_dose_check.from|duration(protocol.course.post_dose_check.to) }}"),
    ("no BP charted 45 to 90 minutes after the dose", {}, {}, "45 to 90 minutes",
     "protocol.course.post_dose_check.to", "{{ protocol.course.post_dose_check.to|duration }}"),
    ("no sooner than 6 days 12 h after the previous one", {"maintenance_minimum": "156h"}, {}, "6 days 12 h",
     "maintenance_minimum", "{{ maintenance_minimum|duration }}"),
    ("within 1 h 30 min", {"window": "90m"}, {}, "1 h 30 min", "window", "{{ window|duration }}"),
    ("doses above 500 mcg/kg", {"limit": 0.5}, {"limit": "mg/kg"}, "500 mcg/kg", "limit", "{{ limit|qty }}"),
    ("doses above 0.5 mg/kg", {"limit": 0.5}, {"limit": "mg/kg"}, "0.5 mg/kg", "limit", "{{ limit|qty }}"),
    ("the label allows twice weekly dosing", {"per_week": 2}, {}, "twice weekly", "per_week", "{{ per_week }}"),
    ("in the first 4 weeks", {"induction_weeks": 4}, {}, "4 weeks", "induction_weeks", "{{ induction_weeks }}"),  # (a fixture setting)
    ("not approved under 18 years", {"adult_age": 18}, {"adult_age": "a"}, "18 years", "adult_age",
     "{{ adult_age|qty }}"),
    ("a 40-minute infusion", {"minimum": "40m"}, {}, "40-minute", "minimum", "{{ minimum|duration }}"),
    ("below the 25% partial-response threshold", {"partial": 25}, {}, "25%", "partial", "{{ partial }}"),
    # the right name: the unit decides between settings that share a number
    ("infused over 40 minutes", {"upper": 40, "minimum": "40m"}, {"upper": "U/L"}, "40 minutes", "minimum",
     "{{ minimum|duration }}"),
    ("above 180 mmHg", {"count": 180, "systolic_limit": 180}, {"systolic_limit": "mm[Hg]"}, "180 mmHg",
     "systolic_limit", "{{ systolic_limit|qty }}"),
])
def test_restated_literals_are_found_and_named(text: str, settings: dict[str, Any], units: dict[str, str],
                                               literal: str, setting: str, hint: str) -> None:
    from protocol_engine.pack import restated

    hits = restated.find(text, settings, POST_DOSE, units, {}, {"mmHg": "mm[Hg]"})
    assert [(h.literal, h.setting) for h in hits] == [(literal, setting)], hits
    assert hint in hits[0].hint


def test_a_restated_range_suggests_printing_both_ends() -> None:
    from protocol_engine.pack import restated

    protocol = {"course": {"post_dose_check": {"from": "30m", "to": "90m"}}}
    for text in ("re-check 30 to 90 min after the dose", "30-90 minutes"):
        (hit,) = restated.find(text, {}, protocol, {})
        assert hit.hint == ("did you mean '{{ protocol.course.post_dose_check.from|duration("
                            "protocol.course.post_dose_check.to) }}'?"), hit


def test_restated_names_the_rule_setting_first_and_the_others_beside_it() -> None:
    from protocol_engine.pack import restated

    hits = restated.find("in the last 24 h", {"lookback": "24h"}, {"scores": {"window": "24h"}})
    assert [(h.setting, h.also) for h in hits] == [("lookback", ("protocol.scores.window",))]
    hits = restated.find("outside 50-120/min", {"low": 50, "high": 120}, {}, {"low": "/min", "high": "/min"})
    assert [(h.literal, h.setting, h.also) for h in hits] == [("50-120/min", "low", ("high",))]
    hits = restated.find("above 180 mmHg", {"count": 180, "systolic_limit": 180}, {}, {"systolic_limit": "mm[Hg]"},
                         {}, {"mmHg": "mm[Hg]"})
    assert hits[0].setting == "systolic_limit" and hits[0].also == ("count",)


def test_a_pack_value_in_another_unit_is_found_but_not_offered_as_a_template_name() -> None:
    from protocol_engine.pack import restated

    hits = restated.find("quantitative hCG at or above 25 mIU/mL", {}, {}, {},
                         {"measures.hcg.positive_at": (25, "[IU]/L")}, {"mIU/mL": "m[IU]/mL"})
    assert [(h.literal, h.setting) for h in hits] == [("25 mIU/mL", "measures.hcg.positive_at")]
    assert "cannot print" in hits[0].hint and "{{" not in hits[0].hint
    # a bare 25 is prose, not the pack's threshold
    assert restated.find("in 25 patients", {}, {}, {}, {"measures.hcg.positive_at": (25, "[IU]/L")}) == []


@pytest.mark.parametrize(("text", "settings", "units"), [
    ("PHQ-9, CYP3A4 and LOINC 85354-9", {"a": 9, "b": 3, "c": 85354}, {}),
    ("doses above 500 mg/kg", {"limit": 0.5}, {"limit": "mg/kg"}),  # not the same value in any unit
    ("40 mg", {"minimum": "40m"}, {}),  # a mass is not a duration
    ("once stable, twice the dose", {"n": 2, "m": 1}, {}),  # counts in words only as a frequency
    ("review in 3 months", {"multiple": 3}, {}),  # a count setting is not a number of months (issue 19)
])
def test_restated_leaves_identifiers_and_other_quantities_alone(text: str, settings: dict[str, Any],
                                                               units: dict[str, str]) -> None:
    from protocol_engine.pack import restated

    assert restated.find(text, settings, {}, units) == []


# -- validate: titles, plain words, setting sources, unknown keys, effective, a source per drug -------------------

def _edit(rules: Path, rule: str, *changes: tuple[str, str]) -> Path:
    path = next(rules.rglob(f"{rule}-*.rule.yaml"))
    text = path.read_text()
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)
    return path


def _diags(rules: Path) -> list[str]:
    _, diags = load_packset(rules)
    return [d.render() for d in diags]


def test_validate_refuses_restated_settings_in_titles_and_internal_labels_in_plain_words_and_sources(
        tmp_path: Path) -> None:
    rules = _copy_rules(tmp_path)
    path = _edit(rules, "CI-05",
                 ("title: Severe hypertension before", "title: BP of the last 24 hours, severe hypertension before"),
                 ("  then: \"Critical - hold the dose;", "  then: \"Critical - hold the dose (KET-CH);"),
                 ('source: "Ketamine Swiss product information', 'source: "SP-PDR; Ketamine Swiss product information'))
    found = "\n".join(_diags(rules))
    lines = path.read_text().splitlines()
    title_line = next(i for i, line in enumerate(lines, 1) if line.startswith("title:"))
    col = lines[title_line - 1].index("24 hours") + 1
    assert (f"{path}:{title_line}:{col}: error[restated-setting]: '24 hours' restates the setting 'lookback'"
            in found), found
    assert "the title is not a template" in found
    then_line = next(i for i, line in enumerate(lines, 1) if line.startswith("  then:"))
    assert re.search(rf"{re.escape(str(path))}:{then_line}:\d+: error\[internal-label\]: the plain.then shows 'KET-CH'",
                     found), found
    assert "setting 'systolic_limit': the source shows 'SP-PDR'" in found


def test_validate_reports_every_internal_mark_and_rule_id_in_card_text_each_where_it_is(tmp_path: Path) -> None:
    rules = _copy_rules(tmp_path)
    path = _edit(rules, "CI-05",
                 ("raise blood pressure (peak about 40 minutes after the dose). Do not give the dose while",
                  "raise blood pressure (see CI-06, per G8.). Do not give the dose (G12) while"),
                 ("re-check after 10 minutes of rest", "re-check (see CI-06) after 10 minutes of rest"))
    found = "\n".join(_diags(rules))
    lines = path.read_text().splitlines()
    first = next(i for i, line in enumerate(lines, 1) if "per G8." in line)
    second = next(i for i, line in enumerate(lines, 1) if "(see CI-06)" in line)
    for line, mark in ((first, "CI-06"), (first, "G8"), (first, "G12"), (second, "CI-06")):
        col = lines[line - 1].index(mark + ("" if line == first else ")")) + 1
        assert f"{path}:{line}:{col}: error[internal-label]: the detail shows '{mark}'" in found, found
    assert "name the check in words (its title), not its id" in found
    # ICD-10 codes are not marks; plain words (for the rule page's reviewers) may name other rules.
    assert not internal.INTERNAL.search("G93.6 and Q28.2") and internal.INTERNAL.search("(G12)")
    assert not re.search(r"error\[internal-label\]: the plain", found)


def test_a_literal_written_twice_is_reported_twice_each_where_it_is(tmp_path: Path) -> None:
    rules = _copy_rules(tmp_path)
    path = _edit(rules, "CI-05",
                 ("raise blood pressure (peak about 40 minutes after the dose).",
                  "raise blood pressure over 24 hours."),
                 ("re-check after 10 minutes of rest", "re-check within 24 hours after 10 minutes of rest"))
    found = [d for d in _diags(rules) if "restates the setting 'lookback'" in d]
    lines = path.read_text().splitlines()
    at = [(i, line.index("24 hours") + 1) for i, line in enumerate(lines, 1)
          if "24 hours" in line and not line.startswith("title")]
    assert len(at) == 2 and len({d.split(": error")[0] for d in found}) == 2, found
    for line, col in at:
        assert any(d.startswith(f"{path}:{line}:{col}: error[restated-setting]") for d in found), (at, found)


def test_a_protocol_setting_source_may_not_use_internal_ids(tmp_path: Path) -> None:
    rules = _copy_rules(tmp_path)
    protocol = rules / "ketamine" / "protocol.yaml"
    protocol.write_text(protocol.read_text().replace(
        'source: "pack semantics valid-observation:', 'source: "G1 valid-observation:'))
    found = "\n".join(_diags(rules))
    assert "protocol.yaml:" in found and "error[internal-label]: setting 'observation_valid_status': the source " \
                                          "shows 'G1'" in found, found


def test_validate_flags_unknown_keys_in_plain_and_citations_and_places_a_bad_effective_date(tmp_path: Path) -> None:
    rules = _copy_rules(tmp_path)
    path = _edit(rules, "CI-06",
                 ("status: active\n", "status: active\neffective: 2026-13-45\n"),
                 ("  then: ", "  than: typo\n  then: "),
                 ('    url: "https://pdr.net', '    ulr: "x"\n    url: "https://pdr.net'))
    found = "\n".join(_diags(rules))
    lines = path.read_text().splitlines()
    at = {key: next(i for i, line in enumerate(lines, 1) if line.lstrip().startswith(key))
          for key in ("effective:", "than:", "ulr:")}
    assert f"{path}:{at['effective:']}:12: error[bad-effective]: effective '2026-13-45' is not a date" in found, found
    assert f"{path}:{at['than:']}:3: error[unknown-key]: unknown key 'than' in plain" in found
    assert "did you mean 'then'?" in found
    assert f"{path}:{at['ulr:']}:5: error[unknown-key]: unknown key 'ulr' in a citation" in found
    assert "did you mean 'url'?" in found


def test_every_drug_of_a_rule_has_a_source_that_fits_it(tmp_path: Path) -> None:
    rules = _copy_rules(tmp_path)
    path = next(rules.rglob("CI-03-*.rule.yaml"))
    text = path.read_text()
    path.write_text(text[: text.index("  - label: \"KETALAR")] + text[text.index("notes:"):])
    found = "\n".join(_diags(rules))
    assert "error[no-source-for-drug]: the rule gives ketamine cards, but every citation is about esketamine" \
        in found, found
    packset, _ = load_packset(ROOT / "rules")
    assert packset is not None
    for rule in packset.all_rules():
        for drug in rule.drugs:
            lead = rule.sources_for(drug)[0]
            assert not lead.drugs or drug in lead.drugs, (rule.id, drug, lead.label)
            if drug == "esketamine" and any("SPRAVATO" in c.label for c in rule.citations):
                assert "SPRAVATO" in lead.label, (rule.id, lead.label)
            if drug == "ketamine":
                assert "SPRAVATO" not in lead.label, (rule.id, lead.label)


# -- cards: the lead match, the lead source, evidence a clinician reads ------------------------------------------

def _cards(loaded: Any, given: list[dict[str, Any]], order: dict[str, Any] | None = None,
           now: dt.datetime = dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)) -> dict[str, dict[str, Any]]:
    rt = loaded.runtimes["ketamine-order-sign"]
    body = build_request({"patient": ADULT, "order": order or KETAMINE_ORDER, "given": given}, rt, now)
    out = run(loaded.runtimes, "r", "ketamine-order-sign", body, now)
    return {c["extension"]["protocol-engine"]["rule"]: c for c in out.cards}


ESKETAMINE = {"medication": "RXNORM#2201625 esketamine", "dose": "56 mg", "route": "SNOMED#46713006 Nasal route"}


def test_the_active_medicine_leads_and_the_source_fits_the_drug(loaded: Any) -> None:
    meds = [{"medication": "RXNORM#2598 clonazepam", "status": "on-hold", "id": "lz2"},
            {"medication": "RXNORM#6470 lorazepam", "id": "lz"}]
    ddi = _cards(loaded, [bp(120, 80), *meds])["DDI-01"]
    assert ddi["summary"].startswith("Lorazepam (benzodiazepine) and 1 more"), ddi["summary"]
    assert ddi["detail"].index("lorazepam (active)") < ddi["detail"].index("clonazepam (on-hold)")
    assert "Andrashko" in ddi["source"]["label"]
    esk = _cards(loaded, [bp(120, 80), *meds], ESKETAMINE)
    assert esk["DDI-01"]["source"]["label"].startswith("SPRAVATO")
    assert "Andrashko" in esk["DDI-01"]["detail"].split("**Further sources**")[1]
    ket = _cards(loaded, [bp(120, 80)])
    assert "SPRAVATO" not in ket["MON-08"]["source"]["label"] and "SPRAVATO" not in ket["MON-07"]["source"]["label"]


def test_evidence_lines_read_as_drug_dose_route_and_time_in_the_zone(loaded: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ZONE_ENV, "Europe/Zurich")
    zurich = SimpleNamespace(runtimes=_runtimes_in_the_configured_zone())
    cards = _cards(zurich, [bp(120, 80), {"medication": "RXNORM#6470 lorazepam", "id": "lz"}])
    detail = cards["MON-07"]["detail"]
    assert "Draft order: ketamine 35 mg IV, ordered today 11:00 UTC+01:00, MedicationRequest/" in detail, detail
    assert "6130" not in detail and " iv," not in detail
    assert "- lorazepam (active), MedicationRequest/lz" in cards["DDI-01"]["detail"]


def test_a_quantitative_hcg_shows_its_unit_and_the_card_names_the_ordered_drug(loaded: Any) -> None:
    hcg = {"observation": "LOINC#21198-7", "value": "30 m[IU]/mL", "at": "-1d", "id": "hcg"}
    ci15 = _cards(loaded, [bp(120, 80), hcg])["CI-15"]
    assert "hCG positive (30 mIU/mL)" in ci15["detail"] and "Ketamine is not recommended" in ci15["detail"]
    assert "Esketamine is not" not in ci15["detail"]


def test_explain_evaluates_with_the_site_file_like_the_other_authoring_commands(tmp_path: Path, loaded: Any,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from click.testing import CliRunner

    from protocol_engine.cli import main

    monkeypatch.delenv("PROTOCOL_ENGINE_SITE", raising=False)
    now = dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)
    body = build_request({"patient": ADULT, "order": KETAMINE_ORDER, "given": [bp(190, 110, at="-20h")]},
                         loaded.runtimes["ketamine-order-sign"], now)
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    site = tmp_path / "site.yaml"
    site.write_text("site: Test clinic\nrules:\n  CI-05:\n    lookback: 12h\n")
    args = ["explain", "--request", str(request), "--now", now.isoformat(), "--rules", str(ROOT / "rules")]
    shipped = CliRunner().invoke(main, args)
    assert shipped.exit_code == 0, shipped.output
    assert re.search(r"CI-05 v[\d.]+ \[critical\] .*: FIRED", shipped.output)
    with_site = CliRunner().invoke(main, [*args, "--site", str(site)])
    assert with_site.exit_code == 0, with_site.output
    assert "site settings 'Test clinic'" in with_site.output and "CI-05 lookback 24h -> 12h" in with_site.output
    assert re.search(r"CI-05 v[\d.]+ \[critical\] .*: silent", with_site.output), with_site.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  CI-05:\n    lookback: 96h\n")
    refused = CliRunner().invoke(main, [*args, "--site", str(bad)])
    assert refused.exit_code == 1 and "error[setting-out-of-range]" in refused.output


def test_an_order_dated_without_a_time_shows_its_day_and_an_annotation_unit_reads_as_a_word(loaded: Any) -> None:
    order = {"resource": {
        "resourceType": "MedicationRequest", "intent": "order", "subject": {"reference": "Patient/test-patient"},
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                  "code": "6130", "display": "ketamine"}]},
        "authoredOn": "2026-11-20",  # a date: the sandbox sends these
        "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 1, "unit": "{pill}",
                                                                 "system": "http://unitsofmeasure.org",
                                                                 "code": "{pill}"}}]}]}}
    detail = _cards(loaded, [bp(120, 80)], order)["MON-07"]["detail"]
    assert "Draft order: ketamine 1 pill (route not stated), ordered yesterday, MedicationRequest/" in detail, detail
    assert "00:00" not in detail and "{pill}" not in detail.split("**Evidence**")[1]


def test_issue19_wording_a_lone_systolic_counts_of_devices_and_percentages() -> None:
    assert display.pair_text(186, None, "mmHg") == "systolic 186 mmHg (no diastolic recorded)"
    assert display.pair_text(186, 104, "mmHg") == "186/104 mmHg"
    assert display.quantity(2, "{vial}", {}) == "2 vials" and display.quantity(1, "{pill}", {}) == "1 pill"
    env = __import__("protocol_engine.core.templates", fromlist=["environment"]).environment()
    assert env.from_string("{{ (0 - x)|round(1)|num }}%").render(x=-9.0909) == "9.1%"
    assert env.from_string("{{ bp|bp }}").render(bp={"systolic": 192, "unit": "mm[Hg]"}) \
        == "systolic 192 mm[Hg] (no diastolic recorded)"  # (the pack's display table maps the code: mmHg)
    texts = [c["summary"] + c["detail"] for _, _, c in CARDS]
    assert not [t for t in texts if re.search(r"\d/\?|\?/\d", t)]
    assert not [t for t in texts if re.search(r"\b\d+\.\d\d+%", t)]


def test_issue19_sources_fit_the_drug_ketamine_cards_lead_with_the_ketalar_label_and_list_no_spravato_rems(
        loaded: Any) -> None:
    ket = _cards(loaded, [bp(120, 80)])
    assert "REMS" not in ket["MON-07"]["detail"], ket["MON-07"]["detail"]
    esk = _cards(loaded, [bp(120, 80)], ESKETAMINE)
    assert "REMS" in esk["MON-07"]["detail"] + esk["MON-07"]["source"]["label"]
    packset, _ = load_packset(ROOT / "rules")
    assert packset is not None
    rules = {r.id: r for r in packset.all_rules()}
    assert rules["CI-15"].sources_for("ketamine")[0].label.startswith("KETALAR")
    assert not any("ucum.org" in (c.url or "") for c in rules["MON-02"].citations)
    assert "esketamine" in rules["DDI-03"].title
