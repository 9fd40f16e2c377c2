"""The FHIR shorthand of rule test files -> a complete CDS Hooks request (pinned `now`, relative dates).

`given: [{observation: "LOINC#85354-9", at: -30m, components: ...}]` becomes the Bundles of every prefetch key of
the service, `order:` its draft order, `appointments:` / `encounter:` the context of those hooks. Used by the rule
case runner (testing.py), `impact`, the sample patients and the tests' request builders.

Shared fixtures: a `given` entry `{fixture: NAME}` stands for the entries listed under NAME in the pack's
`fixtures.yaml` (`fixtures: {NAME: [given entries]}`); its other keys are added to each of them
(`{fixture: completed-ketamine-induction, route: "SNOMED#47625008 Intravenous route"}`). A name the file does not
define is a compiler-style error of the test file (testing.py), never an empty chart.
"""

from __future__ import annotations

import datetime as dt
import difflib
from pathlib import Path
from typing import Any

from adapters.fhir.prefetch import TEMPLATES

from ..core.durations import parse_hours
from ..core.errors import Diagnostic
from ..core.valuesets import parse_code
from ..hooks.pipeline import ServiceRuntime
from ..pack import yamlsource
from ..pack.shape import did_you_mean

UCUM = "http://unitsofmeasure.org"
FIXTURES_FILE = "fixtures.yaml"  # beside protocol.yaml: the pack's shared `given` entries
# Keys of a `given` entry that place a raw `resource` in its Bundle rather than describe it.
ENTRY_KEYS = ("fullUrl", "mode", "key")
# What each kind of `given` entry may say (expand, medication_request): its kind key first. `validate` and the case
# runner refuse any other key with a positioned error and a did-you-mean (`observaton:` is no chart entry at all).
GIVEN_KEYS: dict[str, tuple[str, ...]] = {
    "observation": ("observation", "id", "status", "at", "value", "components", "reference_high", "interpretation"),
    "condition": ("condition", "id", "status", "verification", "onset"),
    "medication": ("medication", "id", "kind", "status", "route", "dose", "rate", "duration"),
    "administration": ("administration", "id", "status", "at", "route", "dose"),
    "allergy": ("allergy", "id", "status", "verification"),
    "resource": ("resource",),
}


def when(value: Any, now: dt.datetime) -> dt.datetime:
    """`-30m`, `-10d`, `+1h` relative to now, or an absolute ISO time."""
    text = str(value)
    hours = parse_hours(text) if text[:1] in "+-" else None
    if hours is not None:
        return now + dt.timedelta(hours=hours)
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def birth_date(value: Any, now: dt.datetime) -> str:
    text = str(value)
    if text.startswith("-") and text.endswith("y"):
        years = int(text[1:-1])
        day = now.date()
        try:
            return day.replace(year=day.year - years).isoformat()
        except ValueError:  # 29 February
            return day.replace(year=day.year - years, day=28).isoformat()
    if text.startswith(("-", "+")):
        return when(text, now).date().isoformat()
    return text


def concept(code: str) -> dict[str, Any]:
    parsed = parse_code(code)
    if parsed is None:
        return {"text": code}
    system, value, display = parsed
    coding: dict[str, Any] = {"system": system, "code": value}
    if display:
        coding["display"] = display
    out: dict[str, Any] = {"coding": [coding]}
    if display:
        out["text"] = display
    return out


def value_of(value: Any) -> dict[str, Any]:
    """`172 mm[Hg]` -> valueQuantity; `positive` -> valueCodeableConcept; `12` -> unitless quantity."""
    if isinstance(value, bool):
        return {"valueBoolean": value}
    if isinstance(value, (int, float)):
        return {"valueQuantity": {"value": value}}
    text = str(value).strip()
    number, _, unit = text.partition(" ")
    try:
        amount = float(number) if "." in number else int(number)
    except ValueError:
        return {"valueCodeableConcept": {"text": text}}
    quantity: dict[str, Any] = {"value": amount}
    if unit:
        quantity.update({"unit": unit, "system": UCUM, "code": unit}) if unit != "mmHg" else quantity.update(
            {"unit": unit})
    return {"valueQuantity": quantity}


def expand(item: dict[str, Any], now: dt.datetime, patient_id: str, n: int) -> dict[str, Any]:
    """One `given` entry -> one FHIR R4 resource."""
    subject = {"reference": f"Patient/{patient_id}"}
    if "resource" in item:
        return dict(item["resource"])
    if "observation" in item:
        res: dict[str, Any] = {"resourceType": "Observation", "id": item.get("id", f"obs-{n}"),
                               "status": item.get("status", "final"), "code": concept(item["observation"]),
                               "subject": subject}
        if "at" in item:
            res["effectiveDateTime"] = when(item["at"], now).isoformat()
        if "value" in item:
            res.update(value_of(item["value"]))
        if "components" in item:
            res["component"] = [{"code": concept(code), **value_of(v)} for code, v in item["components"].items()]
        if "reference_high" in item:
            res["referenceRange"] = [{"high": value_of(item["reference_high"])["valueQuantity"]}]
        if "interpretation" in item:
            res["interpretation"] = [concept(item["interpretation"])]
        return res
    if "condition" in item:
        res = {"resourceType": "Condition", "id": item.get("id", f"cond-{n}"), "code": concept(item["condition"]),
               "subject": subject}
        status = item.get("status", "active")
        if status is not None:
            res["clinicalStatus"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]}
        verification = item.get("verification", "confirmed")
        res["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]}
        if "onset" in item:
            res["onsetDateTime"] = when(item["onset"], now).isoformat()
        return res
    if "medication" in item:
        kind = item.get("kind", "request")
        if kind == "statement":
            return {"resourceType": "MedicationStatement", "id": item.get("id", f"ms-{n}"),
                    "status": item.get("status", "active"), "medicationCodeableConcept": concept(item["medication"]),
                    "subject": subject}
        return medication_request(item, f"mr-{n}", patient_id, now, item.get("status", "active"))
    if "administration" in item:
        res = {"resourceType": "MedicationAdministration", "id": item.get("id", f"ma-{n}"),
               "status": item.get("status", "completed"), "medicationCodeableConcept": concept(item["administration"]),
               "subject": subject, "effectiveDateTime": when(item.get("at", "-1d"), now).isoformat()}
        dosage: dict[str, Any] = {}
        if "route" in item:
            dosage["route"] = concept(item["route"])
        if "dose" in item:
            dosage["dose"] = value_of(item["dose"])["valueQuantity"]
        if dosage:
            res["dosage"] = dosage
        return res
    if "allergy" in item:
        res = {"resourceType": "AllergyIntolerance", "id": item.get("id", f"al-{n}"), "code": concept(item["allergy"]),
               "patient": subject}
        if item.get("status", "active"):
            res["clinicalStatus"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                "code": item.get("status", "active")}]}
        if "verification" in item:
            res["verificationStatus"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                "code": item["verification"]}]}
        return res
    raise ValueError(f"unknown given entry: {sorted(item)}")


def medication_request(spec: dict[str, Any], default_id: str, patient_id: str, now: dt.datetime,
                       status: str) -> dict[str, Any]:
    if "resource" in spec:  # a MedicationRequest written out in full (vendor shapes: doseRange, OIDs, rates)
        return {"id": spec.get("id", default_id), "status": status, **spec["resource"]}
    res: dict[str, Any] = {"resourceType": "MedicationRequest", "id": spec.get("id", default_id), "status": status,
                           "intent": "order", "medicationCodeableConcept": concept(spec["medication"]),
                           "subject": {"reference": f"Patient/{patient_id}"}, "authoredOn": now.isoformat()}
    dosage: dict[str, Any] = {}
    if "route" in spec:
        dosage["route"] = concept(spec["route"])
    dose_and_rate: dict[str, Any] = {}
    if "dose" in spec:
        dose_and_rate["doseQuantity"] = value_of(spec["dose"])["valueQuantity"]
    if "rate" in spec:
        dose_and_rate["rateQuantity"] = value_of(spec["rate"])["valueQuantity"]
    if dose_and_rate:
        dosage["doseAndRate"] = [dose_and_rate]
    if "duration" in spec:
        minutes = (parse_hours(str(spec["duration"])) or 0) * 60
        dosage["timing"] = {"repeat": {"duration": round(minutes, 3), "durationUnit": "min"}}
    if dosage:
        res["dosageInstruction"] = [dosage]
    return res


def appointment(spec: dict[str, Any], default_id: str, patient_id: str, now: dt.datetime) -> dict[str, Any]:
    """A proposed Appointment as appointment-book's `appointments` Bundle carries it.

    Shorthand: `start`/`end` (relative like `+7d` or ISO; `start: null` for none), `type` (appointmentType),
    `service` (serviceType), `reason` (reasonCode), each a code (`SYSTEM#code display`) or text (with none of
    the three, a "Ketamine treatment session" type); `status` (default proposed). Or a raw FHIR Appointment
    under `resource`.
    """
    if "resource" in spec:
        return dict(spec["resource"])
    res: dict[str, Any] = {"resourceType": "Appointment", "id": spec.get("id", default_id),
                           "status": spec.get("status", "proposed"),
                           "participant": [{"actor": {"reference": f"Patient/{patient_id}"},
                                            "status": "needs-action"}]}
    if spec.get("start", "+0h") is not None:
        start = when(spec.get("start", "+0h"), now)
        res["start"] = start.isoformat()
        end = when(spec["end"], now) if "end" in spec else start + dt.timedelta(hours=2)
        res["end"] = end.isoformat()
    if not {"type", "service", "reason"} & set(spec):
        spec = {**spec, **DEFAULT_SESSION}  # a case books a treatment session unless it says what else
    if "type" in spec:
        res["appointmentType"] = concept(spec["type"])
    if "service" in spec:
        res["serviceType"] = [concept(spec["service"])]
    if "reason" in spec:
        res["reasonCode"] = [concept(spec["reason"])]
    return res


DEFAULT_SESSION = {"type": "Ketamine treatment session"}


def encounter(spec: dict[str, Any], encounter_id: str, patient_id: str, now: dt.datetime) -> dict[str, Any]:
    """The Encounter encounter-start is about, as its prefetch carries it: `start` (period.start), `status`."""
    if "resource" in spec:
        return dict(spec["resource"])
    res: dict[str, Any] = {"resourceType": "Encounter", "id": encounter_id, "status": spec.get("status", "arrived"),
                           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                                     "display": "ambulatory"},
                           "subject": {"reference": f"Patient/{patient_id}"}}
    if spec.get("start", "+0h") is not None:
        res["period"] = {"start": when(spec.get("start", "+0h"), now).isoformat()}
    return res


def hook_context(hook: str, patient_id: str, drafts: list[dict[str, Any]], selections: list[str] | None,
                 label: str, now: dt.datetime | None = None, appointments: list[dict[str, Any]] | None = None,
                 encounter_spec: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The hook's context as an EHR sends it, and the chart resources that go with it.

    Outside order hooks the draft orders become active chart orders. appointment-book carries an
    `appointments` Bundle of proposed Appointments (by default one treatment session starting at `now`);
    encounter-start an `encounterId`, its Encounter (starting at `now` by default) joining the chart.
    """
    now = now or dt.datetime.now(dt.UTC)
    context: dict[str, Any] = {"userId": f"Practitioner/{label}-prescriber", "patientId": patient_id}
    active: list[dict[str, Any]] = []
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": r} for r in drafts]}
        if hook == "order-select":
            context["selections"] = selections or [f"MedicationRequest/{r['id']}" for r in drafts[:1]]
    else:
        active = [{**r, "status": "active"} for r in drafts]
    if hook in ("encounter-start", "patient-view"):
        context["encounterId"] = f"{label}-encounter"
    if hook == "encounter-start":
        active.append(encounter(encounter_spec or {}, context["encounterId"], patient_id, now))
    if hook == "appointment-book":
        specs = appointments if appointments is not None else [DEFAULT_SESSION]
        context["appointments"] = {"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": appointment(spec, f"{label}-appointment-{i}", patient_id, now)}
            for i, spec in enumerate(specs)]}
    return context, active


def request_body(hook: str, hook_instance: str, patient_id: str, patient: dict[str, Any] | None,
                 drafts: list[dict[str, Any]], chart: list[dict[str, Any]], resource_types: dict[str, str],
                 now: dt.datetime | None, label: str, selections: list[str] | None = None,
                 appointments: list[dict[str, Any]] | None = None, encounter_spec: dict[str, Any] | None = None,
                 placement: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The one builder of CDS Hooks requests: the hook's context (hook_context) and every prefetch key of
    `resource_types` (key -> resource type, as ServiceRuntime.resource_types gives them) filled from the chart.

    A resource goes to its type's key (adapters/fhir/prefetch.TEMPLATES) unless its `placement` item (a `given`
    entry of the shorthand, keyed by id(resource)) names another `key`, a `fullUrl` or a search `mode`. A resource
    of a type no key holds is left out, except a placed one: the shorthand's author is told to give its `key`.
    """
    context, active = hook_context(hook, patient_id, drafts, selections, label, now, appointments, encounter_spec)
    resources = chart + active
    placement = placement or {}
    prefetch: dict[str, Any] = {}
    for key, rtype in resource_types.items():
        if rtype == "Patient":
            prefetch[key] = patient
            continue
        if rtype == "Encounter":  # a read, not a search: the resource itself
            prefetch[key] = next((r for r in resources if r.get("resourceType") == "Encounter"), None)
            continue
        entries = []
        for r in resources:
            item = placement.get(id(r), {})
            target = item.get("key") or (TEMPLATES[r["resourceType"]][0] if r["resourceType"] in TEMPLATES else None)
            if target is None and id(r) in placement:
                raise ValueError(f"given {r['resourceType']} needs 'key:' (the prefetch key whose Bundle holds it)")
            if target != key:
                continue
            entry: dict[str, Any] = {"resource": r}
            if "fullUrl" in item:
                entry["fullUrl"] = item["fullUrl"]
            if "mode" in item:
                entry["search"] = {"mode": item["mode"]}
            entries.append(entry)
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    return {"hook": hook, "hookInstance": hook_instance, "context": context, "prefetch": prefetch}


def build_request(case: dict[str, Any], rt: ServiceRuntime, now: dt.datetime) -> dict[str, Any]:
    """A complete CDS Hooks request from a rule case's shorthand, with every prefetch key of the service filled."""
    patient_id = "test-patient"
    hook = rt.service.hook
    given = list(case.get("given") or [])
    resources = [expand(item, now, patient_id, i) for i, item in enumerate(given)]
    placement = {id(r): item for r, item in zip(resources, given, strict=True)}
    patient_spec = case.get("patient", {})
    patient = None
    if patient_spec is not None:
        patient = {"resourceType": "Patient", "id": patient_id, "gender": patient_spec.get("gender", "female")}
        if patient_spec.get("birthDate") is not None:
            patient["birthDate"] = birth_date(patient_spec["birthDate"], now)
    orders = case.get("orders")
    if orders is None:
        orders = [case["order"]] if case.get("order") else []
    draft = [medication_request(o, f"draft-{i}", patient_id, now, "draft") for i, o in enumerate(orders)]
    request = request_body(hook, f"test-{hook}", patient_id, patient, draft, resources, rt.resource_types(), now,
                           "test", case.get("selections"), case.get("appointments"), case.get("encounter"),
                           placement)
    context, prefetch = request["context"], request["prefetch"]
    if case.get("draft_orders") is not None and hook in ("order-select", "order-sign"):
        # Raw FHIR: the draftOrders Bundle exactly as written (vendor shapes, urn:uuid fullUrls, Medications).
        context["draftOrders"] = case["draft_orders"]
        if hook == "order-select" and not case.get("selections"):
            context["selections"] = [f"MedicationRequest/{e['resource']['id']}"
                                     for e in case["draft_orders"].get("entry") or ()
                                     if e.get("resource", {}).get("resourceType") == "MedicationRequest"][:1]
    for key, value in (case.get("prefetch") or {}).items():
        prefetch[key] = value  # raw FHIR (or null) for this key, exactly as written
    return request


def load_fixtures(pack_root: Path) -> tuple[dict[str, list[dict[str, Any]]], list[Diagnostic]]:
    """The pack's shared `given` entries by name (none without a fixtures.yaml), or its positioned errors."""
    path = pack_root / FIXTURES_FILE
    if not path.is_file():
        return {}, []
    data, diags = yamlsource.load(path)
    if diags:
        return {}, diags
    if not isinstance(data, dict) or not isinstance(data.get("fixtures"), dict):
        return {}, [Diagnostic(str(path), 1, 1, "schema", "a fixtures file needs 'fixtures: {name: [given entries]}'")]
    found: dict[str, list[dict[str, Any]]] = {}
    for name, entries in data["fixtures"].items():
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            line, col = yamlsource.key_pos(data["fixtures"], name)
            diags.append(Diagnostic(str(path), line, col, "schema",
                                    f"fixture '{name}' must be a list of given entries"))
            continue
        if any("fixture" in e for e in entries):
            line, col = yamlsource.key_pos(data["fixtures"], name)
            diags.append(Diagnostic(str(path), line, col, "schema", f"fixture '{name}' names another fixture; "
                                                                     "list its entries instead"))
            continue
        problems = given_problems(str(path), entries, name=f"fixture '{name}'")
        if problems:
            diags += problems
            continue
        found[str(name)] = yamlsource.plain(entries)
    return found, diags


def with_fixtures(given: list[Any], fixtures: dict[str, list[dict[str, Any]]]) -> list[Any]:
    """`given` with each `{fixture: NAME, ...}` entry replaced by NAME's entries, its other keys added to each.

    Raises KeyError(NAME) for a fixture the pack does not define (the runner reports it where it is written)."""
    out: list[Any] = []
    for item in given:
        if isinstance(item, dict) and "fixture" in item:
            extra = {k: v for k, v in item.items() if k != "fixture"}
            out += [{**entry, **extra} for entry in fixtures[str(item["fixture"])]]
        else:
            out.append(item)
    return out


def merge_case(defaults: dict[str, Any], case: dict[str, Any],
               fixtures: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """A case with its file's `defaults` (its `given` after the defaults' own) and every fixture expanded."""
    merged = {**defaults, **case}
    merged["given"] = with_fixtures(list(defaults.get("given") or []) + list(case.get("given") or []), fixtures)
    return merged


def given_problems(where: str, seq: Any, fixtures: dict[str, list[dict[str, Any]]] | None = None,
                   name: str = "given") -> list[Diagnostic]:
    """Positioned errors for the entries of one `given` list (its YAML node): each a mapping with one kind key
    (observation, condition, medication, administration, allergy, resource, or fixture) and only that kind's keys.
    A fixture entry's other keys are added to each of the fixture's entries, so they must suit those."""
    if seq is None:
        return []
    if not isinstance(seq, list):
        return [Diagnostic(where, *yamlsource.node_pos(seq), "schema", f"{name} is a list of entries",
                           "for example `given: [{observation: \"LOINC#8867-4 Heart rate\", value: 72 /min}]`")]
    kinds = [*GIVEN_KEYS, "fixture"]
    diags: list[Diagnostic] = []
    for j, item in enumerate(seq):
        at = yamlsource.value_pos(seq, j)
        if not isinstance(item, dict):
            diags.append(Diagnostic(where, *at, "schema", f"{name} entry {j + 1} is a mapping, like "
                                                          "`{observation: ..., value: ...}`"))
            continue
        found = [k for k in kinds if k in item]
        if len(found) != 1:
            guesses = [g for k in item if (g := did_you_mean(str(k), kinds))]
            diags.append(Diagnostic(where, *at, "unknown-given",
                                    f"{name} entry {j + 1} ({', '.join(map(str, item))}) needs exactly one of "
                                    f"{', '.join(kinds)}", guesses[0] if guesses else None))
            continue
        kind = found[0]
        if kind == "fixture":
            entries = (fixtures or {}).get(str(item["fixture"])) or []
            allowed = {k for e in entries for kk in GIVEN_KEYS if kk in e for k in GIVEN_KEYS[kk]} | {"fixture"}
            allowed |= set(ENTRY_KEYS)
        else:
            allowed = set(GIVEN_KEYS[kind]) | set(ENTRY_KEYS)
        for key in item:
            if str(key) not in allowed:
                diags.append(Diagnostic(where, *yamlsource.key_pos(item, key), "unknown-key",
                                        f"a {kind} entry has no '{key}' (it takes {', '.join(sorted(allowed))})",
                                        did_you_mean(str(key), sorted(allowed))))
        diags += time_problems(where, item, "at", f"{name} entry {j + 1}",
                               "write one relative to the case's now (-25h, -3d, +30m) or an ISO time")
    return diags


def time_problems(where: str, node: Any, key: str, what: str, hint: str) -> list[Diagnostic]:
    """A positioned `bad-time` error when node[key] is there and `when` cannot read it as a time."""
    if not isinstance(node, dict) or key not in node:
        return []
    try:
        when(node[key], dt.datetime.now(dt.UTC))
    except (ValueError, TypeError):
        return [Diagnostic(where, *yamlsource.value_pos(node, key), "bad-time",
                           f"{what}: {key} '{node[key]}' is not a time", hint)]
    return []


def unknown_fixtures(path: Path, data: Any, fixtures: dict[str, list[dict[str, Any]]]) -> list[Diagnostic]:
    """A compiler-style error at each `{fixture: NAME}` of a test file (its YAML nodes) that names no fixture."""
    defaults, cases = data.get("defaults"), data.get("cases")
    seqs = [defaults.get("given") if isinstance(defaults, dict) else None] + [
        c.get("given") for c in (cases if isinstance(cases, list) else []) if isinstance(c, dict)]
    diags = []
    for seq in seqs:
        for j, item in enumerate(seq if isinstance(seq, list) else []):
            if isinstance(item, dict) and "fixture" in item and str(item["fixture"]) not in fixtures:
                line, col = yamlsource.value_pos(seq, j)
                close = difflib.get_close_matches(str(item["fixture"]), list(fixtures), n=1, cutoff=0.6)
                diags.append(Diagnostic(str(path), line, col, "unknown-fixture",
                                        f"no fixture '{item['fixture']}' in the pack's {FIXTURES_FILE}",
                                        f"did you mean '{close[0]}'?" if close else
                                        f"defined: {', '.join(sorted(fixtures)) or 'none'}"))
    return diags
