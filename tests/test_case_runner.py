"""authoring/testing.py, the rule-case runner: how a case's expectations are compared with the cards, and how its
`given` entries name the pack's shared fixtures (authoring/vignette.py)."""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from protocol_engine.authoring.testing import card_matches, prepare_file
from protocol_engine.authoring.vignette import load_fixtures, with_fixtures

ROOT = Path(__file__).resolve().parent.parent


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


# -- shared fixtures (`{fixture: NAME}` in `given`, the pack's fixtures.yaml) ---------------------------------

FIXTURES = ROOT / "rules" / "ketamine" / "fixtures.yaml"
TIM04 = ROOT / "rules" / "ketamine" / "timing" / "TIM-04-maintenance-lapse.test.yaml"


def test_a_fixture_stands_for_its_entries_with_the_entry_s_other_keys_added() -> None:
    fixtures = {"two-doses": [{"administration": "RXNORM#6130 ketamine", "at": "-9d"},
                              {"administration": "RXNORM#6130 ketamine", "at": "-2d"}]}
    given = [{"observation": "LOINC#29463-7", "value": "72 kg"}, {"fixture": "two-doses", "route": "IV"}]
    assert with_fixtures(given, fixtures) == [
        {"observation": "LOINC#29463-7", "value": "72 kg"},
        {"administration": "RXNORM#6130 ketamine", "at": "-9d", "route": "IV"},
        {"administration": "RXNORM#6130 ketamine", "at": "-2d", "route": "IV"}]
    assert fixtures["two-doses"][0] == {"administration": "RXNORM#6130 ketamine", "at": "-9d"}  # not changed
    with pytest.raises(KeyError):
        with_fixtures([{"fixture": "three-doses"}], fixtures)


def test_the_shipped_case_files_get_the_induction_course_from_the_fixture(loaded: Any) -> None:
    fixtures, diags = load_fixtures(FIXTURES.parent)
    assert diags == [] and [e["at"] for e in fixtures["completed-ketamine-induction"]] == [
        "-40d", "-38d", "-36d", "-33d", "-31d", "-29d"]
    cases, diags = prepare_file(TIM04, loaded.packset, loaded.runtimes)
    assert diags == []
    booked = next(c for c in cases if "booked 30 days out" in c.name)
    doses = [g for g in booked.case["given"] if "administration" in g][-7:]  # the file's defaults give others
    assert [d["at"] for d in doses] == ["-40d", "-38d", "-36d", "-33d", "-31d", "-29d", "-2d"]
    assert all(d["route"] == "SNOMED#47625008 Intravenous route" and "fixture" not in d for d in doses)


def test_an_unknown_fixture_is_a_positioned_error_of_the_test_file(loaded: Any, tmp_path: Path) -> None:
    shutil.copy(FIXTURES, tmp_path / "fixtures.yaml")
    packset = replace(loaded.packset, packs=[replace(loaded.packset.packs[0], root=tmp_path)])
    case_file = tmp_path / "TIM-04.test.yaml"
    case_file.write_text(textwrap.dedent("""\
        rule: TIM-04
        now: "2026-11-21T10:00:00Z"
        cases:
          - name: a misspelt fixture
            given:
              - {observation: "LOINC#29463-7", value: "72 kg", at: -2d}
              - {fixture: completed-ketamine-inducton}
            expect: {fires: [TIM-04]}
        """))
    cases, diags = prepare_file(case_file, packset, loaded.runtimes)
    assert cases == []
    [diag] = diags
    assert (diag.code, diag.line, diag.col) == ("unknown-fixture", 7, 9)
    assert "completed-ketamine-inducton" in diag.message and diag.hint == "did you mean 'completed-ketamine-induction'?"
    (tmp_path / "fixtures.yaml").unlink()  # no fixtures file at all: the same error, saying none is defined
    _, [diag] = prepare_file(case_file, packset, loaded.runtimes)
    assert diag.code == "unknown-fixture" and diag.hint == "defined: none"


def test_a_malformed_fixtures_file_is_reported_at_the_fixture(tmp_path: Path) -> None:
    (tmp_path / "fixtures.yaml").write_text("fixtures:\n  empty: []\n  nested:\n    - {fixture: empty}\n")
    fixtures, diags = load_fixtures(tmp_path)
    assert fixtures == {} and [(d.code, d.line) for d in diags] == [("schema", 2), ("schema", 3)]


def _case_file(tmp_path: Path, given: str, expect: str = "{fires: [TIM-04]}") -> Path:
    path = tmp_path / "TIM-04.test.yaml"
    path.write_text(textwrap.dedent(f"""\
        rule: TIM-04
        now: "2026-11-21T10:00:00Z"
        cases:
          - name: a typo
            given:
              - {given}
            expect: {expect}
        """))
    return path


@pytest.mark.parametrize(("given", "expect", "code", "at", "hint"), [
    # probe 18 M2: `test` failed the case with "ValueError: unknown given entry" and no file:line
    ('{observaton: "LOINC#29463-7", value: "72 kg", at: -2d}', "{fires: [TIM-04]}", "unknown-given", (6, 9),
     "did you mean 'observation'?"),
    ('{observation: "LOINC#29463-7", vaule: "72 kg", at: -2d}', "{fires: [TIM-04]}", "unknown-key", (6, 40),
     "did you mean 'value'?"),
    ('{observation: "LOINC#29463-7", value: "72 kg", at: -2d}', "{fire: [TIM-04]}", "unknown-key", (7, 14),
     "did you mean 'fires'?"),
    ('{observation: "LOINC#29463-7", value: "72 kg", at: -2d}', "{cards: [{rule: TIM-04, sumary: x}]}", "unknown-key",
     (7, 37), "did you mean 'summary'?"),
    ('{fixture: completed-ketamine-induction, rout: "SNOMED#47625008"}', "{fires: [TIM-04]}", "unknown-key",
     (6, 49), "did you mean 'route'?"),
    # re-probe 18: `cards:` written as one mapping passed validate and crashed `test` (AttributeError)
    ('{observation: "LOINC#29463-7", value: "72 kg", at: -2d}', "{cards: {rule: TIM-04}}", "schema", (7, 21),
     "for example `cards: [...]`, one item a line with `- `"),
])
def test_a_test_file_off_the_shorthand_is_a_positioned_error(loaded: Any, tmp_path: Path, given: str, expect: str,
                                                            code: str, at: tuple[int, int], hint: str) -> None:
    shutil.copy(FIXTURES, tmp_path / "fixtures.yaml")
    packset = replace(loaded.packset, packs=[replace(loaded.packset.packs[0], root=tmp_path)])
    cases, diags = prepare_file(_case_file(tmp_path, given, expect), packset, loaded.runtimes)
    assert cases == []
    assert [(d.code, (d.line, d.col), d.hint) for d in diags] == [(code, at, hint)]


def test_a_fixture_entry_off_the_shorthand_is_an_error_of_fixtures_yaml(tmp_path: Path) -> None:
    (tmp_path / "fixtures.yaml").write_text("fixtures:\n  two:\n    - {administraton: \"RXNORM#6130\", at: -1d}\n")
    fixtures, diags = load_fixtures(tmp_path)
    assert fixtures == {}
    assert [(d.code, d.line, d.col, d.hint) for d in diags] == [("unknown-given", 3, 7,
                                                                 "did you mean 'administration'?")]


def test_validate_checks_the_test_files(tmp_path: Path) -> None:
    """probe 18 M2: `validate` printed ok for a test file whose `given` entry was misspelt."""
    from protocol_engine.authoring.conventions import validate_paths

    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    test = next((rules / "ketamine").rglob("MON-03-*.test.yaml"))
    text = test.read_text()
    test.write_text(text.replace('{observation: "LOINC#8867-4", value', '{observaton: "LOINC#8867-4", value', 1))
    packset, diags = validate_paths([rules], None)
    line = text[: text.index('{observation: "LOINC#8867-4", value')].count("\n") + 1
    assert [(Path(d.path).name, d.line, d.code, d.hint) for d in diags] == [
        (test.name, line, "unknown-given", "did you mean 'observation'?")]


def test_a_now_that_is_not_a_time_is_a_positioned_error(loaded: Any, tmp_path: Path) -> None:
    """Re-probe 18: `now: yesterday` passed validate and crashed `test` (ValueError: Invalid isoformat string)."""
    shutil.copy(FIXTURES, tmp_path / "fixtures.yaml")
    packset = replace(loaded.packset, packs=[replace(loaded.packset.packs[0], root=tmp_path)])
    path = _case_file(tmp_path, '{observation: "LOINC#29463-7", value: "72 kg", at: -2d}')
    path.write_text(path.read_text().replace('now: "2026-11-21T10:00:00Z"', "now: yesterday"))
    cases, diags = prepare_file(path, packset, loaded.runtimes)
    assert cases == []
    assert [(d.code, d.line, d.col) for d in diags] == [("bad-time", 2, 6)]


def test_a_given_time_that_is_not_a_time_is_a_positioned_error(loaded: Any, tmp_path: Path) -> None:
    """Re-probe 18: `at: -25 hours` passed validate; `test` failed the case with a bare ValueError."""
    shutil.copy(FIXTURES, tmp_path / "fixtures.yaml")
    packset = replace(loaded.packset, packs=[replace(loaded.packset.packs[0], root=tmp_path)])
    path = _case_file(tmp_path, '{observation: "LOINC#29463-7", value: "72 kg", at: -25 hours}')
    cases, diags = prepare_file(path, packset, loaded.runtimes)
    assert cases == []
    assert [(d.code, d.line, d.hint) for d in diags] == [
        ("bad-time", 6, "write one relative to the case's now (-25h, -3d, +30m) or an ISO time")]
