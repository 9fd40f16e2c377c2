"""`course:` of protocol.yaml -> CourseSpec (core/derive/course.py), read once at load time.

Every problem is a positioned Diagnostic: a value the service could not read at request time must never reach a
request.
"""

from __future__ import annotations

from typing import Any

from ..core.derive.course import CourseSpec, Induction, PostDoseCheck
from ..core.durations import parse_hours
from ..core.errors import Diagnostic
from . import yamlsource

_DAY_H = 24.0


def _days(value: Any) -> float | None:
    """A number of days: `28` (days), `28d`, `4w`, `672h`. None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    hours = parse_hours(value)
    return None if hours is None else hours / _DAY_H


def parse_course(node: Any, where: str, drugs: list[str],
                 measures: list[str]) -> tuple[CourseSpec, list[Diagnostic]]:
    """`course:` of protocol.yaml -> CourseSpec, with a positioned diagnostic for every value it cannot read."""
    diags: list[Diagnostic] = []

    def error(pos: tuple[int, int], message: str) -> None:
        diags.append(Diagnostic(where, pos[0], pos[1], "bad-duration" if "duration" in message else "schema",
                                message))

    if node is None:
        return CourseSpec(), []
    if not isinstance(node, dict):
        return CourseSpec(), [Diagnostic(where, *yamlsource.node_pos(node), "schema", "course must be a mapping")]
    known = {"gap", "induction", "post_dose_check", "session"}
    for key in node:
        if key not in known:
            error(yamlsource.key_pos(node, key), f"course: unknown key '{key}' (known: {', '.join(sorted(known))})")
    gap_h = None
    if "gap" not in node:  # the pack says when a course starts over; the engine assumes no clinical pause
        error(yamlsource.node_pos(node), "course.gap is required: the pause after which doses start a new course "
                                         "(a number of days, or like 60d, 8w)")
    else:
        days = _days(node["gap"])
        if days is None or days <= 0:
            error(yamlsource.value_pos(node, "gap"), f"course.gap: '{node['gap']}' is not a positive duration "
                                                     "(a number of days, or like 60d, 8w)")
        else:
            gap_h = days * _DAY_H
    induction: dict[str, Induction] = {}
    ind_node = node.get("induction") or {}
    if not isinstance(ind_node, dict):
        error(yamlsource.value_pos(node, "induction"), "course.induction must map drug names to {doses, days}")
        ind_node = {}
    for drug, spec in ind_node.items():
        if drug not in drugs:
            error(yamlsource.key_pos(ind_node, drug),
                  f"course.induction: '{drug}' is not a drug of this protocol ({', '.join(drugs)})")
            continue
        if not isinstance(spec, dict) or not (set(spec) & {"doses", "days"}) or set(spec) - {"doses", "days"}:
            error(yamlsource.value_pos(ind_node, drug),
                  f"course.induction.{drug}: write {{doses: N}}, {{days: D}} or both")
            continue
        doses = spec.get("doses")
        if doses is not None and (isinstance(doses, bool) or not isinstance(doses, int) or doses < 1):
            error(yamlsource.value_pos(spec, "doses"), f"course.induction.{drug}.doses: '{doses}' is not a "
                                                       "whole number of doses (1 or more)")
            continue
        days = None
        if "days" in spec:
            days = _days(spec["days"])
            if days is None or days <= 0:
                error(yamlsource.value_pos(spec, "days"),
                      f"course.induction.{drug}.days: '{spec['days']}' is not a positive duration "
                      "(a number of days, or like 28d, 4w)")
                continue
        induction[str(drug)] = Induction(doses, days)
    check = None
    check_node = node.get("post_dose_check")
    if check_node is not None:
        if not isinstance(check_node, dict) or not {"measure", "from", "to"} <= set(check_node):
            error(yamlsource.value_pos(node, "post_dose_check"),
                  "course.post_dose_check needs {measure, from, to}")
        elif check_node["measure"] not in measures:
            error(yamlsource.value_pos(check_node, "measure"),
                  f"course.post_dose_check.measure: '{check_node['measure']}' is not a measure of this protocol")
        else:
            bounds = []
            for key in ("from", "to"):  # required: the window is the pack's clinical choice
                hours = parse_hours(check_node.get(key))
                if hours is None or hours < 0:
                    error(yamlsource.value_pos(check_node, key),
                          f"course.post_dose_check.{key}: '{check_node.get(key)}' is not a duration (like 30m, 2h)")
                bounds.append(hours or 0.0)
            if not diags and bounds[0] >= bounds[1]:
                error(yamlsource.value_pos(check_node, "to"), "course.post_dose_check: 'to' must be after 'from'")
            check = PostDoseCheck(str(check_node["measure"]), bounds[0], bounds[1])
    session_h = 0.0
    if "session" in node:
        hours = parse_hours(node["session"])
        if hours is None or hours < 0:
            error(yamlsource.value_pos(node, "session"), f"course.session: '{node['session']}' is not a duration "
                                                         "(like 30m, 1h)")
        else:
            session_h = hours
    return CourseSpec(gap_h, induction, check, session_h), diags
