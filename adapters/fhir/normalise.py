"""FHIR R4 resources (JSON dicts) -> typed records, validated with fhir.resources R4B models.

Only resource types the rules read are validated; an invalid resource becomes a DataIssue
(location and error type only, never the offending value: it may be free-text PHI).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.quantity import Quantity as Quantity_model
from pydantic import ValidationError

from protocol_engine.core.records import (
    AdministrationRecord,
    AllergyRecord,
    AppointmentRecord,
    Chart,
    Concept,
    ConditionRecord,
    DataIssue,
    EncounterRecord,
    LazyObservation,
    MedicationRecord,
    ObservationRecord,
    OrderIssue,
    PatientRecord,
    Quantity,
)
from protocol_engine.core.valuesets import canonical_system

from . import identity, validation
from .dates import bounds
from .medications import MedicationIndex, Resolution

UCUM = "http://unitsofmeasure.org"
MODELS: dict[str, Any] = {
    "Patient": Patient,
    "Observation": Observation,
    "Condition": Condition,
    "MedicationRequest": MedicationRequest,
    "MedicationStatement": MedicationStatement,
    "MedicationAdministration": MedicationAdministration,
    "AllergyIntolerance": AllergyIntolerance,
    "Encounter": Encounter,
    "Appointment": Appointment,
}
_DURATION_H = {"s": 1 / 3600, "min": 1 / 60, "h": 1.0, "d": 24.0, "wk": 168.0}


_VALUE_X = ("valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "valueInteger", "valueRange",
            "valueRatio", "valueSampledData", "valueTime", "valueDateTime", "valuePeriod")
_MEDICATION_X = ("medicationCodeableConcept", "medicationReference", "contained")
# The elements each resource type is validated on: what the derivations read, plus the elements FHIR R4
# requires, so a resource lacking one is still refused. Everything else (narrative, identifiers,
# performers, notes, extensions) is never read, so it is neither validated nor a reason to drop a reading.
READ: dict[str, frozenset[str]] = {
    "Patient": frozenset({"birthDate", "gender"}),
    "Observation": frozenset({"status", "code", "effectiveDateTime", "effectivePeriod", "effectiveInstant",
                              "effectiveTiming", "issued", "component", "interpretation", "referenceRange",
                              "dataAbsentReason", *_VALUE_X}),
    "Condition": frozenset({"subject", "code", "clinicalStatus", "verificationStatus", "onsetDateTime",
                            "onsetPeriod", "onsetAge", "onsetRange", "onsetString"}),
    "MedicationRequest": frozenset({"status", "intent", "subject", "dosageInstruction", "authoredOn",
                                    *_MEDICATION_X}),
    "MedicationStatement": frozenset({"status", "subject", *_MEDICATION_X}),
    # G9 counts prior sessions by time and drug; dosage is read for its route (the route of the course
    # outside order hooks); the dose given is not read by any rule (yet).
    "MedicationAdministration": frozenset({"status", "subject", "effectiveDateTime", "effectivePeriod", "dosage",
                                           *_MEDICATION_X}),
    "AllergyIntolerance": frozenset({"patient", "code", "reaction", "clinicalStatus", "verificationStatus"}),
    # The anchors of encounter-start and appointment-book: when the session is, and what kind of visit.
    "Encounter": frozenset({"status", "class", "period", "subject"}),
    "Appointment": frozenset({"status", "start", "end", "appointmentType", "serviceType", "reasonCode",
                              "participant"}),
}


# Numbers the rules read, by the JSON key holding them: FHIR R4 JSON writes decimals and integers as JSON numbers
# (https://hl7.org/fhir/R4/json.html#primitive). pydantic's lax mode would read the string "70" as 70; a value
# sent as a string is not believed (the sender wrote something other than FHIR), and reported.
_QUANTITY_KEYS = frozenset({"valueQuantity", "low", "high", "numerator", "denominator", "doseQuantity",
                            "rateQuantity", "origin"})  # Quantity-typed elements: their `value`
_NUMBER_KEYS = frozenset({"valueInteger", "valueDecimal", "duration", "durationMax", "frequency", "frequencyMax",
                          "period", "periodMax", "count", "countMax"})
# Elements that hold no number the rules read (codings, references, metadata): not walked, which keeps the
# check at a fraction of its cost (most of a resource's JSON is codings and references).
_NO_NUMBERS = frozenset({"coding", "meta", "identifier", "subject", "patient", "encounter", "context", "performer",
                         "category", "code", "medicationCodeableConcept", "medicationReference", "route", "method",
                         "site", "interpretation", "note", "reasonCode", "reasonReference", "requester", "recorder",
                         "basedOn", "partOf", "hasMember", "derivedFrom", "dataAbsentReason", "clinicalStatus",
                         "verificationStatus", "text", "id", "status", "intent"})


_STRING_VALUE = "urn:protocol-engine:json-string-value"  # marks, inside this process only, a value sent as text


def _unquoted(quantity: Any) -> Any:
    """An Observation's valueQuantity whose value is a JSON string: the value is not read (never coerced), the
    Quantity kept (its unit, code) with a mark, so the reading is unreadable and says why, as a missing value is."""
    if not (isinstance(quantity, dict) and isinstance(quantity.get("value"), str)):
        return quantity
    sent = quantity["value"]
    quoted = f"'{sent}'" if len(sent) <= 20 else "text"
    out = {k: v for k, v in quantity.items() if k != "value"}
    out["extension"] = [{"url": _STRING_VALUE, "valueString": f"value sent as the JSON string {quoted}; FHIR "
                                                                 "JSON requires a number"}]
    return out


def _observation_values(projection: dict[str, Any]) -> dict[str, Any]:
    """The Observation with its values (and its components' values) sent as strings marked, not believed."""
    out = dict(projection)
    if "valueQuantity" in out:
        out["valueQuantity"] = _unquoted(out["valueQuantity"])
    if isinstance(out.get("component"), list):
        out["component"] = [{**c, "valueQuantity": _unquoted(c["valueQuantity"])}
                            if isinstance(c, dict) and "valueQuantity" in c else c for c in out["component"]]
    return out


def _string_number(node: Any, path: str = "") -> str | None:
    """Where (dotted path) a number the rules read was sent as a JSON string, or None."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            found = _string_number(item, f"{path}[{i}]")
            if found:
                return found
        return None
    if not isinstance(node, dict):
        return None
    for key, value in node.items():
        if key in _NO_NUMBERS:
            continue
        here = f"{path}.{key}" if path else str(key)
        if isinstance(value, str) and key in _NUMBER_KEYS:
            return here
        if key in _QUANTITY_KEYS and isinstance(value, dict) and isinstance(value.get("value"), str):
            return f"{here}.value"
        if isinstance(value, (dict, list)):
            found = _string_number(value, here)
            if found:
                return found
    return None


def ref_of(resource: dict[str, Any]) -> str:
    return f"{resource.get('resourceType', 'Resource')}/{resource.get('id', '(no id)')}"


def _validate(resource: dict[str, Any], issues: list[DataIssue]) -> Any | None:
    kind = str(resource.get("resourceType"))
    model = MODELS.get(kind)
    if model is None:
        return None
    if resource.get("modifierExtension"):
        # FHIR: an element carrying a modifier extension that the reader does not understand must not
        # be read as if it were absent (it may mean "not given", "refuted", ...).
        issues.append(DataIssue(ref_of(resource), "carries a modifierExtension this service does not understand; "
                                                  "not used"))
        return None
    read = READ[kind]
    projection = {key: value for key, value in resource.items() if key in read}
    projection["resourceType"] = kind
    if kind == "MedicationAdministration" and "dosage" in projection:
        # Only the route is read: a dose written oddly must not cost the prior dose it records (G9).
        dosage = projection.pop("dosage")
        if isinstance(dosage, dict) and dosage.get("route") is not None:
            projection["dosage"] = {"route": dosage["route"]}
    if "id" in resource:
        projection["id"] = resource["id"]
    if kind == "Observation":
        projection = _observation_values(projection)
    where = _string_number(projection)
    if where is not None:
        issues.append(DataIssue(ref_of(resource), f"not valid FHIR R4: {where} is a JSON string, not a number "
                                                  "(FHIR JSON requires a number); not used"))
        return None
    try:
        return validation.validate(model, projection)  # each distinct element validated once per worker
    except (ValidationError, ValueError, TypeError) as exc:
        where = "?"
        if isinstance(exc, ValidationError) and exc.errors():
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) + f" ({first.get('type', 'invalid')})"
        issues.append(DataIssue(ref_of(resource), f"not valid FHIR R4: {where}"))
        return None
    except RecursionError:
        issues.append(DataIssue(ref_of(resource), "not valid FHIR R4: nested too deeply"))
        return None


def _aware(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, str):
        try:
            return _aware(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def concept(cc: Any) -> Concept:
    if cc is None:
        return Concept()
    codings = tuple((c.system, c.code, c.display) for c in (cc.coding or ()))
    return Concept(codings, cc.text)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        number = float(value)
        return number if number == number and abs(number) != float("inf") else None
    return None


def quantity(q: Any) -> Quantity | None:
    if q is None:
        return None
    ucum = q.system is not None and canonical_system(q.system) == UCUM
    unit = q.code if (ucum and q.code) else (q.unit or q.code)
    marked = [e.valueString for e in (q.extension or ()) if e.url == _STRING_VALUE]
    if marked:
        return Quantity(None, unit, problem=marked[0])
    return Quantity(_number(q.value), unit)


def _value(holder: Any) -> Quantity:
    absent = getattr(holder, "dataAbsentReason", None)
    if absent is not None and getattr(holder, "valueQuantity", None) is None:
        reason = concept(absent)
        return Quantity(None, None, absent=(reason.codings[0][1] if reason.codings and reason.codings[0][1]
                                            else reason.text) or "no reason given")
    if getattr(holder, "valueQuantity", None) is not None:
        return quantity(holder.valueQuantity) or Quantity(None, None)
    if getattr(holder, "valueCodeableConcept", None) is not None:
        cc = concept(holder.valueCodeableConcept)
        return Quantity(None, None, text=cc.text or (cc.codings[0][2] if cc.codings else None), coded=cc)
    if getattr(holder, "valueString", None) is not None:
        return Quantity(None, None, text=holder.valueString)
    if getattr(holder, "valueInteger", None) is not None:
        return Quantity(_number(holder.valueInteger), None)
    if getattr(holder, "valueBoolean", None) is not None:
        return Quantity(None, None, text="true" if holder.valueBoolean else "false")
    return Quantity(None, None)


def observation(model: Any, ref: str) -> ObservationRecord:
    # G1: effectiveDateTime, else effectivePeriod.end, else effectiveInstant, else issued.
    when = bounds(model.effectiveDateTime)
    if when is None and model.effectivePeriod is not None:
        when = bounds(model.effectivePeriod.end)
    when = when or bounds(model.effectiveInstant) or bounds(model.issued)
    high = None
    for rr in model.referenceRange or ():
        if rr.high is not None:
            high = quantity(rr.high)
            break
    interp = concept(model.interpretation[0]) if model.interpretation else None
    components = tuple((concept(c.code), _value(c)) for c in (model.component or ()))
    return ObservationRecord(ref, concept(model.code), model.status, when[0] if when else None, _value(model),
                             components, interp, high, when[1] if when else None)


def condition(model: Any, ref: str) -> ConditionRecord:
    def status(cc: Any) -> str | None:
        codes = [c.code for c in (cc.coding or ())] if cc else []
        return codes[0] if codes else None

    onset = bounds(model.onsetDateTime)
    if onset is None and model.onsetPeriod is not None:
        onset = bounds(model.onsetPeriod.start)
    return ConditionRecord(ref, concept(model.code), status(model.clinicalStatus),
                           status(model.verificationStatus), onset[0] if onset else None,
                           onset[1] if onset else None)


def _ratio(numerator: Any, denominator: Any) -> Quantity | None:
    """A FHIR Ratio (rateRatio, ingredient strength) as one quantity: 35 mg / 40 min -> 0.875 mg/min."""
    top, bottom = quantity(numerator), quantity(denominator)
    if top is None or top.value is None or bottom is None or not bottom.value:
        return None
    unit = f"{top.unit or ''}/{bottom.unit or ''}" if bottom.unit else top.unit
    return Quantity(top.value / bottom.value, unit if top.unit else None)


def _dose_and_rate(dosage: Any) -> tuple[Quantity | None, Quantity | None, Quantity | None]:
    """(dose, dose range low, rate) of a Dosage: doseQuantity, or doseRange (dose = its upper bound);
    rateQuantity, rateRatio (mL per 1 h, mg per 40 min) or rateRange (its upper bound)."""
    dose = low = rate = None
    for entry in dosage.doseAndRate or ():
        if dose is None and entry.doseQuantity is not None:
            dose = quantity(entry.doseQuantity)
        elif dose is None and entry.doseRange is not None:
            low = quantity(entry.doseRange.low)
            dose = quantity(entry.doseRange.high) or Quantity(None, low.unit if low else None)
        if rate is None and entry.rateQuantity is not None:
            rate = quantity(entry.rateQuantity)
        elif rate is None and entry.rateRatio is not None:
            rate = _ratio(entry.rateRatio.numerator, entry.rateRatio.denominator)
        elif rate is None and entry.rateRange is not None:
            rate = quantity(entry.rateRange.high)
    return dose, low, rate


def strength(medication: dict[str, Any] | None) -> Quantity | None:
    """The amount per volume of a Medication's first ingredient with a strength (10 mg / 1 mL)."""
    for ingredient in (medication or {}).get("ingredient") or ():
        found = ingredient.get("strength") if isinstance(ingredient, dict) else None
        if isinstance(found, dict):
            try:
                return _ratio(Quantity_model.model_validate(found.get("numerator") or {}),
                              Quantity_model.model_validate(found.get("denominator") or {}))
            except (ValidationError, ValueError, TypeError):
                return None
    return None


def medication_request(model: Any, medication: Concept, ref: str,
                       concentration: Quantity | None = None) -> MedicationRecord:
    route = dose = rate = low = None
    duration_h = None
    if model.dosageInstruction:
        dosage = model.dosageInstruction[0]
        route = concept(dosage.route) if dosage.route else None
        dose, low, rate = _dose_and_rate(dosage)
        repeat = dosage.timing.repeat if dosage.timing else None
        if repeat is not None and repeat.duration is not None and repeat.durationUnit in _DURATION_H:
            duration_h = float(repeat.duration) * _DURATION_H[repeat.durationUnit]
    day_only = isinstance(model.authoredOn, dt.date) and not isinstance(model.authoredOn, dt.datetime)
    return MedicationRecord(ref, "request", medication, model.status, route, dose,
                            duration_h, rate, _aware(model.authoredOn), low, concentration, day_only)


def medication_statement(model: Any, medication: Concept, ref: str) -> MedicationRecord:
    return MedicationRecord(ref, "statement", medication, model.status)


def administration(model: Any, medication: Concept, ref: str) -> AdministrationRecord:
    # A date without a time (`2026-11-29`) is the whole day, as for Observations: a range, never midnight.
    when = bounds(model.effectiveDateTime)
    if when is None and model.effectivePeriod is not None:
        # A period with only an end (charted when the infusion stopped) still places the dose.
        when = bounds(model.effectivePeriod.start) or bounds(model.effectivePeriod.end)
    if when is not None and when[1] - when[0] > dt.timedelta(days=1):
        when = None  # a month or a year cannot place a dose in a course: reported as not counted (derive)
    route = concept(model.dosage.route) if model.dosage is not None and model.dosage.route else None
    return AdministrationRecord(ref, medication, model.status, when[0] if when else None, route,
                                when[1] if when else None)


def allergy(model: Any, ref: str) -> AllergyRecord:
    substances = [concept(model.code)] if model.code else []
    for reaction in model.reaction or ():
        if reaction.substance is not None:
            substances.append(concept(reaction.substance))

    def status(cc: Any) -> str | None:
        return cc.coding[0].code if cc is not None and cc.coding else None

    return AllergyRecord(ref, tuple(substances), status(model.clinicalStatus), status(model.verificationStatus))


def patient(model: Any, ref: str) -> PatientRecord:
    birth = bounds(model.birthDate)
    if birth is None:
        return PatientRecord(ref, None, model.gender)
    text = model.birthDate.isoformat() if isinstance(model.birthDate, dt.date) else str(model.birthDate)
    return PatientRecord(ref, birth[0].date(), model.gender, birth[1].date(), text)


def encounter(model: Any, ref: str) -> EncounterRecord:
    start = _aware(model.period.start) if model.period is not None else None
    return EncounterRecord(ref, model.status, start)


def appointment(model: Any, ref: str) -> AppointmentRecord:
    kinds = [concept(model.appointmentType)] if model.appointmentType is not None else []
    kinds += [concept(cc) for cc in (model.serviceType or ())]
    kinds += [concept(cc) for cc in (model.reasonCode or ())]
    return AppointmentRecord(ref, model.status, _aware(model.start), _aware(model.end), tuple(kinds))


def appointments(bundle: Any, issues: list[DataIssue]) -> list[AppointmentRecord]:
    """The Appointments of appointment-book's `appointments` Bundle; an invalid one becomes a DataIssue."""
    out = []
    for raw in resources_in(bundle):
        if not isinstance(raw, dict) or raw.get("resourceType") != "Appointment":
            continue
        model = _validate(raw, issues)
        if model is not None:
            out.append(appointment(model, ref_of(raw)))
    return out


def _raw_time(raw: dict[str, Any]) -> tuple[dt.datetime, dt.datetime] | None:
    """G1 time precedence on the raw JSON (validation comes later, when the reading is used)."""
    period = raw.get("effectivePeriod")
    for value in (raw.get("effectiveDateTime"), period.get("end") if isinstance(period, dict) else None,
                  raw.get("effectiveInstant"), raw.get("issued")):
        if isinstance(value, str):
            return bounds(value)
    return None


def _raw_codes(raw: dict[str, Any]) -> tuple[tuple[str | None, str | None], ...]:
    code = raw.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    if not isinstance(codings, list):
        return ()
    return tuple((c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)
                 and isinstance(c.get("system", ""), str) and isinstance(c.get("code", ""), str))


def lazy_observation(raw: dict[str, Any]) -> LazyObservation:
    ref = ref_of(raw)

    def load() -> ObservationRecord | DataIssue:
        issues: list[DataIssue] = []
        model = _validate(raw, issues)
        return issues[0] if model is None else observation(model, ref)

    def relaxed() -> ObservationRecord | DataIssue:
        issues: list[DataIssue] = []
        model = _validate({**raw, "status": "unknown"}, issues)
        return issues[0] if model is None else observation(model, ref)

    status = raw.get("status") if isinstance(raw.get("status"), str) else None
    when = _raw_time(raw)
    return LazyObservation(ref, status, when[0] if when else None, _raw_codes(raw), load,
                           when[1] if when else None, relaxed)


Relevance = Callable[[list[tuple[str | None, str | None]], list[str | None]], bool]
_CODED = {"Condition": ("code",), "MedicationRequest": ("medicationCodeableConcept",),
          "MedicationStatement": ("medicationCodeableConcept",)}


ConceptKeys = tuple[list[tuple[str | None, str | None]], list[str | None]]


def _concept_keys(raw: dict[str, Any], kind: str) -> ConceptKeys | None:
    """Codes and texts of a resource's main concept from the raw JSON, or None when they cannot be read cheaply."""
    codes: list[tuple[str | None, str | None]] = []
    texts: list[str | None] = []
    for element in _CODED.get(kind, ()):
        cc = raw.get(element)
        if not isinstance(cc, dict):
            return None  # e.g. medicationReference: validate and look properly
        codings = cc.get("coding") or []
        if not isinstance(codings, list):
            return None
        for c in codings:
            if isinstance(c, dict):
                codes.append((c.get("system"), c.get("code")))
                texts.append(c.get("display") if isinstance(c.get("display"), str) else None)
        texts.append(cc.get("text") if isinstance(cc.get("text"), str) else None)
    return codes, texts


_MEDICATION_KINDS = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")


def add_resource(chart: Chart, raw: Any, relevant: Relevance | None = None,
                 meds: MedicationIndex | None = None) -> None:
    """Validate one resource and file it in the chart; anything unreadable becomes a DataIssue.

    With `relevant`, coded resources that belong to no value set of the protocol are skipped before
    validation: no rule could read them.
    """
    if not isinstance(raw, dict):
        chart.issues.append(DataIssue("(entry)", "bundle entry is not a JSON object"))
        return
    kind = raw.get("resourceType")
    if kind not in MODELS or kind == "Appointment":  # appointments come from the hook context only
        return
    if kind == "Observation":
        chart.observations.append(lazy_observation(raw))
        return
    drug: Resolution | None = None
    if kind in _MEDICATION_KINDS:
        drug = (meds or MedicationIndex()).resolve(raw)
        # Skipped unread when no value set of the protocol holds the drug. An unresolved reference is judged
        # by the EHR's own display ("Atorvastatin 20 mg"): one that names nothing the rules read is not worth
        # a data-quality card on every chart; one without a display, or naming a protocol class, is reported.
        if relevant is not None and (kind != "MedicationAdministration" or drug.unresolved is not None) \
                and drug.concept is not None and not relevant(drug.concept.pairs(), drug.concept.texts()):
            return
    elif relevant is not None and kind in _CODED:
        keys = _concept_keys(raw, kind)
        # A Condition with no code at all (code.text only) cannot be judged irrelevant: kept, and reported (derive)
        if keys is not None and not relevant(*keys) and not (kind == "Condition" and not any(c for _, c in keys[0])):
            return
    model = _validate(raw, chart.issues)
    if model is None:
        return
    ref = ref_of(raw)
    medication = Concept()
    if drug is not None:
        if drug.unresolved is not None:
            # Kept under what the EHR displays (if anything), and reported: the checks that need the
            # product (interactions, prior doses) may be incomplete.
            chart.issues.append(DataIssue(ref, f"its medicationReference '{drug.unresolved[:120]}' could not be "
                                               "resolved (not contained, not in the request, not fetchable)"))
        medication = drug.concept or Concept()
    if kind == "Condition":
        chart.conditions.append(condition(model, ref))
    elif kind == "MedicationRequest":
        chart.medications.append(medication_request(model, medication, ref))
    elif kind == "MedicationStatement":
        chart.medications.append(medication_statement(model, medication, ref))
    elif kind == "MedicationAdministration":
        chart.administrations.append(administration(model, medication, ref))
    elif kind == "AllergyIntolerance":
        chart.allergies.append(allergy(model, ref))
    elif kind == "Patient":
        chart.patient = patient(model, ref)
    elif kind == "Encounter":
        chart.encounters.append(encounter(model, ref))


def resources_in(payload: Any) -> Iterable[Any]:
    """A resource, or every entry resource of a Bundle."""
    if not isinstance(payload, dict):
        return []
    if payload.get("resourceType") == "Bundle":
        return [e.get("resource") for e in payload.get("entry") or () if isinstance(e, dict)]
    return [payload]


def _version(raw: dict[str, Any]) -> tuple[int | None, dt.datetime | None]:
    meta = raw.get("meta")
    if not isinstance(meta, dict):
        return None, None
    version = meta.get("versionId")
    number = int(version) if isinstance(version, str) and version.isdigit() else None
    updated = meta.get("lastUpdated")
    return number, _aware(updated) if isinstance(updated, str) else None


def newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether `a` is a newer version of the same resource than `b`: meta.versionId, then meta.lastUpdated.

    versionIds are compared only when both are numbers (servers that use UUIDs give them no order).
    """
    (va, ua), (vb, ub) = _version(a), _version(b)
    if va is not None and vb is not None and va != vb:
        return va > vb
    if ua is not None and ub is not None:
        return ua > ub
    return False


def newest_versions(payloads: Iterable[Any]) -> list[Any]:
    """Every resource once: a resource id seen twice (two keys, two versions) keeps its newest version."""
    out: list[Any] = []
    where: dict[str, int] = {}
    for payload in payloads:
        for raw in resources_in(payload):
            if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                ref = ref_of(raw)
                if ref in where:
                    if newer(raw, out[where[ref]]):
                        out[where[ref]] = raw
                    continue
                where[ref] = len(out)
            out.append(raw)
    return out


def medication_index(payloads: Iterable[Any], draft_orders: Any, fhir_server: str | None = None,
                     fetched: Iterable[Any] = ()) -> MedicationIndex:
    meds = MedicationIndex(fhir_server)
    meds.add_payloads([draft_orders, *payloads, *fetched])
    return meds


def references_to_fetch(payloads: Iterable[Any], draft_orders: Any, meds: MedicationIndex) -> list[str]:
    """Medication references no Bundle of the request resolves and that fhirServer can answer."""
    wanted: list[str] = []
    for payload in [draft_orders, *payloads]:
        for raw in resources_in(payload):
            if not isinstance(raw, dict) or raw.get("resourceType") not in _MEDICATION_KINDS:
                continue
            reference = raw.get("medicationReference")
            ref = reference.get("reference") if isinstance(reference, dict) else None
            if isinstance(ref, str) and meds.resolve(raw).unresolved is not None:
                local = meds.fetchable(ref)
                if local and local not in wanted:
                    wanted.append(local)
    return wanted


def to_chart(payloads: Iterable[Any], draft_orders: Any, selections: list[str] | None,
             relevant: Relevance | None = None, patient_id: str | None = None,
             meds: MedicationIndex | None = None) -> Chart:
    """Build a Chart from prefetch payloads and the hook's draftOrders bundle.

    With `patient_id`, resources that do not provably belong to that patient are set aside in
    `chart.foreign` and never used (see identity.py).
    """
    payloads = list(payloads)
    chart = Chart()
    meds = meds or medication_index(payloads, draft_orders)
    urls = identity.patient_urls([draft_orders, *payloads]) if patient_id is not None else {}
    for raw in newest_versions(payloads):
        if patient_id is not None and isinstance(raw, dict):
            reason = identity.foreign_reason(raw, patient_id, urls)
            if reason is not None:
                chart.foreign.append(DataIssue(ref_of(raw), reason))
                continue
        add_resource(chart, raw, relevant, meds)
    for raw in resources_in(draft_orders):
        if not isinstance(raw, dict) or raw.get("resourceType") != "MedicationRequest":
            continue
        ref = ref_of(raw)
        selected = selections is None or ref in selections
        reason = identity.foreign_reason(raw, patient_id, urls) if patient_id is not None else None
        drug = meds.resolve(raw)
        if reason is not None:
            chart.foreign.append(DataIssue(ref, reason))
            if selected:
                chart.order_issues.append(OrderIssue(ref, reason, drug.concept,
                                                     drug.unresolved is None and drug.concept is not None, True))
            continue
        problems: list[DataIssue] = []
        model = _validate(raw, problems)
        if model is None or drug.unresolved is not None:
            if selected:
                found = [p.problem for p in problems[:1]]
                if drug.unresolved is not None:
                    found.append(f"its medicationReference '{drug.unresolved[:120]}' could not be resolved")
                problem = "; ".join(found)
                chart.order_issues.append(OrderIssue(ref, problem, drug.concept,
                                                     drug.unresolved is None and drug.concept is not None))
            continue
        chart.draft_orders.append((medication_request(model, drug.concept or Concept(), ref,
                                                      strength(drug.medication)), selected))
    return chart
