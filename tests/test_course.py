"""The one course model: `course:` parsed at load time with positioned errors, one segmentation for every fact."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ADULT, ROOT, request_for

from protocol_engine.cli import main
from protocol_engine.core.derive.course import Course, CourseSpec, Dose, Induction
from protocol_engine.hooks.pipeline import run
from protocol_engine.runtime.registry import load

NOW = dt.datetime(2026, 11, 21, 10, tzinfo=dt.UTC)
ESKETAMINE = "RXNORM#2201625 esketamine"


def _pack(tmp_path: Path, induction: str) -> Path:
    """The bundled pack with the esketamine induction window written as `induction`."""
    pack = tmp_path / "rules" / "ketamine"
    shutil.copytree(ROOT / "rules" / "ketamine", pack)
    protocol = pack / "protocol.yaml"
    text = protocol.read_text()
    marked = re.search(r"\n    esketamine:\n      days: \{.*\}\n", text)
    assert marked, "the esketamine induction window moved"
    protocol.write_text(text.replace(marked.group(0), f"\n    esketamine: {{days: {induction}}}\n"))
    return pack


@pytest.mark.parametrize("written", ["28", "28d", "4w", "672h", "28.0"])
def test_every_spelling_of_28_days_loads_the_same(tmp_path: Path, written: str) -> None:
    loaded = load(_pack(tmp_path, written))
    assert loaded.packset.packs[0].protocol.course.induction["esketamine"] == Induction(None, 28.0)


@pytest.mark.parametrize("written", ["28d", "4w", "28"])
def test_a_completed_esketamine_induction_answers_200_with_each_spelling(tmp_path: Path, written: str) -> None:
    """Was a 500: `_scores` read `days: 28d` with float() on the first patient past induction."""
    loaded = load(_pack(tmp_path, written))
    case = {"patient": ADULT, "order": {"medication": ESKETAMINE, "dose": "56 mg"},
            "given": [{"administration": ESKETAMINE, "at": f"-{d}d"} for d in (40, 36, 33, 29, 26, 22, 19, 15, 7)]
            + [{"observation": "LOINC#44261-6", "value": 20, "at": "-42d"},
               {"observation": "LOINC#44261-6", "value": 8, "at": "-3d"}]}
    outcome = run(loaded.runtimes, "rev", "ketamine-order-sign", request_for(loaded, "ketamine-order-sign", case, NOW),
                  NOW)
    course = next(f for f in outcome.facts if f["t"] == "course")
    assert course["phase"] == "maintenance" and course["induction_complete"] is True
    assert {f["t"] for f in outcome.facts} >= {"score"}
    assert "RSP-03" in {f["rule"] for f in outcome.trace()["fired"]}


@pytest.mark.parametrize("written, message", [
    ("28x", "course.induction.esketamine.days: '28x' is not a positive duration"),
    ("-4w", "is not a positive duration"),
    ("true", "is not a positive duration"),
    ("0", "is not a positive duration"),
])
def test_a_bad_induction_window_is_refused_with_its_position(tmp_path: Path, written: str, message: str) -> None:
    pack = _pack(tmp_path, written)
    result = CliRunner().invoke(main, ["validate", "--no-git", str(pack)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = next(i for i, text in enumerate((pack / "protocol.yaml").read_text().splitlines(), 1)
                if "esketamine: {days:" in text)
    assert re.search(rf"protocol\.yaml:{line}:\d+: error\[(bad-duration|schema)\]: .*{re.escape(message)}",
                     result.output), result.output


@pytest.mark.parametrize("old, new, message", [
    (r"  gap: \{.*\}", "  gap: soon", "course.gap: 'soon' is not a positive duration"),
    (r"      doses: \{value: 6.*\}", "      doses: six", "doses: 'six' is not a whole number"),
    (r"      days: \{value: 21.*\}", "      weeks: 3", "write {doses: N}, {days: D} or both"),
    (r"    ketamine:\n      doses", "    ketamin:\n      doses", "'ketamin' is not a drug of this protocol"),
    (r"measure: blood-pressure, from: 30m", "measure: bp, from: 30m", "'bp' is not a measure of this protocol"),
    (r"from: 30m, to: 90m", "from: 90m, to: 30m", "'to' must be after 'from'"),
])
def test_other_course_values_are_checked_at_load(tmp_path: Path, old: str, new: str, message: str) -> None:
    pack = tmp_path / "rules" / "ketamine"
    shutil.copytree(ROOT / "rules" / "ketamine", pack)
    protocol = pack / "protocol.yaml"
    text, count = re.subn(old, new, protocol.read_text(), count=1)
    assert count == 1, old
    protocol.write_text(text)
    result = CliRunner().invoke(main, ["validate", "--no-git", str(pack)])
    assert result.exit_code == 1 and message in result.output, result.output


def _dose(days_ago: float, drug: str = "ketamine", route: str = "iv") -> Dose:
    return Dose(NOW - dt.timedelta(days=days_ago), drug, "completed", f"MedicationAdministration/{days_ago}", route)


SPEC = CourseSpec(60 * 24.0, {"ketamine": Induction(6, 21.0), "esketamine": Induction(None, 28.0)})


def test_segmentation_starts_a_course_after_the_gap_and_counts_induction_once() -> None:
    doses = [_dose(d) for d in (200, 198, 40, 38, 36, 33, 31, 29, 5)]
    course = Course.of(SPEC, doses, NOW)
    assert [d.time for d in course.doses] == [d.time for d in doses[2:]]
    assert course.phase == "maintenance" and not course.in_induction
    assert len(course.induction_doses()) == 6 and course.induction_doses()[-1] == doses[7]
    assert course.latest_route() == "iv"


def test_induction_ends_at_the_day_limit_before_the_dose_limit() -> None:
    doses = [_dose(d) for d in (25, 15, 10)]  # 3 doses, but day 25 > 21
    course = Course.of(SPEC, doses, NOW)
    assert course.phase == "maintenance"
    assert course.induction_doses() == tuple(doses)  # all three were inside days 0-21


def test_the_anchor_moves_phase_week_and_rolling_window() -> None:
    doses = [_dose(d, "esketamine", "intranasal") for d in (8, 4, 1)]
    today = Course.of(SPEC, doses, NOW)
    booked = Course.of(SPEC, doses, NOW + dt.timedelta(days=3))
    assert today.doses_within(168) == 2 and booked.doses_within(168) == 1
    assert booked.since_last_h() == pytest.approx(96.0)
    far = Course.of(SPEC, doses, NOW + dt.timedelta(days=30))
    assert far.phase == "maintenance" and today.phase == "induction"


def test_no_doses_is_no_course() -> None:
    course = Course.of(SPEC, [], NOW)
    assert not course.has_prior and course.phase == "none" and course.new_course

