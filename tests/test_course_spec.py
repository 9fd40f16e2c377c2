"""pack/course_spec.py: protocol.yaml's `course:` -> CourseSpec, on small mappings (YAML read with positions).

The clinical values of a course are the pack's to declare: the engine supplies no gap and no post-dose window.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol_engine.core.derive.course import CourseSpec, Induction, PostDoseCheck
from protocol_engine.pack import yamlsource
from protocol_engine.pack.course_spec import parse_course

DRUGS, MEASURES = ["ketamine", "esketamine"], ["blood-pressure"]


def parse(tmp_path: Path, text: str) -> tuple[CourseSpec, list[str]]:
    path = tmp_path / "protocol.yaml"
    path.write_text(text)
    data, diags = yamlsource.load(path)
    assert not diags
    spec, found = parse_course(data["course"], "protocol.yaml", DRUGS, MEASURES)
    return spec, [f"{d.line}:{d.message}" for d in found]


def test_a_full_course_section_reads_into_a_spec(tmp_path: Path) -> None:
    spec, problems = parse(tmp_path, "course:\n  gap: 60d\n  induction: {ketamine: {doses: 6, days: 21}}\n"
                           "  post_dose_check: {measure: blood-pressure, from: 30m, to: 90m}\n  session: 30m\n")
    assert problems == []
    assert spec == CourseSpec(60 * 24.0, {"ketamine": Induction(6, 21.0)}, PostDoseCheck("blood-pressure", 0.5, 1.5),
                              0.5)


def test_without_a_course_section_no_pause_starts_a_new_course() -> None:
    spec, problems = parse_course(None, "protocol.yaml", DRUGS, MEASURES)
    assert problems == [] and spec.gap_h is None and spec.post_dose_check is None


def test_the_gap_is_required_once_course_is_written(tmp_path: Path) -> None:
    _, problems = parse(tmp_path, "course:\n  induction: {ketamine: {doses: 6}}\n")
    assert problems == ["2:course.gap is required: the pause after which doses start a new course "
                        "(a number of days, or like 60d, 8w)"]


@pytest.mark.parametrize("check", ["{measure: blood-pressure}", "{measure: blood-pressure, from: 30m}",
                                   "{measure: blood-pressure, to: 90m}"])
def test_the_post_dose_window_is_required_in_full(tmp_path: Path, check: str) -> None:
    _, problems = parse(tmp_path, f"course:\n  gap: 60d\n  post_dose_check: {check}\n")
    assert problems == ["3:course.post_dose_check needs {measure, from, to}"]
