"""What the speed work must not change: memoised answers equal computed ones, caches stay bounded."""

from __future__ import annotations

from typing import Any

from protocol_engine import valuesets
from protocol_engine.valuesets import SYSTEMS, ValueSet, ValueSetIndex


def _uncached(index: ValueSetIndex, system: str, code: str) -> set[str]:
    system = valuesets.canonical_system(system)
    norm = valuesets.normalise_code(system, code)
    found = index._lookup(index._exact, index._prefix, system, norm)
    if found:
        found -= index._lookup(index._exclude_exact, index._exclude_prefix, system, norm)
    return found


def test_remembered_code_answers_equal_computed_ones_for_every_catalogue_code(loaded: Any) -> None:
    index = loaded.runtimes["ketamine-order-sign"].pack.index
    probes = [(system, code.rstrip("*")) for vs in index.valuesets.values() for system, code in vs.codes]
    probes += [(system, code + "9") for system, code in probes[:200]]  # under a prefix, or not
    probes += [(SYSTEMS["ICD10"], "f33.2"), (SYSTEMS["ICD10"], "F332"), (SYSTEMS["LOINC"], "no-such-code")]
    assert len(probes) > 100
    for _ in range(2):  # the second pass answers from memory
        for system, code in probes:
            assert index.members_of_code(system, code) == _uncached(index, system, code), (system, code)


def test_exclusions_still_apply_from_memory() -> None:
    vs = ValueSet("psychosis", "1", "Psychosis", codes=[(SYSTEMS["ICD10"], "F2*")],
                  excludes=[(SYSTEMS["ICD10"], "F21")])
    index = ValueSetIndex([vs])
    for _ in range(2):
        assert index.members_of_code(SYSTEMS["ICD10"], "F20.9") == {"psychosis"}
        assert index.members_of_code(SYSTEMS["ICD10"], "F21") == set()


def test_a_stream_of_made_up_codes_does_not_grow_the_memo_without_bound(monkeypatch: Any) -> None:
    monkeypatch.setattr(valuesets, "CODE_MEMO_MAX", 100)
    index = ValueSetIndex([ValueSet("x", "1", "X", codes=[(SYSTEMS["LOINC"], "1-1")])])
    for i in range(1000):
        index.members_of_code(SYSTEMS["LOINC"], f"made-up-{i}")
        assert len(index._code_memo) <= 100
    assert index.members_of_code(SYSTEMS["LOINC"], "1-1") == {"x"}


def test_odd_code_shapes_answer_nothing_rather_than_fail() -> None:
    index = ValueSetIndex([ValueSet("x", "1", "X", codes=[(SYSTEMS["LOINC"], "1-1")])])
    odd: list[Any] = [(None, "1-1"), (SYSTEMS["LOINC"], None), (SYSTEMS["LOINC"], ["1-1"]), ({"a": 1}, "1-1")]
    for system, code in odd:
        assert index.members(((system, code),), ()) == set()
