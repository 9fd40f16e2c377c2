"""What the speed work must not change: memoised answers equal computed ones, caches stay bounded."""

from __future__ import annotations

from typing import Any

import pytest

from protocol_engine.core import valuesets
from protocol_engine.core.valuesets import SYSTEMS, ValueSet, ValueSetIndex


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


# -- fhir.resources validation, each distinct element once per worker --------------------------------

# HL7 FHIR R4 published example "blood-pressure" (observation-example-bloodpressure), trimmed of narrative.
HL7_BLOOD_PRESSURE: dict[str, Any] = {
    "resourceType": "Observation", "id": "blood-pressure",
    "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
    "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:187e0c12-8dd2-67e2-99b2-bf273c878281"}],
    "basedOn": [{"identifier": {"system": "https://acme.org/identifiers", "value": "1234"}}],
    "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                              "code": "vital-signs", "display": "Vital Signs"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9",
                         "display": "Blood pressure panel with all children optional"}],
             "text": "Blood pressure systolic & diastolic"},
    "subject": {"reference": "Patient/example"},
    "effectiveDateTime": "2012-09-17",
    "performer": [{"reference": "Practitioner/example"}],
    "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                    "code": "L", "display": "low"}], "text": "Below low normal"}],
    "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "368209003", "display": "Right arm"}]},
    "component": [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"},
                             {"system": "http://snomed.info/sct", "code": "271649006",
                              "display": "Systolic blood pressure"},
                             {"system": "http://acme.org/devices/clinical-codes", "code": "bp-s",
                              "display": "Systolic Blood pressure"}]},
         "valueQuantity": {"value": 107, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
         "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                         "code": "N", "display": "normal"}], "text": "Normal"}]},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4",
                              "display": "Diastolic blood pressure"}]},
         "valueQuantity": {"value": 60, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
         "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                         "code": "L", "display": "low"}], "text": "Below low normal"}]}],
}


def _corpus() -> list[dict[str, Any]]:
    """HL7's example, the benchmark's EHR-shaped charts (two patients) and the captured-shape rule-test charts."""
    import copy
    import datetime as dt

    from adapters.fhir.normalise import resources_in
    from bench.generate import request

    now = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)
    out = [copy.deepcopy(HL7_BLOOD_PRESSURE)]
    for seed in (1, 2):
        body = request(20, now, seed=seed, patient=f"p{seed}")
        for payload in [*body["prefetch"].values(), body["context"]["draftOrders"]]:
            out.extend(r for r in resources_in(payload) if isinstance(r, dict))
    return out


def _mutations(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """Rewrites of one resource, most of them invalid, each touching one element the memory may already hold."""
    import copy

    out = []
    for path, value in [(("component", 0, "valueQuantity", "value"), True),  # bool where a decimal goes
                        (("component", 0, "valueQuantity", "value"), "107"),
                        (("component", 0, "valueQuantity", "value"), 107.0),
                        (("component", 1, "code", "coding"), [None]),  # null inside a list of complex types
                        (("code", "coding", 0, "system"), 5),
                        (("code", "coding"), {"system": "http://loinc.org"}),  # object where an array goes
                        (("subject", "reference"), ["Patient/example"]),
                        (("valueQuantity",), {"value": 1, "unit": "x", "bogus": 1}),  # unknown element
                        (("effectiveDateTime",), "yesterday"),
                        (("status",), None),
                        (("interpretation", 0, "coding", 0, "code"), "")]:
        mutated = copy.deepcopy(resource)
        target: Any = mutated
        try:
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
        out.append(mutated)
    return out


def _outcome(model: Any, data: dict[str, Any], validate: Any) -> Any:
    from pydantic import ValidationError

    try:
        return ("valid", validate(model, data).model_dump(mode="json"))
    except ValidationError as exc:
        return ("invalid", [(e["loc"], e["type"]) for e in exc.errors()])
    except (ValueError, TypeError) as exc:
        return ("invalid", type(exc).__name__)


def test_remembered_validation_gives_what_fhir_resources_gives_for_valid_and_broken_resources() -> None:
    """Every resource and every mutation, validated twice through the memory and once directly: same outcome."""
    from adapters.fhir import validation
    from adapters.fhir.normalise import MODELS

    validation.clear()
    checked = invalid = 0
    for resource in _corpus():
        model = MODELS.get(resource["resourceType"])
        if model is None:
            continue
        for candidate in [resource, *_mutations(resource)]:
            direct = _outcome(model, candidate, lambda m, d: m.model_validate(d))
            for _ in range(2):  # the second time, from memory where it was valid
                assert _outcome(model, candidate, validation.validate) == direct, candidate.get("id")
            checked += 1
            invalid += direct[0] == "invalid"
    assert checked > 100 and invalid > 30
    assert validation.MEMORY.hits > 100


def test_an_element_seen_valid_elsewhere_does_not_make_a_broken_resource_valid() -> None:
    """The same CodeableConcept, held from a valid Observation, under a resource whose other element is broken."""
    import copy

    from fhir.resources.R4B.observation import Observation
    from pydantic import ValidationError

    from adapters.fhir import validation

    validation.clear()
    good = copy.deepcopy(HL7_BLOOD_PRESSURE)
    validation.validate(Observation, good)
    bad = copy.deepcopy(HL7_BLOOD_PRESSURE)
    bad["component"].append(None)
    for _ in range(2):
        try:
            validation.validate(Observation, bad)
        except ValidationError as exc:
            assert exc.errors()[0]["loc"] == ("component",)
        else:
            raise AssertionError("a null component passed")


def test_the_memory_is_bounded_in_entries_and_age_and_can_be_turned_off(monkeypatch: Any) -> None:
    import time

    from fhir.resources.R4B.observation import Observation

    from adapters.fhir import validation

    try:
        validation.configure(max_entries=50, max_age_s=300)
        for resource in _corpus():
            if resource["resourceType"] == "Observation":
                validation.validate(Observation, resource)
                assert len(validation.MEMORY.entries) <= 50
        validation.configure(max_entries=1000, max_age_s=300)
        validation.validate(Observation, HL7_BLOOD_PRESSURE)
        held = len(validation.MEMORY.entries)
        assert held > 3
        later = time.monotonic() + 301
        monkeypatch.setattr(validation.time, "monotonic", lambda: later)
        misses = validation.MEMORY.misses
        validation.validate(Observation, HL7_BLOOD_PRESSURE)
        assert validation.MEMORY.misses - misses == held  # everything had aged out: validated afresh
        assert all(expiry > later for expiry, _ in validation.MEMORY.entries.values())
        monkeypatch.undo()
        validation.configure(max_entries=0, max_age_s=300)
        validation.validate(Observation, HL7_BLOOD_PRESSURE)
        assert not validation.MEMORY.entries
    finally:
        validation.configure(validation.MAX_ENTRIES, validation.MAX_AGE_S)


def test_a_rule_reload_forgets_every_validated_element(tmp_path: Any) -> None:
    import shutil
    from pathlib import Path

    from fhir.resources.R4B.observation import Observation

    from adapters.fhir import validation
    from protocol_engine.runtime.registry import Registry

    rules = tmp_path / "rules"
    shutil.copytree(Path(__file__).resolve().parent.parent / "rules", rules)
    registry = Registry(rules)
    validation.validate(Observation, HL7_BLOOD_PRESSURE)
    assert validation.MEMORY.entries
    assert registry.reload()
    assert not validation.MEMORY.entries


# -- keep-alive connections spread over the gunicorn workers -----------------------------------------


def _open(port: int, count: int) -> list[Any]:
    import http.client

    conns = []
    for _ in range(count):  # one after another, as a connection pool fills
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        conns.append(conn)
    return conns


@pytest.mark.slow
def test_eight_keep_alive_connections_land_four_on_each_of_two_workers(tmp_path: Any) -> None:
    import time

    from bench.server import Gunicorn

    server = Gunicorn(tmp_path, workers=2).start(timeout=300).wait_for_workers()
    try:
        for _ in range(3):
            conns = _open(server.port, 8)
            time.sleep(0.2)
            spread = server.connections_per_worker()
            assert sorted(spread.values()) == [4, 4], spread
            server.close_and_wait_idle(conns)
    finally:
        server.close()


@pytest.mark.slow
def test_a_killed_worker_does_not_hold_connections_back(tmp_path: Any) -> None:
    """The survivor takes every new connection while the master replaces the dead worker."""
    import os
    import signal

    from bench.server import Gunicorn

    server = Gunicorn(tmp_path, workers=2).start(timeout=300).wait_for_workers()
    try:
        conns = _open(server.port, 2)
        victim, survivor = sorted(server.connections_per_worker())
        os.kill(victim, signal.SIGKILL)
        conns += _open(server.port, 6)  # none waits for the dead worker (each has a 30 s timeout)
        assert server.connections_per_worker().get(survivor, 0) >= 6
        for conn in conns:
            conn.close()
    finally:
        server.close()
