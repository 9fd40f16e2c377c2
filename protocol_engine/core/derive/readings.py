"""Readings of the protocol's measures (G1-G5): observations -> Reading, the governing reading, measurement facts.

`ReadingBuilder` turns one ObservationRecord into a Reading (unit conversion G3, presence, a BP panel);
`Readings` is one measure's readings, newest first, built only as far as a caller iterates (pairing standalone
halves, G4); `Measurements` collects them from the chart, picks the governing reading (G5, borrowing a missing
half of a pair) and writes the `measurement`, `unreadable` and `future` facts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import display, units
from ..model import Fact, Rule
from ..records import Chart, Concept, DataIssue, LazyObservation, ObservationRecord, Quantity
from ..valuesets import ValueSetIndex
from .common import HOUR_S, Semantics, at_text, elapsed_range, fmt_num, fmt_time, hours_since

if TYPE_CHECKING:  # the pack's typed declarations; derive reads them, the pack layer builds them
    from ...pack.protocol import Measure, Protocol

_SET_ASIDE = frozenset({"registered", "preliminary", "unknown"})  # a measurement, not yet or not surely final
OBSERVATION_STATUSES = frozenset({"registered", "preliminary", "final", "amended", "corrected", "cancelled",
                                  "entered-in-error", "unknown"})



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



class ReadingBuilder:
    """One observation -> one Reading of a measure, and the texts describing a reading (pure, per rule set)."""

    def __init__(self, protocol: Protocol, index: ValueSetIndex) -> None:
        self.p = protocol
        self.index = index
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
    def convert(self, m: Measure, q: Quantity, half: str = "value") -> tuple[float | None, str]:
        if q.absent is not None:
            return None, f"value absent (dataAbsentReason {q.absent})"
        if q.problem:
            return None, q.problem
        if q.value is None:
            return None, "value is not numeric"
        if m.kind == "score":
            if q.unit in (None, "", "{score}", "1", "{Score}"):
                return self.plausible(m, q, q.value, half)
            return None, f"unit '{q.unit}' is not a score unit"
        if not q.unit:
            return None, "unit missing"
        unit = self.ucum(q.unit, m)
        target = m.unit or unit
        f = units.factor(unit, target)
        if f is None:
            return None, f"unit '{q.unit}' is not convertible to {display.unit(target, self.p.display_units)}"
        return self.plausible(m, q, q.value * f, half)

    def plausible(self, m: Measure, q: Quantity, value: float, half: str = "value") -> tuple[float | None, str]:
        """A converted value inside the plausible range of the measure (of a pair's `half`); outside it the value
        is not used (as an unreadable one is not) and the problem quotes it as sent: 'value 0 kg is outside the
        plausible range 0.2-650 kg'."""
        bounds = m.plausible.get(half)
        if bounds is None or bounds[0] <= value <= bounds[1]:
            return value, ""
        low, high = bounds
        def written(unit: str | None) -> str:  # as describe_reading writes units: "80/min", "95%", "70 kg"
            shown = display.unit(unit, self.p.display_units) if unit else ""
            return ("" if shown.startswith(("%", "/")) else " ") + shown if shown else ""

        sent = display.number(q.value) + written(self.ucum(q.unit, m) if q.unit else None)
        return None, (f"value {sent} is outside the plausible range "
                      f"{display.number(low)}-{display.number(high)}{written(m.unit)}")

    def presence(self, m: Measure, q: Quantity, interp: Concept | None) -> bool | None:
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

    def presence_problem(self, m: Measure, q: Quantity) -> str:
        """Why a qualitative/quantitative result reads as neither positive nor negative, naming what was sent."""
        if q.absent is not None:
            return f"value absent (dataAbsentReason {q.absent})"
        if q.problem:
            return q.problem
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

    def quote(self, obs: LazyObservation,
               load: Callable[[], ObservationRecord | DataIssue] | None) -> str:
        """The value of a reading not used, as a data-quality card quotes it ('BP 195/115 mmHg'); structured
        values only (and a valueString, the measurement itself); '' when there is none to quote."""
        record = load() if load is not None else None
        if record is None or isinstance(record, DataIssue):
            return ""
        for vs in self.index.members(obs.codes, ()):
            for name, _ in self.measure_of_vs.get(vs, ()):
                m = self.p.measures[name]
                reading = self.panel(m, record) if m.kind == "pair" else self.single(m, record)
                if reading.readable:
                    return self.describe_reading(m, reading, display.Local()).split(", ")[0]  # the value only
                if record.value.text is not None and record.value.coded is None:
                    return f"{m.label} '{record.value.text}' (as text)"
                return f"{m.label} (value not readable)"
        return ""

    def single(self, m: Measure, obs: ObservationRecord) -> Reading:
        if m.kind == "presence":
            positive = self.presence(m, obs.value, obs.interpretation)
            if positive is None:
                return Reading(m.name, obs.time, [obs.ref], {}, readable=False,  # type: ignore[arg-type]
                               problem=self.presence_problem(m, obs.value))
            values = {"value": obs.value.value} if obs.value.value is not None else {}
            return Reading(m.name, obs.time, [obs.ref], values, positive=positive,  # type: ignore[arg-type]
                           latest=obs.time_latest, unit=self.ucum(obs.value.unit, m) if obs.value.unit else None)
        value, problem = self.convert(m, obs.value)
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

    def panel(self, m: Measure, obs: ObservationRecord) -> Reading:
        assert m.first and m.second
        values: dict[str, float] = {}
        problems = []
        for concept, q in obs.components:
            members = self.index.members(concept.pairs(), ())
            for fieldname, vs in (m.first, m.second):
                if vs in members:
                    value, problem = self.convert(m, q, fieldname)
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

    def describe_borrowed(self, m: Measure, r: Reading, local: display.Local) -> str:
        """'the diastolic (110 mmHg) was taken from the reading of today 07:14 UTC, Observation/bp-1'."""
        parts = [f"the {half} ({display.quantity(r.values[half], m.unit, self.p.display_units)}) was taken from "
                 f"the reading of {fmt_time(local, src.time, src.latest)}, {', '.join(src.refs)}"
                 for half, src in r.borrowed.items()]
        return "; ".join(parts)

    def describe_reading(self, m: Measure, r: Reading, local: display.Local) -> str:
        shown = display.unit(m.unit, self.p.display_units)
        unit = ("" if shown.startswith(("%", "/")) else " ") + shown if shown else ""
        if m.kind == "pair" and m.first and m.second:
            a = r.values.get(m.first[0])
            b = r.values.get(m.second[0])
            value = display.pair_text(a, b, shown, m.first[0], m.second[0])
            if r.borrowed:  # say which half is older, and where it came from
                own = [ref for ref in r.refs if not any(ref in b.refs for b in r.borrowed.values())]
                return (f"{m.label} {value}, {fmt_time(local, r.time, r.latest)}, {', '.join(own)} "
                        f"({self.describe_borrowed(m, r, local)})")
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
        return f"{m.label} {value}, {fmt_time(local, r.time, r.latest)}, {', '.join(r.refs)}"



class Measurements:
    """The chart's observations -> each measure's Readings, governing reading and facts (G1, G5)."""

    def __init__(self, builder: ReadingBuilder, semantics: Semantics, rules: Iterable[Rule] = ()) -> None:
        self.build = builder
        self.p = builder.p
        self.index = builder.index
        self.sem = semantics
        rules = list(rules)
        self.read_window = read_windows(rules)
        self.borrow_window = read_windows(rules, shortest=True)


    def readings(self, chart: Chart, now: dt.datetime,
                 issues: list[DataIssue]) -> tuple[dict[str, Readings], dict[str, Reading]]:
        """Readings per measure (newest first, validated on demand) and the newest future-dated one."""
        entries: dict[str, list[tuple[dt.datetime, str, LazyObservation]]] = {name: [] for name in self.p.measures}
        future: dict[str, Reading] = {}
        horizon = now + dt.timedelta(hours=self.sem.future_tol_h)
        for obs in chart.observations:
            if obs.status not in self.sem.obs_valid or obs.time is None:
                # G1 ignores a valid non-final status quietly; a reading of a measure the rules need with no
                # status or no readable time is invalid, and reported rather than silently dropped.
                if obs.status in OBSERVATION_STATUSES and obs.time is not None:
                    if obs.status in _SET_ASIDE:
                        self._set_aside(obs, now, issues)
                    continue
                if not self.index.members(obs.codes, ()).intersection(self.build.measure_of_vs):
                    continue
                quoted = self.build.quote(obs, obs.relaxed if obs.status not in OBSERVATION_STATUSES else obs.record)
                issues.append(DataIssue(obs.ref, ("no valid status" if obs.status not in OBSERVATION_STATUSES
                                                  else "effective time missing or not a valid FHIR date/dateTime")
                                        + (f" (recorded value {quoted})" if quoted else "")))
                continue
            hits: list[tuple[str, str]] = []
            for vs in self.index.members(obs.codes, ()):
                hits.extend(self.build.measure_of_vs.get(vs, ()))
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
            out[name] = Readings(self.build, self.p.measures[name], items, issues)
        return out, future

    def _set_aside(self, obs: LazyObservation, now: dt.datetime, issues: list[DataIssue]) -> None:
        """A reading not used for its status (G1: preliminary, registered, unknown) inside the read window of its
        measure is said, with its value, never silently left out (a preliminary 195/115 is still a 195/115)."""
        assert obs.time is not None
        for vs in self.index.members(obs.codes, ()):
            for name, _ in self.build.measure_of_vs.get(vs, ()):
                window = self.read_window.get(name)
                ago = hours_since(now, obs.time_latest or obs.time)
                if ago < -self.sem.future_tol_h or (window is not None and ago > window):
                    continue
                m = self.p.measures[name]
                value = self.build.quote(obs, obs.record)
                shown = fmt_time(display.Local(self.sem.zone, now), obs.time, obs.time_latest)
                issues.append(DataIssue(obs.ref, f"{value or m.label}, {shown}, "
                                                 f"status {obs.status}, was not used (only "
                                                 f"{', '.join(sorted(self.sem.obs_valid))} readings are)", name))
                return

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
            if hours_since(now, r.time) > window:  # its earliest instant: certainly inside
                break
            for half in [h for h in missing if h in r.values]:
                best.values[half] = r.values[half]
                best.borrowed[half] = r
                missing.remove(half)
                best.refs.extend(ref for ref in r.refs if ref not in best.refs)
            if not missing:
                break

    def facts(self, readings: dict[str, Readings], future: dict[str, Reading],
              now: dt.datetime) -> tuple[list[Fact], dict[str, Reading]]:
        """The `measurement`, `unreadable` and `future` facts of every measure, and the governing readings."""
        facts: list[Fact] = []
        governing: dict[str, Reading] = {}
        fact: Fact
        local = display.Local(self.sem.zone, now)
        for name, m in self.p.measures.items():
            best, bad = self.governing(m, readings[name], now)
            if best is not None:
                governing[name] = best
                fact = {"t": "measurement", "measure": name, "taken_ago": hours_since(now, best.time),
                        "at": at_text(best.time, best.latest), "refs": best.refs, "unit": m.unit or "",
                        "describe": self.build.describe_reading(m, best, local)}
                if best.borrowed:
                    fact["borrowed"] = self.build.describe_borrowed(m, best, local)
                elapsed_range(fact, "taken_ago", now, best.time, best.latest)
                fact.update(best.values)
                if best.positive is not None:
                    fact["positive"] = best.positive
                if best.uln_ratio is not None:
                    fact["uln_ratio"] = round(best.uln_ratio, 4)
                facts.append(fact)
            if bad is None and best is not None and best.problem:
                bad = best  # the unreadable half of a pair whose other half is used
            if bad is not None:
                ago = hours_since(now, bad.time)
                window = self.read_window.get(name)
                fact = {"t": "unreadable", "measure": name, "taken_ago": ago, "partial": bad.readable,
                        "in_read_window": window is None or hours_since(now, bad.latest or bad.time) <= window,
                        "at": at_text(bad.time, bad.latest), "refs": bad.refs, "problem": bad.problem,
                        "describe": f"{m.label} of {fmt_time(local, bad.time, bad.latest)} cannot be interpreted "
                                    f"({bad.problem}), {', '.join(bad.refs)}"}
                if bad.borrowed:
                    fact["borrowed"] = self.build.describe_borrowed(m, bad, local)
                    fact["describe"] += f"; {fact['borrowed']}"
                elapsed_range(fact, "taken_ago", now, bad.time, bad.latest)
                facts.append(fact)
            if name in future:
                fr = future[name]
                facts.append({"t": "future", "measure": name, "at": fr.time.isoformat(), "refs": fr.refs,
                              "describe": f"{m.label} dated {fmt_time(local, fr.time)} (in the future), "
                                          f"{', '.join(fr.refs)}"})
        return facts, governing


    def measured(self, chart: Chart, refs: set[str], now: dt.datetime) -> dict[str, dict[str, Any]]:
        """For unreadable Observations of a measure: which measure and how old, so a rule can tell a result that
        exists but cannot be read (MON-10: an hCG with no status) from no result at all."""
        found: dict[str, dict[str, Any]] = {}
        if not refs:
            return found
        for obs in chart.observations:
            if obs.ref not in refs:
                continue
            names = [name for vs in self.index.members(obs.codes, ())
                     for name, _ in self.build.measure_of_vs.get(vs, ())]
            if names:
                found[obs.ref] = {"measure": names[0]}
                if obs.time is not None:
                    found[obs.ref]["taken_ago"] = hours_since(now, obs.time)
        return found


def read_windows(rules: Iterable[Rule], shortest: bool = False) -> dict[str, float]:
    """Per measure, the longest (or `shortest`) `taken_ago: {within: ...}` window (hours) of any rule that reads it.

    An unreadable reading of a measure matters as far back as some rule would have used it (hCG over
    30 days for CI-15, transaminases over 90 for CI-18c), so the data-quality cards look back that far.
    A missing half of a pair is borrowed only within the shortest one (see `Measurements.governing`).
    """
    windows: dict[str, float] = {}
    for rule in rules:
        for conj in rule.conjuncts:
            for pattern in (*conj.positives, *conj.negatives):
                if pattern.fact != "measurement":
                    continue
                names = [t.value for t in pattern.tests if t.field == "measure" and t.op == "eq"]
                names += [v for t in pattern.tests if t.field == "measure" and t.op == "in" for v in t.value]
                hours = [float(t.value) for t in pattern.tests if t.field == "taken_ago" and t.op in ("lte", "lt")]
                for name in names:
                    if hours:
                        pick = min if shortest else max
                        windows[name] = pick(windows.get(name, pick(hours)), *hours)
    return windows



class Readings:
    """One measure's readings, newest first, built from observations only as far as a caller iterates."""

    def __init__(self, builder: ReadingBuilder, measure: Measure,
                 entries: list[tuple[dt.datetime, str, LazyObservation]], issues: list[DataIssue]) -> None:
        self.build, self.m, self.entries, self.issues = builder, measure, entries, issues
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
            reading = self.build.single(self.m, record)
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
                return self.build.single(self.m, record)
            if role == "panel":
                return self.build.panel(self.m, record)
            return self._pair(idx, when, role, record)
        return None

    def _pair(self, idx: int, when: dt.datetime, role: str, record: ObservationRecord) -> Reading:
        """G4: a standalone half pairs with the other half taken within the pairing tolerance."""
        value, problem = self.build.convert(self.m, record.value, role)
        problems = [f"{role}: {problem}"] if value is None else []
        reading = Reading(self.m.name, when, [record.ref], {}, latest=record.time_latest)
        if value is not None:
            reading.values[role] = value
        for j in range(idx + 1, len(self.entries)):
            other_when, other_role, other = self.entries[j]
            if (when - other_when).total_seconds() / HOUR_S > self.m.pairing_h:
                break
            if j in self._used or other_role in (role, "panel"):
                continue
            other_record = self._record(other)
            if other_record is None:
                continue
            self._used.add(j)
            other_value, other_problem = self.build.convert(self.m, other_record.value, other_role)
            reading.refs.append(other_record.ref)
            if other_value is None:
                problems.append(f"{other_role}: {other_problem}")
            else:
                reading.values[other_role] = other_value
            break
        # As for a panel: a readable half is used, the unreadable one reported.
        reading.readable, reading.problem = bool(reading.values), "; ".join(problems)
        return reading
