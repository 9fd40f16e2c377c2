"""Rule test files: vignette cases (pinned `now`, relative dates, FHIR shorthand) run end to end.

Used by `protocol-engine test` and by pytest (tests/test_rule_cases.py), so both run the same cases.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.durations import parse_hours
from ..core.errors import Diagnostic
from ..core.valuesets import parse_code
from ..hooks.pipeline import Outcome, ServiceRuntime, run
from ..pack import yamlsource
from ..pack.ruleset import RULE_SUFFIX, TEST_SUFFIX, RuleSet

UCUM = "http://unitsofmeasure.org"
CASE_KEYS = {"name", "given", "expect", "hook", "patient", "order", "todo", "now", "orders", "selections",
             "appointments", "encounter", "draft_orders", "prefetch"}
# Keys of a `given` entry that place a raw `resource` in its Bundle rather than describe it.
ENTRY_KEYS = ("fullUrl", "mode", "key")


@dataclass
class CaseResult:
    file: str
    rule: str
    name: str
    status: str  # PASS | FAIL | SKIP
    problems: list[str] = field(default_factory=list)
    cards: list[dict[str, Any]] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    firing_case: bool = False
    silent_case: bool = False


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


def build_request(case: dict[str, Any], rt: ServiceRuntime, now: dt.datetime) -> dict[str, Any]:
    """A complete CDS Hooks request with every prefetch key of the service filled."""
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
    context, active = hook_context(hook, patient_id, draft, case.get("selections"), "test", now,
                                   case.get("appointments"), case.get("encounter"))
    if case.get("draft_orders") is not None and hook in ("order-select", "order-sign"):
        # Raw FHIR: the draftOrders Bundle exactly as written (vendor shapes, urn:uuid fullUrls, Medications).
        context["draftOrders"] = case["draft_orders"]
        if hook == "order-select" and not case.get("selections"):
            context["selections"] = [f"MedicationRequest/{e['resource']['id']}"
                                     for e in case["draft_orders"].get("entry") or ()
                                     if e.get("resource", {}).get("resourceType") == "MedicationRequest"][:1]
    resources += active
    prefetch: dict[str, Any] = {}
    from adapters.fhir.prefetch import TEMPLATES

    type_of_key = {key: rtype for rtype, (key, _, _) in TEMPLATES.items()}
    for key in rt.templates:
        rtype = type_of_key[key]
        if rtype == "Patient":
            prefetch[key] = patient
            continue
        if rtype == "Encounter":  # a read, not a search: the resource itself
            prefetch[key] = next((r for r in resources if r["resourceType"] == "Encounter"), None)
            continue
        entries = []
        for r in resources:
            item = placement.get(id(r), {})
            target = item.get("key") or (TEMPLATES[r["resourceType"]][0] if r["resourceType"] in TEMPLATES else None)
            if target is None:
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
    for key, value in (case.get("prefetch") or {}).items():
        prefetch[key] = value  # raw FHIR (or null) for this key, exactly as written
    return {"hook": hook, "hookInstance": f"test-{hook}", "context": context, "prefetch": prefetch}


def card_matches(card: dict[str, Any], want: dict[str, Any]) -> list[str]:
    ext = card.get("extension", {}).get("protocol-engine", {})
    diffs = []
    for key, expected in want.items():
        if key == "rule":
            actual: Any = ext.get("rule")
        elif key == "evidence":
            actual = ext.get("evidence", [])
            missing = [e for e in expected if e not in actual]
            if missing:
                diffs.append(f"evidence lacks {missing} (has {actual})")
            continue
        elif key == "source" and isinstance(expected, dict):  # `source: {contains: KETALAR}`: label and url
            src = card.get("source") or {}
            actual = f"{src.get('label', '')} {src.get('url', '')}".strip()
        else:
            actual = card.get(key)
        if isinstance(expected, dict) and "contains" in expected:
            if not isinstance(actual, str) or str(expected["contains"]) not in actual:
                diffs.append(f"{key} does not contain {expected['contains']!r}: {actual!r}")
        elif isinstance(expected, dict) and "max_length" in expected:
            if not isinstance(actual, str) or len(actual) > int(expected["max_length"]):
                diffs.append(f"{key} longer than {expected['max_length']}")
        elif actual != expected:
            diffs.append(f"{key}: expected {expected!r}, got {actual!r}")
    return diffs


def check(expect: dict[str, Any], outcome: Outcome, rule_id: str) -> list[str]:
    problems: list[str] = []
    fired = {f["rule"] for f in outcome.trace.get("fired", []) + outcome.trace.get("shadow", [])}
    cards = outcome.cards
    for want in expect.get("cards") or []:
        want = dict(want)
        candidates = [c for c in cards if c["extension"]["protocol-engine"]["rule"] == want.get("rule", rule_id)]
        if not candidates:
            problems.append(f"expected a {want.get('rule', rule_id)} card; cards were "
                            f"{[c['extension']['protocol-engine']['rule'] for c in cards]}")
            continue
        diffs = card_matches(candidates[0], want)
        if diffs:
            problems.append(f"{want.get('rule', rule_id)} card: " + "; ".join(diffs))
    if (expect.get("cards") == [] or expect.get("no_cards")) and cards:
        problems.append(f"expected no cards; got {[c['extension']['protocol-engine']['rule'] for c in cards]}")
    for rid in expect.get("fires") or []:
        if rid not in fired:
            problems.append(f"expected {rid} to fire; fired: {sorted(fired)}")
    for rid in expect.get("silent") or []:
        if rid in fired:
            problems.append(f"expected {rid} to stay silent, but it fired")
    counts: dict[tuple[str, tuple[str, ...]], int] = {}
    for c in cards:  # one card per rule, per proposed session at appointment-book
        ext = c["extension"]["protocol-engine"]
        key = (ext["rule"], tuple(e for e in ext["evidence"] if e.startswith("Appointment/")))
        counts[key] = counts.get(key, 0) + 1
    problems += [f"rule {r} gave {n} cards (one rule, one card)" for (r, _), n in counts.items() if n > 1]
    problems += [f"summary over 139 characters: {c['summary']!r}" for c in cards if len(c["summary"]) > 139]
    if "max_indicator" in expect:
        order = ["info", "warning", "critical"]
        worst = max((order.index(c["indicator"]) for c in cards), default=-1)
        if worst > order.index(expect["max_indicator"]):
            problems.append(f"a card is worse than {expect['max_indicator']}: "
                            f"{[(c['extension']['protocol-engine']['rule'], c['indicator']) for c in cards]}")
    return problems


def find_test_files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found.extend(sorted(p.rglob("*" + TEST_SUFFIX)))
        elif p.name.endswith(TEST_SUFFIX):
            found.append(p)
        elif p.name.endswith(RULE_SUFFIX):
            sibling = p.with_name(p.name[: -len(RULE_SUFFIX)] + TEST_SUFFIX)
            if sibling.exists():
                found.append(sibling)
    return found


@dataclass
class PreparedCase:
    """One case of a test file, defaults merged, with its pinned `now` and the service that answers its hook."""

    file: str
    rule: str
    name: str
    case: dict[str, Any]
    expect: dict[str, Any]
    now: dt.datetime
    hook: str
    service_id: str | None
    todo: bool = False

    def request(self, runtimes: dict[str, ServiceRuntime]) -> dict[str, Any]:
        """The CDS Hooks request this case sends (JSON round-tripped, as it arrives over HTTP)."""
        assert self.service_id is not None
        request: dict[str, Any] = json.loads(json.dumps(build_request(self.case, runtimes[self.service_id], self.now)))
        return request


def prepare_file(path: Path, ruleset: RuleSet, runtimes: dict[str, ServiceRuntime],
                 only_rule: str | None = None) -> tuple[list[PreparedCase], list[Diagnostic]]:
    """The cases of one test file, ready to build (shared by `run_file` and the metamorphic tests)."""
    data, diags = yamlsource.load(path)
    if diags:
        return [], diags
    if not isinstance(data, dict) or "rule" not in data or not isinstance(data.get("cases"), list):
        return [], [Diagnostic(str(path), 1, 1, "schema", "a test file needs 'rule', 'now' and a list of 'cases'")]
    raw = yamlsource.plain(data)
    rule_id = str(raw["rule"])
    if only_rule and rule_id != only_rule:
        return [], []
    pack = next((p for p in ruleset.packs if path.resolve().is_relative_to(p.root.resolve())), None)
    if pack is None:
        return [], [Diagnostic(str(path), 1, 1, "schema", "test file is not inside a loaded pack")]
    defaults = raw.get("defaults") or {}
    prepared = []
    for i, case in enumerate(raw["cases"]):
        name = str(case.get("name") or case.get("todo") or f"case {i + 1}")
        if "todo" in case:
            prepared.append(PreparedCase(str(path), rule_id, name, case, {}, dt.datetime.now(dt.UTC), "", None, True))
            continue
        unknown = set(case) - CASE_KEYS
        if unknown:
            line, col = yamlsource.value_pos(data["cases"], i)
            diags.append(Diagnostic(str(path), line, col, "unknown-key",
                                    f"case '{name}': unknown keys {sorted(unknown)}"))
            continue
        merged = {**defaults, **case}
        merged["given"] = list(defaults.get("given") or []) + list(case.get("given") or [])
        now = when(case.get("now", raw.get("now")), dt.datetime.now(dt.UTC))
        hook = merged.get("hook", "order-sign")
        service_id = next((sid for sid, r in runtimes.items() if r.pack is pack and r.service.hook == hook), None)
        prepared.append(PreparedCase(str(path), rule_id, name, merged, case.get("expect") or {}, now, hook,
                                     service_id))
    return prepared, diags


def run_file(path: Path, ruleset: RuleSet, runtimes: dict[str, ServiceRuntime],
             only_rule: str | None = None) -> tuple[list[CaseResult], list[Diagnostic]]:
    prepared, diags = prepare_file(path, ruleset, runtimes, only_rule)
    results = []
    for pc in prepared:
        rule_id, expect = pc.rule, pc.expect
        if pc.todo:
            results.append(CaseResult(pc.file, rule_id, pc.name, "SKIP"))
            continue
        result = CaseResult(pc.file, rule_id, pc.name, "PASS")
        result.firing_case = rule_id in (expect.get("fires") or []) or any(
            c.get("rule", rule_id) == rule_id for c in expect.get("cards") or [])
        result.silent_case = rule_id in (expect.get("silent") or []) or expect.get("cards") == [] or bool(
            expect.get("no_cards"))
        if pc.service_id is None:
            result.status, result.problems = "FAIL", [f"no service of this pack answers hook '{pc.hook}'"]
            results.append(result)
            continue
        try:
            outcome = run(runtimes, ruleset.revision, pc.service_id, pc.request(runtimes), pc.now, None)
        except Exception as exc:  # a case that cannot run is a failure, reported, not a crash
            result.status, result.problems = "FAIL", [f"{type(exc).__name__}: {exc}"]
            results.append(result)
            continue
        result.cards = outcome.cards
        result.fired = [f["rule"] for f in outcome.trace.get("fired", [])]
        result.problems = check(expect, outcome, rule_id)
        if result.problems and outcome.trace.get("skipped"):  # say why nothing was evaluated
            result.problems.append(f"the service evaluated no rule: {outcome.trace['skipped']}")
        if result.problems:
            result.status = "FAIL"
        results.append(result)
    return results, diags
