"""The `score` fact (section 3.6): the baseline before the course's first dose, the current score after the last
induction dose, and their change."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from .. import display
from ..model import Fact
from .common import at_text, fmt_num, fmt_time
from .course import Course
from .readings import Readings

if TYPE_CHECKING:
    from ...pack.protocol import Protocol


def score_facts(protocol: Protocol, readings: dict[str, Readings], course: Course,
                local: display.Local | None = None) -> list[Fact]:
    """Section 3.6: baseline before the first dose of the course, current after the last induction dose; times
    shown as `local` says (the deployment's zone, the call's now)."""
    local = local or display.Local()
    spec = protocol.scores
    if not spec or not course.has_prior or course.in_induction:
        return []
    first = course.first.time
    last_induction = course.induction_doses()[-1].time
    window_h = float(spec["baseline_window_h"])  # required, checked and read at load (pack/protocol.py)
    chosen: Fact | None = None
    for instrument in spec.get("instruments", []):
        rs = readings.get(instrument)
        if rs is None:
            continue
        current = rs.newest(after=last_induction)
        base = rs.newest(since=first - dt.timedelta(hours=window_h), until=first)
        fact: Fact = {"t": "score", "instrument": instrument, "has_baseline": base is not None,
                      "has_current": current is not None, "refs": []}
        parts = []
        if base is not None:
            fact["baseline"] = base.values["value"]
            fact["refs"] += base.refs
            parts.append(f"baseline {fmt_num(base.values['value'])} ({fmt_time(local, base.time)}, "
                         f"{', '.join(base.refs)})")
        if current is not None:
            fact["current"] = current.values["value"]
            fact["current_at"] = at_text(current.time, current.latest)
            fact["refs"] += current.refs
            parts.append(f"current {fmt_num(current.values['value'])} ({fmt_time(local, current.time)}, "
                         f"{', '.join(current.refs)})")
        if base is not None and current is not None:
            b, cur = base.values["value"], current.values["value"]
            fact["rise"] = cur - b
            if b > 0:
                fact["change_pct"] = round((b - cur) / b * 100, 2)
        label = protocol.measures[instrument].label if instrument in protocol.measures else instrument
        fact["describe"] = f"{label}: " + ("; ".join(parts) if parts else "no score recorded")
        if chosen is None or (base is not None and not chosen["has_baseline"]):
            chosen = fact
    return [chosen] if chosen else []
