"""Derived facts a protocol declares, computed generically from typed records and `now`.

The protocol's global semantics (valid statuses, look-back, duplicates, unit conversion, course
and phase) are applied here so rules read pre-aggregated facts: the governing reading of each
measure, the course, the order, the score change. Nothing here names a drug or a code.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import display, units
from ..anchors import Anchor
from ..durations import parse_hours, whole_years
from ..model import Fact, Rule
from ..records import (
    Chart,
    Concept,
    DataIssue,
    LazyObservation,
    MedicationRecord,
    ObservationRecord,
    OrderIssue,
    Quantity,
)
from ..valuesets import ValueSetIndex
from .course import Course, Dose

if TYPE_CHECKING:  # the pack's typed declarations; derive reads them, the pack layer builds them
    from ...pack.protocol import Measure, Protocol

_H = 3600.0


def fmt_time(t: dt.datetime, latest: dt.datetime | None = None) -> str:
    """For people: the deployment's zone with its offset, 'today'/'yesterday' against the call's `now`; a time
    recorded as a date only (`latest` the end of that day) as the date, never an invented '00:00 UTC'."""
    return display.when(t, latest=latest)


def at_text(t: dt.datetime, latest: dt.datetime | None) -> str:
    """A fact's `at`: the instant, or the FHIR date as written when only a date was recorded."""
    return display.precision_text(t, latest) or t.isoformat()


def fmt_num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def _as_written(x: float) -> str:
    """A recorded amount as the order wrote it (1.25 mg/kg, 0.125 mg/kg), not rounded to one decimal."""
    return f"{x:.4f}".rstrip("0").rstrip(".")


@dataclass
class Reading:
    """One interpretable or uninterpretable reading of a measure, after unit conversion."""

    measure: str
    time: dt.datetime
    refs: list[str]
    values: dict[str, float]
    positive: bool | None = None
    readable: bool = True
    problem: str = ""  # why it cannot be read; on a readable pair, why one half is missing (partial)
    uln_ratio: float | None = None
    latest: dt.datetime | None = None  # reduced-precision time: `time` is the earliest instant, this the latest
    unit: str | None = None  # a presence result's unit as recorded (UCUM after G3), shown with its value
    # Pair: halves taken from an older reading because the newest lacks them (field -> that reading).
    borrowed: dict[str, Reading] = field(default_factory=dict)


class Deriver:
    """Holds the per-rule-set indexes; `facts()` is pure given (chart, now, hook)."""

    def __init__(self, protocol: Protocol, index: ValueSetIndex, rules: Iterable[Rule] = ()) -> None:
        self.p = protocol
        self.index = index
        rules = list(rules)
        self.read_window = read_windows(rules)
        self.borrow_window = read_windows(rules, shortest=True)
        sem = protocol.semantics  # every key present: the pack layer fills what a pack leaves out (protocol.py)
        self.obs_valid = set(sem["observation_valid_status"])
        self.future_tol_h = parse_hours(sem["future_tolerance"]) or 5 / 60
        self.cond_active = set(sem["condition_active_status"])
        self.cond_excluded = set(sem["condition_excluded_verification"])
        med = sem["medication_active_status"]
        self.med_active = {"request": set(med["request"]), "statement": set(med["statement"])}
        self.med_on_hold = set(sem["medication_on_hold_status"])
        self.admin_status = set(sem["administration_status"])
        self.allergy_active = set(sem["allergy_active_status"])
        self.measure_of_vs: dict[str, list[tuple[str, str]]] = {}
        for m in protocol.measures.values():
            for role, vs in ((("value", m.valueset),) if m.kind != "pair" else
                             (("panel", m.panel), (m.first[0] if m.first else "", m.first[1] if m.first else None),
                              (m.second[0] if m.second else "", m.second[1] if m.second else None))):
                if vs:
                    self.measure_of_vs.setdefault(vs, []).append((m.name, role))
        pos = protocol.presence
        self.positive_words = {w.lower() for w in pos.get("positive", [])}
        self.negative_words = {w.lower() for w in pos.get("negative", [])}
        self.unit_map = protocol.units
        pairs = [(alias, m.unit) for m in protocol.measures.values() if m.unit for alias in m.aliases.values()]
        pairs += [(ucum, m.unit) for m in protocol.measures.values() if m.unit for ucum in self.unit_map.values()]
        pairs += [(ucum, m.positive_at[1]) for m in protocol.measures.values() if m.positive_at
                  for ucum in self.unit_map.values()]
        units.warm(pairs + [(m.unit, m.unit) for m in protocol.measures.values() if m.unit])

    def ucum(self, unit: str, m: Measure | None = None) -> str:
        """G3: the UCUM code for a unit as sent: the measure's aliases, then the protocol's `units:` table."""
        if m is not None and unit in m.aliases:
            return m.aliases[unit]
        return self.unit_map.get(unit) or self.unit_map.get(unit.strip()) or unit.strip()

    # -- observations -------------------------------------------------------------------
    def _convert(self, m: Measure, q: Quantity) -> tuple[float | None, str]:
        if q.absent is not None:
            return None, f"value absent (dataAbsentReason {q.absent})"
        if q.value is None:
            return None, "value is not numeric"
        if m.kind == "score":
            if q.unit in (None, "", "{score}", "1", "{Score}"):
                return q.value, ""
            return None, f"unit '{q.unit}' is not a score unit"
        if not q.unit:
            return None, "unit missing"
        unit = self.ucum(q.unit, m)
        target = m.unit or unit
        f = units.factor(unit, target)
        if f is None:
            return None, f"unit '{q.unit}' is not convertible to {display.unit(target, self.p.display_units)}"
        return q.value * f, ""

    def _presence(self, m: Measure, q: Quantity, interp: Concept | None) -> bool | None:
        words = [q.text] if q.text else []
        if q.coded:
            words += [t for t in q.coded.texts() if t] + [c for _, c, _ in q.coded.codings if c]
        for word in words:
            w = str(word).strip().lower()
            if w in self.positive_words:
                return True
            if w in self.negative_words:
                return False
        if q.value is not None and m.positive_at is not None:
            value, unit = m.positive_at
            f = units.factor(self.ucum(q.unit, m), unit) if q.unit else None
            if f is not None:
                return q.value * f >= value
        if interp is not None:
            for _, code, _ in interp.codings:
                if code and code.lower() in self.positive_words:
                    return True
                if code and code.lower() in self.negative_words:
                    return False
        return None

    def _presence_problem(self, m: Measure, q: Quantity) -> str:
        """Why a qualitative/quantitative result reads as neither positive nor negative, naming what was sent."""
        if q.absent is not None:
            return f"value absent (dataAbsentReason {q.absent})"
        if q.value is not None:
            if m.positive_at is None:
                return f"numeric result {fmt_num(q.value)} with no positive threshold"
            if not q.unit:
                return f"result {fmt_num(q.value)} has no unit"
            target = display.unit(m.positive_at[1], self.p.display_units)
            return f"unit '{q.unit}' is not convertible to {target}"
        if q.coded is not None and (q.coded.codings or q.coded.text):
            return f"coded result '{self.index.label(q.coded)}' is neither positive nor negative"
        if q.text:
            return f"result '{q.text}' is neither positive nor negative"
        return "no result value"

    def readings(self, chart: Chart, now: dt.datetime,
                 issues: list[DataIssue]) -> tuple[dict[str, Readings], dict[str, Reading]]:
        """Readings per measure (newest first, validated on demand) and the newest future-dated one."""
        entries: dict[str, list[tuple[dt.datetime, str, LazyObservation]]] = {name: [] for name in self.p.measures}
        future: dict[str, Reading] = {}
        horizon = now + dt.timedelta(hours=self.future_tol_h)
        for obs in chart.observations:
            if obs.status not in self.obs_valid or obs.time is None:
                # G1 ignores a valid non-final status quietly; a reading of a measure the rules need with no
                # status or no readable time is invalid, and reported rather than silently dropped.
                if obs.status in OBSERVATION_STATUSES and obs.time is not None:
                    if obs.status in _SET_ASIDE:
                        self._set_aside(obs, now, issues)
                    continue
                if not self.index.members(obs.codes, ()).intersection(self.measure_of_vs):
                    continue
                quoted = self._quote(obs, obs.relaxed if obs.status not in OBSERVATION_STATUSES else obs.record)
                issues.append(DataIssue(obs.ref, ("no valid status" if obs.status not in OBSERVATION_STATUSES
                                                  else "effective time missing or not a valid FHIR date/dateTime")
                                        + (f" (recorded value {quoted})" if quoted else "")))
                continue
            hits: list[tuple[str, str]] = []
            for vs in self.index.members(obs.codes, ()):
                hits.extend(self.measure_of_vs.get(vs, ()))
            if not hits:
                continue
            if obs.time > horizon:
                for name, _ in hits:
                    prev = future.get(name)
                    if prev is None or obs.time > prev.time:
                        future[name] = Reading(name, obs.time, [obs.ref], {})
                continue
            for name, role in hits:
                entries[name].append((obs.time, role, obs))
        out = {}
        for name, items in entries.items():
            items.sort(key=lambda e: e[0], reverse=True)
            out[name] = Readings(self, self.p.measures[name], items, issues)
        return out, future

    def _set_aside(self, obs: LazyObservation, now: dt.datetime, issues: list[DataIssue]) -> None:
        """A reading not used for its status (G1: preliminary, registered, unknown) inside the read window of its
        measure is said, with its value, never silently left out (a preliminary 195/115 is still a 195/115)."""
        assert obs.time is not None
        for vs in self.index.members(obs.codes, ()):
            for name, _ in self.measure_of_vs.get(vs, ()):
                window = self.read_window.get(name)
                age = _age_h(now, obs.time_latest or obs.time)
                if age < -self.future_tol_h or (window is not None and age > window):
                    continue
                m = self.p.measures[name]
                value = self._quote(obs, obs.record)
                issues.append(DataIssue(obs.ref, f"{value or m.label}, {fmt_time(obs.time, obs.time_latest)}, "
                                                 f"status {obs.status}, was not used (only "
                                                 f"{', '.join(sorted(self.obs_valid))} readings are)", name))
                return

    def _quote(self, obs: LazyObservation,
               load: Callable[[], ObservationRecord | DataIssue] | None) -> str:
        """The value of a reading not used, as a data-quality card quotes it ('BP 195/115 mmHg'); structured
        values only (and a valueString, the measurement itself); '' when there is none to quote."""
        record = load() if load is not None else None
        if record is None or isinstance(record, DataIssue):
            return ""
        for vs in self.index.members(obs.codes, ()):
            for name, _ in self.measure_of_vs.get(vs, ()):
                m = self.p.measures[name]
                reading = self._panel(m, record) if m.kind == "pair" else self._single(m, record)
                if reading.readable:
                    return self.describe_reading(m, reading).split(", ")[0]
                if record.value.text is not None and record.value.coded is None:
                    return f"{m.label} '{record.value.text}' (as text)"
                return f"{m.label} (value not readable)"
        return ""

    def _single(self, m: Measure, obs: ObservationRecord) -> Reading:
        if m.kind == "presence":
            positive = self._presence(m, obs.value, obs.interpretation)
            if positive is None:
                return Reading(m.name, obs.time, [obs.ref], {}, readable=False,  # type: ignore[arg-type]
                               problem=self._presence_problem(m, obs.value))
            values = {"value": obs.value.value} if obs.value.value is not None else {}
            return Reading(m.name, obs.time, [obs.ref], values, positive=positive,  # type: ignore[arg-type]
                           latest=obs.time_latest, unit=self.ucum(obs.value.unit, m) if obs.value.unit else None)
        value, problem = self._convert(m, obs.value)
        if value is None:
            return Reading(m.name, obs.time, [obs.ref], {}, readable=False, problem=problem)  # type: ignore[arg-type]
        reading = Reading(m.name, obs.time, [obs.ref], {"value": value},  # type: ignore[arg-type]
                          latest=obs.time_latest)
        high = obs.reference_high
        limit = None
        if high is not None and high.value is not None:
            f = units.factor(self.ucum(high.unit, m), m.unit) if (high.unit and m.unit) else 1.0
            limit = high.value * f if f else None
        limit = limit or m.upper_limit
        if limit:
            reading.uln_ratio = value / limit
        return reading

    def _panel(self, m: Measure, obs: ObservationRecord) -> Reading:
        assert m.first and m.second
        values: dict[str, float] = {}
        problems = []
        for concept, q in obs.components:
            members = self.index.members(concept.pairs(), ())
            for fieldname, vs in (m.first, m.second):
                if vs in members:
                    value, problem = self._convert(m, q)
                    if value is None:
                        problems.append(f"{fieldname}: {problem}")
                    else:
                        values[fieldname] = value
        # A panel with one readable half gives that half to the rules (a systolic of 192 alone is severe
        # hypertension); the unreadable half is still reported (`problem` on a readable reading).
        absent = "no components"
        if not obs.components and obs.value.text is not None and obs.value.coded is None:
            absent += f"; the value was recorded as text '{obs.value.text}'"  # valueString "190/110": not guessed
        return Reading(m.name, obs.time, [obs.ref], values, readable=bool(values),  # type: ignore[arg-type]
                       problem="; ".join(problems) or ("" if values else absent), latest=obs.time_latest)

    def governing(self, m: Measure, readings: Readings,
                  now: dt.datetime | None = None) -> tuple[Reading | None, Reading | None]:
        """G5: newest readable reading; same-time readings merge (duplicates once, worse value wins).

        A pair whose newest reading lacks a half (a lone systolic, a panel whose diastolic is absent) takes that
        half from the newest older reading that has it, within the shortest look-back of any rule that reads
        the measure (so no rule sees a half older than its own look-back): a newer lone systolic never hides an
        older 190/110. The missing half is still named (MON-02) and the borrowed one cited.
        """
        same: list[Reading] = []
        unreadable = None
        for r in readings:
            if not r.readable:
                if unreadable is None and not same:
                    unreadable = r
                continue
            if same and r.time != same[0].time:
                break
            same.append(r)
        best = None
        if same:
            top = same[0].time
            best = Reading(m.name, top, [], {}, positive=None)
            pick = max if m.worse == "higher" else min
            for r in same:
                for ref in r.refs:
                    if ref not in best.refs:
                        best.refs.append(ref)
                for key, value in r.values.items():
                    best.values[key] = pick(best.values.get(key, value), value)
                if r.positive is not None:
                    best.positive = bool(best.positive) or r.positive
                best.unit = best.unit or r.unit
                if r.uln_ratio is not None:
                    best.uln_ratio = pick(best.uln_ratio or r.uln_ratio, r.uln_ratio)
                if r.latest is not None:
                    best.latest = max(best.latest or r.latest, r.latest)
            if m.kind == "pair" and m.first and m.second:
                missing = [f for f in (m.first[0], m.second[0]) if f not in best.values]
                problems = [p for r in same for p in r.problem.split("; ") if p and p.split(":")[0] in missing]
                for half in missing:  # a lone half says which half it lacks, not nothing
                    if not any(p.startswith(f"{half}:") for p in problems):
                        problems.append(f"{half}: not recorded")  # none within the pairing window (G4)
                best.problem = "; ".join(problems)
                if missing and now is not None:
                    self._borrow(m, readings, best, missing, now)
        return best, unreadable

    def _borrow(self, m: Measure, readings: Readings, best: Reading, missing: list[str],
                now: dt.datetime) -> None:
        window = self.borrow_window.get(m.name)
        if window is None:
            return
        for r in readings:
            if r.time >= best.time or not r.readable:
                continue
            if _age_h(now, r.time) > window:  # its earliest instant: certainly inside
                break
            for half in [h for h in missing if h in r.values]:
                best.values[half] = r.values[half]
                best.borrowed[half] = r
                missing.remove(half)
                best.refs.extend(ref for ref in r.refs if ref not in best.refs)
            if not missing:
                break

    def describe_borrowed(self, m: Measure, r: Reading) -> str:
        """'the diastolic (110 mmHg) was taken from the reading of today 07:14 UTC, Observation/bp-1'."""
        parts = [f"the {half} ({display.quantity(r.values[half], m.unit, self.p.display_units)}) was taken from "
                 f"the reading of {fmt_time(src.time, src.latest)}, {', '.join(src.refs)}"
                 for half, src in r.borrowed.items()]
        return "; ".join(parts)

    def describe_reading(self, m: Measure, r: Reading) -> str:
        shown = display.unit(m.unit, self.p.display_units)
        unit = ("" if shown.startswith(("%", "/")) else " ") + shown if shown else ""
        if m.kind == "pair" and m.first and m.second:
            a = r.values.get(m.first[0])
            b = r.values.get(m.second[0])
            value = display.pair_text(a, b, shown, m.first[0], m.second[0])
            if r.borrowed:  # say which half is older, and where it came from
                own = [ref for ref in r.refs if not any(ref in b.refs for b in r.borrowed.values())]
                return (f"{m.label} {value}, {fmt_time(r.time, r.latest)}, {', '.join(own)} "
                        f"({self.describe_borrowed(m, r)})")
        elif m.kind == "presence":
            value = "positive" if r.positive else "negative"
            if "value" in r.values:  # "positive (30 mIU/mL)": a number without its unit means nothing
                shown_unit = display.unit(r.unit, self.p.display_units) if r.unit else ""
                value += f" ({display.quantity(r.values['value'], r.unit, self.p.display_units)})" if shown_unit \
                    else f" ({fmt_num(r.values['value'])}, no unit recorded)"
        elif m.kind == "score":  # "PHQ-9 item 9 = 2", not "PHQ-9 item 9 2"
            value = f"= {fmt_num(r.values['value'])}" if "value" in r.values else "?"
        else:
            value = fmt_num(r.values["value"]) + unit if "value" in r.values else "?"
        return f"{m.label} {value}, {fmt_time(r.time, r.latest)}, {', '.join(r.refs)}"

    # -- the whole fact set -------------------------------------------------------------
    def facts(self, chart: Chart, now: dt.datetime, hook: str, anchor: Anchor | None = None) -> list[Fact]:
        anchor = anchor or Anchor("now", now)
        display.NOW.set(now)  # the describe texts say "today 07:13" against this call's time
        facts: list[Fact] = []
        issues = list(chart.issues)
        readings, future = self.readings(chart, now, issues)
        governing: dict[str, Reading] = {}
        fact: Fact
        for name, m in self.p.measures.items():
            best, bad = self.governing(m, readings[name], now)
            if best is not None:
                governing[name] = best
                fact = {"t": "measurement", "measure": name, "age": _age_h(now, best.time),
                        "at": at_text(best.time, best.latest), "refs": best.refs, "unit": m.unit or "",
                        "describe": self.describe_reading(m, best)}
                if best.borrowed:
                    fact["borrowed"] = self.describe_borrowed(m, best)
                _elapsed_range(fact, "age", now, best.time, best.latest)
                fact.update(best.values)
                if best.positive is not None:
                    fact["positive"] = best.positive
                if best.uln_ratio is not None:
                    fact["uln_ratio"] = round(best.uln_ratio, 4)
                facts.append(fact)
            if bad is None and best is not None and best.problem:
                bad = best  # the unreadable half of a pair whose other half is used
            if bad is not None:
                age = _age_h(now, bad.time)
                window = self.read_window.get(name)
                fact = {"t": "unreadable", "measure": name, "age": age, "partial": bad.readable,
                        "in_read_window": window is None or _age_h(now, bad.latest or bad.time) <= window,
                        "at": at_text(bad.time, bad.latest), "refs": bad.refs, "problem": bad.problem,
                        "describe": f"{m.label} of {fmt_time(bad.time, bad.latest)} cannot be interpreted "
                                    f"({bad.problem}), {', '.join(bad.refs)}"}
                if bad.borrowed:
                    fact["borrowed"] = self.describe_borrowed(m, bad)
                    fact["describe"] += f"; {fact['borrowed']}"
                _elapsed_range(fact, "age", now, bad.time, bad.latest)
                facts.append(fact)
            if name in future:
                fr = future[name]
                facts.append({"t": "future", "measure": name, "at": fr.time.isoformat(), "refs": fr.refs,
                              "describe": f"{m.label} dated {fmt_time(fr.time)} (in the future), "
                                          f"{', '.join(fr.refs)}"})
        patient = self._patient(chart, now)
        if patient is not None:
            facts.append(patient)
        facts.extend(self._conditions(chart, now))
        facts.extend(self._medications(chart))
        facts.extend(self._allergies(chart))
        course = self.course(chart, now, anchor)
        course_fact = self._course_fact(course, anchor, readings)
        if any(d.latest is not None for d in course.all_doses):
            _course_ranges(course_fact, self._course_fact(self.course(chart, now, anchor, True), anchor, readings))
        facts.append(course_fact)
        facts.extend(self._orders(chart, hook, governing, course, now))
        facts.extend(self._scores(readings, course))
        for foreign in chart.foreign:
            facts.append({"t": "foreign-record", "refs": [foreign.ref], "problem": foreign.problem,
                          "describe": f"{foreign.ref}: {foreign.problem}"})
        for c in chart.conditions:
            if not any(code for _, code in c.code.pairs()) and c.verification_status not in self.cond_excluded \
                    and (c.clinical_status is None or c.clinical_status in self.cond_active):
                # Diagnoses are matched by code only (matching free text is unsafe); the text is not copied into
                # the trace, the record is named.
                issues.append(DataIssue(c.ref, "the Condition has no code (text only), so it could not be checked "
                                               "against the protocol's contraindications; code it, or review it"))
        for a in chart.administrations:
            if a.start is None and a.status in self.admin_status and self.drug_of(a.medication) is not None:
                # A dose that cannot be placed in time (no effective time, or only a month or year) is not
                # counted in the course; said, not silently left out.
                issues.append(DataIssue(a.ref, "dose time missing or less precise than a day: not counted in "
                                               "the course (timing checks may be incomplete)"))
        # A reading set aside for its status is no result of its measure (MON-10 still asks for a final hCG).
        measured = self._measured(chart, {issue.ref for issue in issues if not issue.set_aside}, now)
        set_aside: dict[str, list[str]] = {}
        for issue in issues:
            if issue.set_aside:
                set_aside.setdefault(f"set_aside_{issue.set_aside}", []).append(f"{issue.ref}: {issue.problem}")
        for fact in facts:  # a card on an absence (MON-01: no BP) names what was set aside: `order.set_aside_<measure>`
            if fact["t"] == "order":
                fact.update({key: "; ".join(texts) for key, texts in set_aside.items()})
        for issue in issues:  # last: readings validated on demand above may have added some
            fact = {"t": "data-issue", "refs": [issue.ref], "problem": issue.problem,
                    "describe": f"{issue.ref}: {issue.problem}"}
            fact.update(measured.get(issue.ref, {}))
            facts.append(fact)
        for i, fact in enumerate(facts):
            fact["n"] = i  # durable_rules treats equal facts as one; every fact must be distinct
        return facts

    def _measured(self, chart: Chart, refs: set[str], now: dt.datetime) -> dict[str, dict[str, Any]]:
        """For unreadable Observations of a measure: which measure and how old, so a rule can tell a result that
        exists but cannot be read (MON-10: an hCG with no status) from no result at all."""
        found: dict[str, dict[str, Any]] = {}
        if not refs:
            return found
        for obs in chart.observations:
            if obs.ref not in refs:
                continue
            names = [name for vs in self.index.members(obs.codes, ()) for name, _ in self.measure_of_vs.get(vs, ())]
            if names:
                found[obs.ref] = {"measure": names[0]}
                if obs.time is not None:
                    found[obs.ref]["age"] = _age_h(now, obs.time)
        return found

    def _patient(self, chart: Chart, now: dt.datetime) -> Fact | None:
        p = chart.patient
        if p is None:
            # No Patient (prefetch `patient: null`, or not this patient's): the age rules cannot run, and DQ-03
            # says so rather than leaving them silently out.
            return {"t": "patient", "refs": [], "birthdate_known": False, "sex": "unknown",
                    "describe": "No Patient record for the patient in context was supplied"}
        fact: Fact = {"t": "patient", "refs": [p.ref], "birthdate_known": p.birth_date is not None,
                      "sex": p.gender or "unknown"}
        if p.birth_date is not None:
            today = now.date()
            oldest = whole_years(p.birth_date, today)  # G13
            youngest = whole_years(p.birth_latest or p.birth_date, today)
            fact["age"] = youngest
            if youngest != oldest:
                fact["ranges"] = {"age": [youngest, oldest]}
                fact["describe"] = (f"Patient aged {youngest}-{oldest} years (birth date {p.birth_text}, "
                                    f"{p.ref})")
            else:
                fact["describe"] = f"Patient aged {youngest} years ({p.ref})"
        else:
            fact["describe"] = f"Patient record has no birth date ({p.ref})"
        return fact

    def _conditions(self, chart: Chart, now: dt.datetime) -> Iterable[Fact]:
        for c in chart.conditions:
            if c.verification_status in self.cond_excluded:
                continue
            if c.onset is not None and c.onset > now + dt.timedelta(hours=self.future_tol_h):
                continue  # G6: onset in the future is ignored
            active = c.clinical_status is None or c.clinical_status in self.cond_active
            for vs in sorted(self.index.members(c.code.pairs(), ())):
                fact: Fact = {"t": "condition", "valueset": vs, "active": active,
                              "clinical_status": c.clinical_status or "unspecified", "refs": [c.ref],
                              "code": self.index.label(c.code),
                              "describe": f"{self.index.label(c.code)} ({c.clinical_status or 'status not recorded'}), "
                                          f"{c.ref}"}
                if c.onset is not None:
                    fact["onset_ago"] = _age_h(now, c.onset)
                    _elapsed_range(fact, "onset_ago", now, c.onset, c.onset_latest)
                yield fact

    def _medications(self, chart: Chart) -> Iterable[Fact]:
        """G8 medicines: active, on hold (rules give the info-level variant), and at order hooks the other
        unsigned draft orders of the order session (`draft`): signed with the protocol order, they become
        active at the same moment, so they are interaction context (see README, order-select)."""
        meds: list[tuple[MedicationRecord, str]] = []
        for med in chart.medications:
            if med.status in self.med_active.get(med.kind, set()):
                meds.append((med, "active"))
            elif med.status in self.med_on_hold:  # a request or statement on hold: not taken now (G8)
                meds.append((med, "on-hold"))
        meds += [(order, "draft") for order, _ in chart.draft_orders if self.drug_of(order.medication) is None]
        for med, status in meds:
            label = "draft, unsigned" if status == "draft" else status
            for vs in sorted(self.index.members(med.medication.pairs(), med.medication.texts())):
                yield {"t": "medication", "valueset": vs, "status": status, "refs": [med.ref],
                       "name": _name(med.medication, self.index),  # what a clinician calls it, for card text
                       "describe": f"{_name(med.medication, self.index)} ({label}), {med.ref}"}

    def _allergies(self, chart: Chart) -> Iterable[Fact]:
        for a in chart.allergies:
            if a.verification_status in self.cond_excluded:
                continue
            if a.clinical_status is not None and a.clinical_status not in self.allergy_active:
                continue
            found: set[str] = set()
            for s in a.substances:
                found |= self.index.members(s.pairs(), s.texts())
            for vs in sorted(found):
                label = self.index.label(a.substances[0]) if a.substances else "substance"
                yield {"t": "allergy", "valueset": vs, "refs": [a.ref],
                       "describe": f"Allergy/intolerance to {label}, {a.ref}"}

    def drug_of(self, concept: Concept) -> str | None:
        """The protocol drug of a medication: by product code, else by ingredient code, else by text."""
        for codes, texts in concept.tiers():
            members = self.index.members(codes, texts)
            for drug, vs in self.p.drugs.items():
                if vs in members:
                    return drug
        return None

    def order_in_scope(self, chart: Chart) -> bool:
        """Whether a draft order in scope is (or may be) a protocol drug; False only when provably none is."""
        if any(selected and self.drug_of(o.medication) for o, selected in chart.draft_orders):
            return True
        return any(self._issue_drug(i) != "" for i in chart.order_issues)

    def _issue_drug(self, issue: OrderIssue) -> str | None:
        """The protocol drug of a draft order that could not be fully read; "" when it is provably none,
        None when it could not be identified at all."""
        if issue.medication is None:
            return None
        drug = self.drug_of(issue.medication)
        if drug is not None:
            return drug
        return "" if issue.identified else None

    def route_label(self, route: str) -> str:
        """The route as clinicians write it ("IV", "intranasal"): the pack's `routes.<name>.label`."""
        if route == "unspecified":
            return "(route not stated)"
        if route == "other":
            return "(route not in the protocol)"
        return self.p.route_labels.get(route, route)

    def route_of(self, concept: Concept | None) -> str:
        if concept is None:
            return "unspecified"
        members = self.index.members(concept.pairs(), concept.texts())
        for route, vs in self.p.routes.items():
            if vs in members:
                return route
        return "other"

    def _doses(self, chart: Chart, horizon: dt.datetime, latest_end: dt.datetime | None = None) -> list[Dose]:
        """G9 prior doses recorded up to `horizon`. A dose recorded as a date only is placed at its day's start,
        or with `latest_end` at its day's end (no later than `latest_end`): the two ends of its range."""
        doses = []
        for a in chart.administrations:
            if a.status not in self.admin_status or a.start is None or a.start > horizon:
                continue
            drug = self.drug_of(a.medication)
            if drug is not None:
                latest = a.start_latest if a.start_latest is not None and a.start_latest > a.start else None
                t = a.start if latest_end is None or latest is None else max(a.start, min(latest, latest_end))
                doses.append(Dose(t, drug, a.status or "", a.ref, self.route_of(a.route), latest))
        return doses

    def course(self, chart: Chart, now: dt.datetime, anchor: Anchor, at_latest: bool = False) -> Course:
        """The one course model (G9, G10) at the anchor; doses recorded after it are not prior doses.

        `at_latest`: doses recorded as a date only placed at the end of their day (no later than the anchor)
        instead of its start; facts read from both courses are ranges (core/ranges.py)."""
        horizon = min(now, anchor.time) + dt.timedelta(hours=self.future_tol_h)
        doses = self._doses(chart, horizon, min(now, anchor.time) if at_latest else None)
        if anchor.planned and doses:  # earlier proposed sessions of the same booking: planned doses of the course
            latest = max(doses, key=lambda d: d.time)
            doses += [Dose(t, latest.drug, "planned", ref, latest.route) for t, ref in anchor.planned]
        return Course.of(self.p.course, doses, anchor.time)

    def _course_fact(self, course: Course, anchor: Anchor, readings: dict[str, Readings]) -> Fact:
        if not course.has_prior:
            return {"t": "course", "doses": 0, "phase": "none", "new_course": True, "has_prior": False,
                    "doses_7d": 0, "refs": [], "until": anchor.phrase(), "describe": "No prior dose recorded"}
        last = course.last
        since = course.since_last_h()
        day = course.course_day()
        phase = course.phase
        refs = [last.ref] + ([anchor.ref] if anchor.ref else [])
        planned = last.status == "planned"  # an earlier proposed session of the same booking
        lead = f"Proposed session (planned {course.drug} dose)" if planned else f"Last {course.drug} dose"
        fact: Fact = {
            "t": "course", "drug": course.drug, "doses": len(course.doses), "phase": phase, "has_prior": True,
            "since_last": since, "new_course": course.new_course,
            "course_day": int(day), "course_week": int(day // 7) + 1,
            "doses_7d": course.doses_within(168.0),
            "induction_complete": phase == "maintenance", "last_at": at_text(last.time, last.latest),
            "last_planned": planned,
            "refs": refs, "until": anchor.phrase(),
            "describe": f"{lead} {fmt_time(last.time, last.latest)} ({_span(since)} {anchor.phrase()}"
                        f"{f' {fmt_time(anchor.time)}' if anchor.ref else ''}, dose {len(course.doses)} of the "
                        f"course, {phase}), {last.ref}",
        }
        check = self.p.course.post_dose_check
        if check and last.status == "completed":
            window = readings.get(check.measure)
            found = window.between(last.time + dt.timedelta(hours=check.from_h),
                                   last.time + dt.timedelta(hours=check.to_h)) if window is not None else []
            fact["last_post_dose_check"] = bool(found)
        return fact

    def _orders(self, chart: Chart, hook: str, governing: dict[str, Reading], course: Course,
                now: dt.datetime) -> list[Fact]:
        """The drug and route in scope: the selected draft orders at order hooks; elsewhere the protocol course.

        Outside order hooks scope comes from active orders of the protocol's drugs first, then the latest
        protocol administrations (their route). A medicine of no protocol drug never enters (or removes) scope.
        """
        sources: list[tuple[MedicationRecord, bool]] = []
        if hook in ("order-select", "order-sign"):
            sources = [(o, True) for o, selected in chart.draft_orders if selected]
        else:
            sources = [(m, False) for m in chart.medications if m.kind == "request"
                       and m.status in self.med_active["request"] and self.drug_of(m.medication) is not None]
        facts: list[Fact] = []
        weight_spec = self.p.order.get("weight") or {}
        weight = governing.get(weight_spec.get("measure", ""))
        weight_window = parse_hours(weight_spec.get("within", "30d")) or 720.0
        weight_kg = None
        if weight is not None and _age_h(now, weight.time) <= weight_window:
            weight_kg = weight.values.get("value")
        for order, draft in sources:
            drug = self.drug_of(order.medication)
            if drug is None:
                continue
            route = self.route_of(order.route)
            if not draft and route == "unspecified" and course.has_prior and course.drug == drug:
                route = course.latest_route()
            fact: Fact = {"t": "order", "drug": drug, "route": route, "draft": draft, "readable": True,
                          "refs": [order.ref], "new_course": course.new_course,
                          "weight_known": weight_kg is not None}
            dose_text = self._dose(order, drug, weight_kg, fact)
            if weight_kg:
                fact["weight"] = weight_kg
            ordered = "" if order.authored is None else (
                f", ordered {display.day(order.authored.date())}" if order.authored_day_only
                else f", ordered {fmt_time(order.authored)}")
            fact["describe"] = (f"{'Draft order' if draft else 'Active order'}: {_name(order.medication, self.index)}"
                                f"{dose_text} {self.route_label(fact['route'])}{ordered}, {order.ref}")
            facts.append(fact)
            if draft:
                unread = [] if "dose" in fact or "dose_per_kg" in fact else ["dose"]
                if "infusion_time" not in fact and "rate" in fact.get("dose_problem", ""):
                    unread.append("infusion_time")
                if fact["route"] in ("unspecified", "other"):
                    unread.append("route")
                if unread:
                    what = " and ".join("infusion time" if u == "infusion_time" else u for u in unread)
                    problem = f"the {what} could not be read"
                    if fact.get("dose_problem"):
                        problem += f" ({fact['dose_problem']})"
                    facts.append(self._order_issue(order.ref, drug, order.medication, problem, unread))
        if not facts and hook not in ("order-select", "order-sign") and course.has_prior:
            # No active protocol order: the patient is on treatment through the course itself.
            route = course.latest_route()
            fact = {"t": "order", "drug": course.drug, "route": route, "draft": False,
                    "new_course": course.new_course, "weight_known": weight_kg is not None,
                    "refs": [course.last.ref],
                    "describe": f"Current {course.drug} course, last dose "
                                f"{fmt_time(course.last.time, course.last.latest)} "
                                f"{self.route_label(route)}, {course.last.ref}"}
            if weight_kg:
                fact["weight"] = weight_kg
            facts.append(fact)
        if hook in ("order-select", "order-sign"):
            facts.extend(self._unreadable_orders(chart, course, weight_kg))
        return facts

    def _unreadable_orders(self, chart: Chart, course: Course, weight_kg: float | None) -> list[Fact]:
        """Draft orders rejected whole (invalid, unresolvable drug). How far they are still evaluated:

        - drug identified from the raw JSON as a protocol drug: an order fact with that drug and nothing
          else (route "unspecified", no dose), so every check on the patient and the drug still runs
          (contraindications, interactions, monitoring, timing); the dose and route checks cannot, and the
          order-issue fact names them;
        - drug provably not a protocol drug: out of scope, like any other order;
        - drug not identifiable: no check can be tied to it; the order-issue fact says so.
        """
        facts: list[Fact] = []
        for issue in chart.order_issues:
            drug = self._issue_drug(issue)
            if drug == "":
                continue
            label = _name(issue.medication, self.index) if issue.medication is not None else "medication not readable"
            if issue.foreign:
                drug = None  # another patient's order: nothing about this patient is judged against it
            # An unidentified drug is "unidentified": no drug-scoped rule matches it, the unscoped DQ rules do.
            facts.append({"t": "order", "drug": drug or "unidentified", "route": "unspecified", "draft": True,
                          "refs": [issue.ref], "new_course": course.new_course,
                          "weight_known": weight_kg is not None, "readable": False,
                          "describe": f"Draft order (not fully readable): {label}, {issue.ref}"})
            fact = self._order_issue(issue.ref, drug, issue.medication, issue.problem,
                                     ["dose", "route"] if drug else ["drug"])
            if issue.foreign:
                fact["foreign"] = True
                fact["describe"] = f"Draft order {issue.ref} ({label}): {issue.problem}"
            facts.append(fact)
        return facts

    def _order_issue(self, ref: str, drug: str | None, medication: Concept | None, problem: str,
                     unread: list[str]) -> Fact:
        label = _name(medication, self.index) if medication is not None and medication != Concept() else None
        if drug and label:  # "ketamine", "esketamine Nasal Spray [Spravato]": the drug once
            what = label if drug.lower() in label.lower() else f"{drug}, {label}"
        else:
            what = drug or (f"{label}, not identified" if label else "drug not identified")
        return {"t": "order-issue", "refs": [ref], "drug": drug or "unidentified", "problem": problem,
                "unread": unread, "checks": "", "describe": f"Draft order {ref} ({what}): {problem}"}

    def _amount(self, q: Quantity, drug: str, per: str,
                concentration: Quantity | None) -> tuple[float | None, str | None]:
        """A dose or rate in mg (per = "") or mg/h (per = "/h"): (value, which of mg or mg/kg it is in).

        Units as ordered are read through the protocol's `units:` table; a count of devices or sprays
        through the drug's `count_units`; a volume (mL, mL/h) through the product's concentration.
        """
        if q.value is None or not q.unit:
            return None, None
        unit = self.ucum(q.unit)
        count = self.p.count_units.get(drug, {}).get(q.unit) or self.p.count_units.get(drug, {}).get(unit)
        if count is not None and not per:
            f = units.factor(count[1], "mg")
            return (q.value * count[0] * f, "mg") if f is not None else (None, None)
        for target in ("mg" + per, "mg/kg" + per):
            f = units.factor(unit, target)
            if f is not None:
                return q.value * f, target.removesuffix(per)
        if concentration is not None and concentration.value and concentration.unit:
            per_volume = units.factor(self.ucum(concentration.unit), "mg/mL")
            f = units.factor(unit, "mL" + per)
            if per_volume is not None and f is not None:
                return q.value * f * concentration.value * per_volume, "mg"
        return None, None

    def _concentration(self, order: MedicationRecord) -> Quantity | None:
        """The product's strength: Medication.ingredient.strength, else an RxNorm-style name (`50 MG/ML`)."""
        if order.concentration is not None:
            return order.concentration
        for text in order.medication.texts():
            found = _STRENGTH.search(text or "")
            if found:
                return Quantity(float(found.group(1)), found.group(2).replace("ML", "mL").replace("MG", "mg"))
        return None

    def _dose(self, order: MedicationRecord, drug: str, weight_kg: float | None, fact: Fact) -> str:
        """Dose (mg, mg/kg) and infusion time of an order into `fact`; the dose as written, for the card.

        A doseRange is judged by its upper bound (`dose_range` says so on the card). A dose or rate whose
        unit cannot be read leaves the field out: the dose checks do not run, and the order's data-quality
        card says so (`dose_problem`).
        """
        q = order.dose
        concentration = self._concentration(order)
        problems = []
        if q is not None:
            value, kind = self._amount(q, drug, "", concentration)
            if q.value is not None and q.value <= 0:
                problems.append(f"dose {fmt_num(q.value)} {q.unit or ''} is not a positive amount".replace("  ", " "))
            elif kind == "mg" and value is not None:
                fact["dose"] = round(value, 3)
                if weight_kg:
                    fact["dose_per_kg"] = round(value / weight_kg, 4)
            elif kind == "mg/kg" and value is not None:
                fact["dose_per_kg"] = round(value, 4)
                if weight_kg:
                    fact["dose"] = round(value * weight_kg, 3)
            elif q.value is None:
                problems.append("dose has no upper bound" if order.dose_low is not None else "dose has no value")
            else:
                problems.append(f"dose unit '{q.unit}' cannot be read" if q.unit else "dose has no unit")
        hours = order.duration_h
        rate = order.rate
        if rate is not None and rate.value is not None and rate.value <= 0:
            problems.append(f"infusion rate {fmt_num(rate.value)} {rate.unit or ''} is not a positive rate"
                            .replace("  ", " "))
        elif hours is None and rate is not None and rate.value:
            # only a concentration stated for the infused product: a vial strength in the name is not the bag's
            value, kind = self._amount(rate, drug, "/h", order.concentration)
            if value and kind == "mg/kg" and weight_kg:
                value, kind = value * weight_kg, "mg"
            if value and kind == "mg" and "dose" in fact:
                hours = fact["dose"] / value
            elif not value and rate.unit and order.concentration is None and units.factor(self.ucum(rate.unit), "mL/h"):
                problems.append(f"infusion time could not be checked: rate {fmt_num(rate.value)} {rate.unit} "
                                "with no concentration stated for the infused product")
            elif not value:
                problems.append(f"infusion rate unit '{rate.unit}' cannot be read" if rate.unit
                                else "infusion rate has no unit")
        if hours is not None:
            fact["infusion_time"] = round(hours, 4)
        if problems:
            fact["dose_problem"] = "; ".join(problems)
        if q is None or q.value is None:
            return ""
        shown = display.unit(q.unit, self.p.display_units, q.value) if q.unit else "(no unit)"
        text = f" {_as_written(q.value)} {shown}"
        if order.dose_low is not None and order.dose_low.value is not None:
            text = f" {_as_written(order.dose_low.value)}-{_as_written(q.value)} {shown}"
            fact["dose_range"] = text.strip()
        return text

    def _scores(self, readings: dict[str, Readings], course: Course) -> list[Fact]:
        """Section 3.6: baseline before the first dose of the course, current after the last induction dose."""
        spec = self.p.scores
        if not spec or not course.has_prior or course.in_induction:
            return []
        first = course.first.time
        last_induction = course.induction_doses()[-1].time
        window_h = parse_hours(spec.get("baseline_window", "30d")) or 720.0
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
                parts.append(f"baseline {fmt_num(base.values['value'])} ({fmt_time(base.time)}, "
                             f"{', '.join(base.refs)})")
            if current is not None:
                fact["current"] = current.values["value"]
                fact["current_at"] = at_text(current.time, current.latest)
                fact["refs"] += current.refs
                parts.append(f"current {fmt_num(current.values['value'])} ({fmt_time(current.time)}, "
                             f"{', '.join(current.refs)})")
            if base is not None and current is not None:
                b, cur = base.values["value"], current.values["value"]
                fact["rise"] = cur - b
                if b > 0:
                    fact["change_pct"] = round((b - cur) / b * 100, 2)
            label = self.p.measures[instrument].label if instrument in self.p.measures else instrument
            fact["describe"] = f"{label}: " + ("; ".join(parts) if parts else "no score recorded")
            if chosen is None or (base is not None and not chosen["has_baseline"]):
                chosen = fact
        return [chosen] if chosen else []


_STRENGTH = re.compile(r"(\d+(?:\.\d+)?)\s*(MG/ML|mg/mL|mg/ml)\b")
_SET_ASIDE = frozenset({"registered", "preliminary", "unknown"})  # a measurement, not yet or not surely final
OBSERVATION_STATUSES = frozenset({"registered", "preliminary", "final", "amended", "corrected", "cancelled",
                                  "entered-in-error", "unknown"})


def read_windows(rules: Iterable[Rule], shortest: bool = False) -> dict[str, float]:
    """Per measure, the longest (or `shortest`) `age: {within: ...}` window (hours) of any rule that reads it.

    An unreadable reading of a measure matters as far back as some rule would have used it (hCG over
    30 days for CI-15, transaminases over 90 for CI-18c), so the data-quality cards look back that far.
    A missing half of a pair is borrowed only within the shortest one (see `Deriver.governing`).
    """
    windows: dict[str, float] = {}
    for rule in rules:
        for conj in rule.conjuncts:
            for pattern in (*conj.positives, *conj.negatives):
                if pattern.fact != "measurement":
                    continue
                names = [t.value for t in pattern.tests if t.field == "measure" and t.op == "eq"]
                names += [v for t in pattern.tests if t.field == "measure" and t.op == "in" for v in t.value]
                hours = [float(t.value) for t in pattern.tests if t.field == "age" and t.op in ("lte", "lt")]
                for name in names:
                    if hours:
                        pick = min if shortest else max
                        windows[name] = pick(windows.get(name, pick(hours)), *hours)
    return windows


def _course_ranges(early: Fact, late: Fact) -> None:
    """The course fact when a dose was recorded as a date only: `early` is read with such doses at the start of
    their day, `late` at its end. Every value that differs becomes a range (core/ranges.py: a rule holding at
    one end only is answered by DQ-04), each end one consistent placement of the doses; the fact keeps the
    late end, the shorter time since the last dose, as `_elapsed_range` does for readings."""
    ranges: dict[str, list[Any]] = {}
    for key, value in early.items():
        if key in ("describe", "refs", "last_at", "until", "t") or isinstance(value, (list, dict)):
            continue
        other = late.get(key)
        if other is not None and other != value:
            ranges[key] = [other, value]
            early[key] = other
    if ranges:
        early["ranges"] = ranges
        early["describe"] = str(early["describe"]).replace(
            f"({_span(float(ranges['since_last'][1]))} ",
            f"({_span(float(ranges['since_last'][0]))} to {_span(float(ranges['since_last'][1]))} ",
            1) if "since_last" in ranges else early["describe"]


def _elapsed_range(fact: Fact, field: str, now: dt.datetime, earliest: dt.datetime,
                   latest: dt.datetime | None) -> None:
    """A reduced-precision time makes an elapsed time a range: [since the latest, since the earliest instant]."""
    if latest is None or latest == earliest:
        return
    low = max(_age_h(now, latest), 0.0)
    fact[field] = low
    fact.setdefault("ranges", {})[field] = [low, _age_h(now, earliest)]


def _age_h(now: dt.datetime, t: dt.datetime) -> float:
    return round((now - t).total_seconds() / _H, 4)


def _span(hours: float) -> str:
    if hours < 48:
        return f"{fmt_num(round(hours, 1))} h"
    return f"{fmt_num(round(hours / 24, 1))} days"


class Readings:
    """One measure's readings, newest first, built from observations only as far as a caller iterates."""

    def __init__(self, deriver: Deriver, measure: Measure,
                 entries: list[tuple[dt.datetime, str, LazyObservation]], issues: list[DataIssue]) -> None:
        self.d, self.m, self.entries, self.issues = deriver, measure, entries, issues
        self._built: list[Reading] = []
        self._pos = 0
        self._used: set[int] = set()

    def __iter__(self) -> Iterator[Reading]:
        i = 0
        while True:
            if i < len(self._built):
                yield self._built[i]
                i += 1
                continue
            reading = self._next()
            if reading is None:
                return
            self._built.append(reading)

    def between(self, start: dt.datetime, end: dt.datetime) -> list[Reading]:
        """Readings taken in [start, end], validating only the observations timed inside it."""
        found = []
        for when, _, obs in self.entries:
            if start <= when <= end:
                record = obs.record()
                if not isinstance(record, DataIssue):
                    found.append(Reading(self.m.name, when, [obs.ref], {}))
        return found

    def newest(self, after: dt.datetime | None = None, since: dt.datetime | None = None,
               until: dt.datetime | None = None) -> Reading | None:
        """The newest readable reading taken after `after`, at or after `since`, at or before `until`.

        Observations timed outside the window are never validated (a long chart holds years of scores).
        """
        def inside(t: dt.datetime) -> bool:
            return (after is None or t > after) and (since is None or t >= since) and (until is None or t <= until)

        if self.m.kind == "pair":  # halves pair across the window edge: walk the paired readings
            return next((r for r in self if r.readable and inside(r.time)), None)
        for when, _, obs in self.entries:
            if until is not None and when > until:
                continue
            if not inside(when):
                return None
            record = self._record(obs)
            if record is None:
                continue
            reading = self.d._single(self.m, record)
            if reading.readable:
                return reading
        return None

    def _record(self, obs: LazyObservation) -> ObservationRecord | None:
        record = obs.record()
        if isinstance(record, DataIssue):
            if record not in self.issues:
                self.issues.append(record)
            return None
        return record

    def _next(self) -> Reading | None:
        while self._pos < len(self.entries):
            idx = self._pos
            self._pos += 1
            if idx in self._used:
                continue
            when, role, obs = self.entries[idx]
            record = self._record(obs)
            if record is None:
                continue
            if self.m.kind != "pair":
                return self.d._single(self.m, record)
            if role == "panel":
                return self.d._panel(self.m, record)
            return self._pair(idx, when, role, record)
        return None

    def _pair(self, idx: int, when: dt.datetime, role: str, record: ObservationRecord) -> Reading:
        """G4: a standalone half pairs with the other half taken within the pairing tolerance."""
        value, problem = self.d._convert(self.m, record.value)
        problems = [f"{role}: {problem}"] if value is None else []
        reading = Reading(self.m.name, when, [record.ref], {}, latest=record.time_latest)
        if value is not None:
            reading.values[role] = value
        for j in range(idx + 1, len(self.entries)):
            other_when, other_role, other = self.entries[j]
            if (when - other_when).total_seconds() / _H > self.m.pairing_h:
                break
            if j in self._used or other_role in (role, "panel"):
                continue
            other_record = self._record(other)
            if other_record is None:
                continue
            self._used.add(j)
            other_value, other_problem = self.d._convert(self.m, other_record.value)
            reading.refs.append(other_record.ref)
            if other_value is None:
                problems.append(f"{other_role}: {other_problem}")
            else:
                reading.values[other_role] = other_value
            break
        # As for a panel: a readable half is used, the unreadable one reported.
        reading.readable, reading.problem = bool(reading.values), "; ".join(problems)
        return reading


def _name(concept: Concept, index: ValueSetIndex) -> str:
    """The medicine's name without its code: the first display, else the text, else the value set's name for its
    code, else the code with its system's name ('RxNorm 308048'), never a bare number."""
    for _system, _code, shown in concept.codings:
        if shown:
            return shown
    if concept.text:
        return concept.text
    for system, code, _ in concept.codings:
        named = index.display_of(system, code)
        if named:
            return named
    return index.label(concept)
