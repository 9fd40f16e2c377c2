"""Values as EHRs send them (issue 16 items 4-7): reduced-precision dates, units, code-system OIDs, order doses.

Unit tests of the date-interval, unit and code-system code, and metamorphic checks over the vendor-shape rule
cases (written as Epic/Cerner/HL7-style JSON, not the shorthand): rewriting system URIs as OIDs, moving every
timestamp to another offset, or reducing a full date to a precision whose bounds do not straddle a threshold
must not change the cards.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from adapters.fhir.dates import bounds
from protocol_engine.authoring.vignette import build_request, when
from protocol_engine.core import units
from protocol_engine.core.durations import whole_years
from protocol_engine.core.ranges import _straddles
from protocol_engine.core.templates import Span, environment
from protocol_engine.core.valuesets import SYSTEMS, canonical_system
from protocol_engine.hooks.pipeline import ServiceRuntime, build_runtime, run
from protocol_engine.pack.packset import PackSet, load_packset
from protocol_engine.pack.yamlsource import load, plain

ROOT = Path(__file__).resolve().parent.parent
UTC = dt.UTC


@cache
def _loaded() -> tuple[PackSet, dict[str, ServiceRuntime]]:
    packset, diags = load_packset(ROOT / "rules")
    assert packset is not None, "\n".join(d.render() for d in diags)
    return packset, build_runtime(packset)


# -- FHIR dates as intervals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "earliest", "latest"), [
    ("2009", dt.datetime(2009, 1, 1, tzinfo=UTC), dt.datetime(2009, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2009-05", dt.datetime(2009, 5, 1, tzinfo=UTC), dt.datetime(2009, 5, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2024-02", dt.datetime(2024, 2, 1, tzinfo=UTC), dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2023-02", dt.datetime(2023, 2, 1, tzinfo=UTC), dt.datetime(2023, 2, 28, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2026-11-29", dt.datetime(2026, 11, 29, tzinfo=UTC), dt.datetime(2026, 11, 29, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2026-08-03T10:00:00+05:30", dt.datetime(2026, 8, 3, 4, 30, tzinfo=UTC), dt.datetime(2026, 8, 3, 4, 30, tzinfo=UTC)),
    ("2026-08-03T04:30:00Z", dt.datetime(2026, 8, 3, 4, 30, tzinfo=UTC), dt.datetime(2026, 8, 3, 4, 30, tzinfo=UTC)),
    ("2026-08-03T04:30:00.125-00:00", dt.datetime(2026, 8, 3, 4, 30, 0, 125000, tzinfo=UTC),
     dt.datetime(2026, 8, 3, 4, 30, 0, 125000, tzinfo=UTC)),
])
def test_bounds_of_fhir_dates(text: str, earliest: dt.datetime, latest: dt.datetime) -> None:
    assert bounds(text) == (earliest, latest)


@pytest.mark.parametrize("text", ["", "20", "2026-13", "2026-02-30", "2026-1", "12/05/2009", "yesterday",
                                  "2026-08-03T25:00:00Z", "2026-W05"])
def test_unreadable_dates_have_no_bounds(text: str) -> None:
    assert bounds(text) is None


def test_bounds_of_python_values() -> None:
    day = dt.date(2009, 5, 3)
    assert bounds(day) == (dt.datetime(2009, 5, 3, tzinfo=UTC), dt.datetime(2009, 5, 3, 23, 59, 59, 999999, tzinfo=UTC))
    naive = dt.datetime(2026, 1, 2, 3, 4)
    assert bounds(naive) == (naive.replace(tzinfo=UTC), naive.replace(tzinfo=UTC))
    assert bounds(None) is None and bounds(True) is None and bounds(2009) is None


@pytest.mark.parametrize(("birth", "on", "years"), [
    (dt.date(2008, 11, 21), dt.date(2026, 11, 21), 18),  # birthday today
    (dt.date(2008, 11, 22), dt.date(2026, 11, 21), 17),
    (dt.date(2008, 2, 29), dt.date(2026, 2, 28), 17),  # a leap-day birthday: 18 on 1 March
    (dt.date(2008, 2, 29), dt.date(2026, 3, 1), 18),
])
def test_whole_years(birth: dt.date, on: dt.date, years: int) -> None:
    assert whole_years(birth, on) == years


# -- code systems --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("written", "canonical"), [
    ("urn:oid:2.16.840.1.113883.6.88", SYSTEMS["RXNORM"]),
    ("2.16.840.1.113883.6.88", SYSTEMS["RXNORM"]),
    ("urn:oid:2.16.840.1.113883.6.1", SYSTEMS["LOINC"]),
    ("urn:oid:2.16.840.1.113883.6.96", SYSTEMS["SNOMED"]),
    ("urn:oid:2.16.840.1.113883.6.90", SYSTEMS["ICD10"]),
    ("urn:oid:2.16.840.1.113883.6.3", SYSTEMS["ICD10"]),
    ("http://hl7.org/fhir/sid/icd-10", SYSTEMS["ICD10"]),
    ("urn:oid:2.16.840.1.113883.6.69", "http://hl7.org/fhir/sid/ndc"),
    ("urn:oid:2.16.840.1.113883.6.8", "http://unitsofmeasure.org"),
    ("http://loinc.org/", SYSTEMS["LOINC"]),
    ("http://loinc.org", SYSTEMS["LOINC"]),
    ("urn:oid:2.16.840.1.113883.6.238", "urn:oid:2.16.840.1.113883.6.238"),  # CDC race: not LOINC
])
def test_canonical_system(written: str, canonical: str) -> None:
    assert canonical_system(written) == canonical


def test_oid_and_who_codes_find_the_same_value_sets() -> None:
    packset, _ = _loaded()
    index = packset.packs[0].index
    assert index.members_of_code("urn:oid:2.16.840.1.113883.6.88", "6130") == index.members_of_code(
        SYSTEMS["RXNORM"], "6130") != set()
    assert "psychosis" in index.members_of_code("http://hl7.org/fhir/sid/icd-10", "F20.0")
    assert "psychosis" in index.members_of_code("urn:oid:2.16.840.1.113883.6.3", "F200")
    # The race code 2106-3 in its own system is not the LOINC pregnancy test 2106-3.
    assert not index.members_of_code("urn:oid:2.16.840.1.113883.6.238", "2106-3")


# -- units ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("measure", "unit", "value", "expected"), [
    ("alt", "IU/L", 150, 150.0),
    ("alt", "[IU]/L", 150, 150.0),
    ("alt", "U/L", 150, 150.0),
    ("alt", "ukat/L", 1, 60.0),  # 1 microkatal = 60 micromol/min
    ("weight", "lbs", 154, 69.853),
    ("weight", "[lb_av]", 154, 69.853),
    ("weight", "g", 70000, 70.0),
    ("heart-rate", "bpm", 80, 80.0),
    ("heart-rate", "{beats}/min", 80, 80.0),
    ("blood-pressure", "mmHg", 120, 120.0),
    ("blood-pressure", "kPa", 16, 120.01),
])
def test_measure_units_convert(measure: str, unit: str, value: float, expected: float) -> None:
    from protocol_engine.core.records import Quantity

    packset, _ = _loaded()
    deriver = packset.packs[0].deriver
    converted, problem = deriver.reading_builder.convert(deriver.p.measures[measure], Quantity(value, unit))
    assert problem == "" and converted is not None and round(converted, 3) == expected


@pytest.mark.parametrize(("unit", "problem"), [("mIU/dose", "not convertible"), (None, "unit missing"),
                                                ("mg", "not convertible")])
def test_unknown_units_are_not_guessed(unit: str | None, problem: str) -> None:
    from protocol_engine.core.records import Quantity

    packset, _ = _loaded()
    deriver = packset.packs[0].deriver
    converted, why = deriver.reading_builder.convert(deriver.p.measures["alt"], Quantity(300, unit))
    assert converted is None and problem in why


def test_hcg_spellings_reach_the_quantitative_threshold() -> None:
    """30 mIU/mL is 30 IU/L: positive at the 25 IU/L threshold whatever the spelling."""
    from protocol_engine.core.records import Quantity

    packset, _ = _loaded()
    deriver = packset.packs[0].deriver
    hcg = deriver.p.measures["hcg"]
    for unit in ("mIU/mL", "m[IU]/mL", "mIU/ml", "IU/L", "[IU]/L"):
        assert deriver.reading_builder.presence(hcg, Quantity(30, unit), None) is True, unit
        assert deriver.reading_builder.presence(hcg, Quantity(20, unit), None) is False, unit
    assert deriver.reading_builder.presence(hcg, Quantity(30, "mIU/dose"), None) is None


def test_the_unit_table_lives_in_the_protocol_file() -> None:
    packset, _ = _loaded()
    table = packset.packs[0].protocol.units
    assert table["mIU/mL"] == "m[IU]/mL"
    for ucum in table.values():
        assert units.is_ucum(ucum), ucum  # every spelling maps onto a real UCUM code


# -- ranges --------------------------------------------------------------------------------------------------------
def test_span_prints_as_a_range_and_compares_as_its_low_end() -> None:
    age = Span(16, 17)
    assert age < 18 and float(age) == 16.0 and str(age) == "16-17"
    env = environment()
    assert env.from_string("{{ a|num }} / {{ h|span }} / {{ d|span }}").render(
        a=age, h=Span(2, 26), d=Span(24 * 173.4, 24 * 204.4)) == "16-17 / 2-26 h / 173.4-204.4 days"


def test_straddling_is_read_from_the_rule_thresholds() -> None:
    packset, _ = _loaded()
    rules = {r.id: r for r in packset.packs[0].rules}
    patient = {"t": "patient", "ranges": {"age": [17, 18]}}
    assert _straddles(rules["CI-17"], patient)
    assert not _straddles(rules["CI-17"], {"t": "patient", "ranges": {"age": [16, 17]}})
    assert not _straddles(rules["CI-15"], patient)  # CI-15 reads no age


# -- metamorphic checks over the vendor-shape cases ----------------------------------------------------------------
VENDOR_FILES = ["contraindications/CI-05-severe-hypertension.test.yaml", "contraindications/CI-15-pregnancy.test.yaml",
                "contraindications/CI-17-under-18.test.yaml", "data-quality/DQ-02-unreadable-record.test.yaml",
                "data-quality/DQ-04-too-imprecise.test.yaml", "dosing/DOS-02-short-infusion.test.yaml",
                "dosing/DOS-04-esketamine-dose.test.yaml", "timing/TIM-03-esketamine-frequency.test.yaml"]
OIDS = {SYSTEMS["RXNORM"]: "urn:oid:2.16.840.1.113883.6.88", SYSTEMS["LOINC"]: "urn:oid:2.16.840.1.113883.6.1",
        SYSTEMS["SNOMED"]: "urn:oid:2.16.840.1.113883.6.96", SYSTEMS["ICD10"]: "urn:oid:2.16.840.1.113883.6.90",
        "http://unitsofmeasure.org": "urn:oid:2.16.840.1.113883.6.8"}
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")


def _vendor_cases() -> list[Any]:
    params = []
    for name in VENDOR_FILES:
        data, diags = load(ROOT / "rules" / "ketamine" / name)
        assert not diags
        raw = plain(data)
        defaults = raw.get("defaults") or {}
        for case in raw["cases"]:
            merged = {**defaults, **case, "given": list(defaults.get("given") or []) + list(case.get("given") or [])}
            params.append(pytest.param(merged, raw["now"], id=f"{raw['rule']}: {case['name']}"))
    return params


def _answer(case: dict[str, Any], now: dt.datetime, request: dict[str, Any] | None = None) -> list[tuple[str, ...]]:
    packset, runtimes = _loaded()
    hook = case.get("hook", "order-sign")
    sid, rt = next((k, v) for k, v in runtimes.items() if v.service.hook == hook)
    request = request or build_request(case, rt, now)
    cards = run(runtimes, packset.revision, sid, json.loads(json.dumps(request)), now).cards
    return sorted((c["extension"]["protocol-engine"]["rule"], c["indicator"], c["summary"]) for c in cards)


def _walk(node: Any, change: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                node[key] = change(key, value)
            else:
                _walk(value, change)
    elif isinstance(node, list):
        for item in node:
            _walk(item, change)


def _oids(request: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(request)
    _walk(out, lambda key, value: OIDS.get(value, value) if key == "system" else value)
    return out


def _offset(request: dict[str, Any], hours: float) -> dict[str, Any]:
    zone = dt.timezone(dt.timedelta(hours=hours))

    def move(key: str, value: str) -> str:
        if not _INSTANT.match(value):
            return value
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(zone).isoformat()

    out = copy.deepcopy(request)
    _walk(out, move)
    return out


@pytest.mark.parametrize(("case", "now"), _vendor_cases())
def test_oids_and_offsets_do_not_change_the_cards(case: dict[str, Any], now: str) -> None:
    at = when(now, dt.datetime.now(UTC))
    _, runtimes = _loaded()
    rt = next(v for v in runtimes.values() if v.service.hook == case.get("hook", "order-sign"))
    request = build_request(case, rt, at)
    before = _answer(case, at, request)
    assert _answer(case, at, _oids(request)) == before, "URI -> OID changed the cards"
    assert _answer(case, at, _offset(request, 5.5)) == before, "Z -> +05:30 changed the cards"
    assert _answer(case, at, _offset(request, -7)) == before, "Z -> -07:00 changed the cards"


def _with_birth(request: dict[str, Any], birth: str) -> dict[str, Any]:
    out = copy.deepcopy(request)
    for value in out["prefetch"].values():
        if isinstance(value, dict) and value.get("resourceType") == "Patient":
            value["birthDate"] = birth
    return out


@pytest.mark.parametrize("years", [16, 17, 18, 19, 40, 64, 65, 66])
@pytest.mark.parametrize("precision", [4, 7])
def test_reduced_birth_dates_agree_with_full_dates_unless_they_straddle(years: int, precision: int) -> None:
    """For each full birth date a reduced one covers: when the earliest and the latest full dates give the same
    cards, the reduced date gives those cards; when they differ, it gives DQ-04 instead of either."""
    at = dt.datetime(2026, 11, 21, 10, tzinfo=UTC)
    case = {"hook": "order-sign", "patient": {"birthDate": f"-{years}y", "gender": "male"},
            "order": {"medication": "RXNORM#2201625 esketamine", "dose": "56 mg", "route": "SNOMED#46713006 Nasal route"},
            "given": [{"observation": "LOINC#85354-9", "at": "-30m",
                       "components": {"LOINC#8480-6": "122 mm[Hg]", "LOINC#8462-4": "78 mm[Hg]"}}]}
    _, runtimes = _loaded()
    rt = next(v for v in runtimes.values() if v.service.hook == "order-sign")
    request = build_request(case, rt, at)
    full = next(v["birthDate"] for v in request["prefetch"].values()
                if isinstance(v, dict) and v.get("resourceType") == "Patient")
    reduced = full[:precision]
    low, high = bounds(reduced) or (None, None)
    assert low is not None and high is not None
    first = _answer(case, at, _with_birth(request, low.date().isoformat()))
    last = _answer(case, at, _with_birth(request, high.date().isoformat()))
    got = _answer(case, at, _with_birth(request, reduced))
    rules = {r for r, _, _ in got}
    assert "DQ-03" not in rules  # a partial birth date is never "missing"
    if {r for r, _, _ in first} == {r for r, _, _ in last}:
        assert {r for r, _, _ in got} == {r for r, _, _ in first}
    else:
        assert "DQ-04" in rules
        undecided = {r for r, _, _ in first} ^ {r for r, _, _ in last}
        assert not undecided & rules
