"""A protocol pack's declarations (protocol.yaml): drugs, routes, measures, course, scores, services."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.derive.course import CourseSpec
from ..core.durations import parse_hours
from ..core.errors import Diagnostic
from ..core.model import Setting
from . import settingspec, shape, yamlsource
from .course_spec import parse_course
from .internal import pattern as internal_pattern

MEASURE_KINDS = ("quantity", "pair", "presence", "score")


@dataclass(frozen=True)
class Measure:
    name: str
    label: str
    kind: str
    valueset: str | None
    unit: str | None
    aliases: dict[str, str]
    worse: str  # higher | lower: which value governs when two readings share a time (G5)
    first: tuple[str, str] | None = None  # pair: (field name, value set)
    second: tuple[str, str] | None = None
    panel: str | None = None
    pairing_h: float = 0.0  # pair measures declare `pairing` (G4); the loader requires it
    upper_limit: float | None = None
    positive_at: tuple[float, str] | None = None
    # field ("value", or a pair's halves) -> (low, high) in `unit` (a score's own scale): a reading outside it is
    # implausible, set aside like an unreadable one (DQ-02); required for quantity and pair measures (shape.py)
    plausible: dict[str, tuple[float, float]] = field(default_factory=dict)


# What each hook evaluates against (the moment of the dose, and the drug and route in scope); the first
# anchor of each hook is its default when a service does not declare one.
ANCHORS: dict[str, tuple[str, ...]] = {
    "order-select": ("draft-order",),      # the selected draft orders, at now
    "order-sign": ("draft-order",),        # every draft order, at now
    "patient-view": ("now",),              # the protocol course, at now
    "appointment-book": ("appointment", "now"),  # each proposed session, at its start
    "encounter-start": ("encounter", "now"),     # the encounter, at its period start
}


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    anchor: str = "now"
    sessions: str | None = None  # value set recognising protocol sessions among proposed appointments


# A pack's `semantics:` says what FHIR statuses and times mean for its protocol. Every key is required: the engine
# holds no default a second pack would silently inherit. The loader's error for a missing key suggests FHIR R4's own
# meaning (or the ketamine pack's choice, for the tolerance), to be written out and reviewed (rules/README.md).
SEMANTICS: dict[str, str] = {
    "observation_valid_status": "[final, amended, corrected]",
    "future_tolerance": "5m",
    "condition_active_status": "[active, recurrence, relapse]",
    "condition_excluded_verification": "[refuted, entered-in-error]",
    "medication_active_status": "{request: [active], statement: [active, intended]}",
    "medication_on_hold_status": "[on-hold]",
    "administration_status": "[completed, in-progress, stopped]",
    "allergy_active_status": "[active]",
}


def _words(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


# FHIR R4's code systems for the statuses a pack's semantics name (hl7.org/fhir/R4/valueset-*.html): a misspelt
# status would match no record and silently change what counts (a "stoped" infusion would no longer be a dose).
_REQUEST = ("active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown")
_STATEMENT = ("active", "completed", "entered-in-error", "intended", "stopped", "on-hold", "unknown", "not-taken")
FHIR_STATUSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "observation_valid_status": ("Observation.status", ("registered", "preliminary", "final", "amended",
                                                        "corrected", "cancelled", "entered-in-error", "unknown")),
    "condition_active_status": ("Condition.clinicalStatus", ("active", "recurrence", "relapse", "inactive",
                                                             "remission", "resolved")),
    "medication_active_status.request": ("MedicationRequest.status", _REQUEST),
    "medication_active_status.statement": ("MedicationStatement.status", _STATEMENT),
    "medication_on_hold_status": ("MedicationRequest.status or MedicationStatement.status",
                                  tuple(dict.fromkeys(_REQUEST + _STATEMENT))),
    "administration_status": ("MedicationAdministration.status", ("in-progress", "not-done", "on-hold", "completed",
                                                                   "entered-in-error", "stopped", "unknown")),
    "allergy_active_status": ("AllergyIntolerance.clinicalStatus", ("active", "inactive", "resolved")),
}


def _status_problems(key: str, value: Any, at: tuple[int, int], where: str) -> list[Diagnostic]:
    """Each status of a semantics list checked against FHIR R4's codes for that element."""
    lists = {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value}
    diags = []
    for name, words in lists.items():
        element, codes = FHIR_STATUSES.get(name, ("", ()))
        for word in words if codes else ():
            if word not in codes:
                diags.append(Diagnostic(where, *at, "unknown-status",
                                        f"semantics.{name}: '{word}' is not a code of FHIR R4 {element} "
                                        f"({', '.join(codes)})", shape.did_you_mean(word, list(codes))))
    return diags


def _semantics(data: Any, declared: Any, where: str) -> tuple[dict[str, Any], list[Diagnostic]]:
    """The pack's semantics, every key declared and of its type; `future_tolerance_h` the tolerance in hours
    (`0m` is zero: a record dated after the moment evaluated is in the future)."""
    node = data.get("semantics")
    if not isinstance(declared, dict) or not isinstance(node, dict):
        at = yamlsource.key_pos(data, "semantics") if "semantics" in data else yamlsource.node_pos(data)
        keys = "; ".join(f"{k}: {v}" for k, v in SEMANTICS.items())
        return {}, [Diagnostic(where, *at, "schema", "protocol.yaml needs a 'semantics' mapping (what FHIR statuses "
                                                     "and times mean for this protocol; the engine assumes none)",
                               hint=f"FHIR R4's meanings, to review and write out: {keys}")]
    diags: list[Diagnostic] = []
    for key, suggested in SEMANTICS.items():
        before = len(diags)
        if key not in declared:
            diags.append(Diagnostic(where, *yamlsource.key_pos(data, "semantics"), "schema",
                                    f"semantics needs '{key}' (the engine assumes no default)",
                                    hint=f"for example `{key}: {suggested}`"))
            continue
        value = declared[key]
        if key == "future_tolerance":
            hours = parse_hours(value)
            if hours is None or hours < 0:
                diags.append(Diagnostic(where, *yamlsource.value_pos(node, key), "schema",
                                        f"semantics.future_tolerance: '{value}' is not a duration of zero or more "
                                        "(like 5m or 0m)"))
        elif key == "medication_active_status":
            if not (isinstance(value, dict) and set(value) == {"request", "statement"}
                    and all(_words(v) for v in value.values())):
                diags.append(Diagnostic(where, *yamlsource.value_pos(node, key), "schema",
                                        "semantics.medication_active_status maps request and statement to lists "
                                        "of statuses", hint=f"for example `{key}: {suggested}`"))
        elif not _words(value):
            diags.append(Diagnostic(where, *yamlsource.value_pos(node, key), "schema",
                                    f"semantics.{key} is a list of statuses", hint=f"for example `{key}: {suggested}`"))
        if key != "future_tolerance" and len(diags) == before:
            diags += _status_problems(key, value, yamlsource.value_pos(node, key), where)
    unknown = [k for k in declared if k not in SEMANTICS]
    for key in unknown:
        diags.append(Diagnostic(where, *yamlsource.key_pos(node, key), "unknown-key",
                                f"semantics: '{key}' is not one of {', '.join(SEMANTICS)}"))
    if diags:
        return {}, diags
    return {**declared, "future_tolerance_h": parse_hours(declared["future_tolerance"])}, []


def _window(node: Any, key: str, section: str, where: str, diags: list[Diagnostic]) -> float | None:
    """A required look-back (`30d`) of a typed section, in hours; a missing or unreadable one is a loader error."""
    value = node.get(key) if isinstance(node, dict) else None
    hours = parse_hours(value)
    if hours is not None and hours >= 0:
        return hours
    if value is None:
        diags.append(Diagnostic(where, *yamlsource.node_pos(node), "schema",
                                f"{section} needs '{key}', a duration (like 30d): the engine assumes none"))
    else:
        diags.append(Diagnostic(where, *yamlsource.value_pos(node, key), "schema",
                                f"{section}.{key}: '{value}' is not a duration of zero or more (like 30d)"))
    return None


def _order_and_scores(data: Any, raw: dict[str, Any], measures: dict[str, Measure],
                      where: str) -> tuple[dict[str, Any], dict[str, Any], list[Diagnostic]]:
    """`order:` and `scores:` with their look-backs checked and read into hours (`within_h`, `baseline_window_h`)."""
    diags: list[Diagnostic] = []
    order = dict(raw.get("order") or {})
    weight = order.get("weight")
    if weight is not None:
        node = data["order"]["weight"]
        if not isinstance(weight, dict) or not isinstance(weight.get("measure"), str) or (
                weight["measure"] not in measures):
            diags.append(Diagnostic(where, *yamlsource.value_pos(data["order"], "weight"), "schema",
                                    "order.weight needs 'measure' (one of the pack's measures) and 'within'",
                                    hint="for example `weight: {measure: weight, within: 30d}`"))
        else:
            hours = _window(node, "within", "order.weight", where, diags)
            order["weight"] = {**weight, "within_h": hours}
    scores = dict(raw.get("scores") or {})
    if scores:
        node = data["scores"]
        instruments = scores.get("instruments")
        if not isinstance(instruments, list) or any(not isinstance(i, str) or i not in measures for i in instruments):
            diags.append(Diagnostic(where, *yamlsource.node_pos(node), "schema",
                                    "scores.instruments is a list of the pack's measures (like [phq9, madrs])"))
        scores["baseline_window_h"] = _window(node, "baseline_window", "scores", where, diags)
    return order, scores, diags


@dataclass
class Protocol:
    name: str
    version: str
    title: str
    path: str
    semantics: dict[str, Any]
    drugs: dict[str, str]  # drug name -> value set, first match wins
    routes: dict[str, str]
    measures: dict[str, Measure]
    course: CourseSpec
    order: dict[str, Any]
    scores: dict[str, Any]
    presence: dict[str, list[str]]
    fetch: dict[str, float]
    units: dict[str, str] = field(default_factory=dict)  # non-UCUM spelling an EHR sends -> UCUM code
    # drug -> {count unit as ordered (`{device}`, `spray`) -> (amount, UCUM unit) one of them delivers}
    count_units: dict[str, dict[str, tuple[float, str]]] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)
    settings: dict[str, Setting] = field(default_factory=dict)  # marked values by dotted path: course.gap
    display_units: dict[str, str] = field(default_factory=dict)  # UCUM code -> what people read
    values: dict[str, Any] = field(default_factory=dict)  # course, scores, order as written: templates' `protocol`
    defaults: dict[str, Any] = field(default_factory=dict)  # rule keys every rule inherits (drugs, hooks)
    # The team's own source ids (a catalogue's "SP-PDR"): refused wherever a clinician or reviewer reads text.
    internal_labels: tuple[str, ...] = ()
    route_labels: dict[str, str] = field(default_factory=dict)  # route -> as clinicians write it (IV, IM)
    # drug -> the words naming it in a source's title (its name, brand names): which drug a citation is about.
    drug_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # value set name -> where protocol.yaml first names it (line, column): the pack loader's unknown-valueset error
    valueset_pos: dict[str, tuple[int, int]] = field(default_factory=dict)

    def valuesets_used(self) -> set[str]:
        names = set(self.drugs.values()) | set(self.routes.values()) | set(self.presence.get("valuesets", []))
        names |= {svc.sessions for svc in self.services if svc.sessions}
        for m in self.measures.values():
            names |= {n for n in (m.valueset, m.panel) if n}
            names |= {pair[1] for pair in (m.first, m.second) if pair}
        return names


def _plausible(value: Any) -> dict[str, tuple[float, float]]:
    """`[low, high]` -> {"value": (low, high)}; a pair's `{systolic: [..], diastolic: [..]}` per half (shape.py)."""
    if isinstance(value, list):
        return {"value": (float(value[0]), float(value[1]))}
    if isinstance(value, dict):
        return {str(k): (float(v[0]), float(v[1])) for k, v in value.items()}
    return {}


def _amount(text: Any) -> tuple[float, str]:
    """`28 mg` -> (28.0, "mg")."""
    number, _, unit = str(text).strip().partition(" ")
    return float(number), unit.strip()




def _unwrap(node: Any, raw: dict[str, Any], prefix: str, where: str, site: Mapping[str, tuple[Any, str]],
            out: dict[str, Setting], diags: list[Diagnostic], marks: re.Pattern[str] | None = None,
            ) -> dict[str, Any]:
    """Replace each marked setting ({value, default, ...}) by its value (with its unit, if it has one),
    collecting the declarations by dotted path; a site's value replaces the pack's."""
    result: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if settingspec.is_spec(value):
            spec, found = settingspec.parse(where, node, key, marks)
            diags.extend(found)
            if spec is None:
                continue
            spec = replace(spec, name=path)
            if path in site:  # already checked against this declaration (site.py)
                spec = settingspec.overridden(spec, *site[path])
            out[path] = spec
            result[key] = {"value": spec.value, "unit": spec.unit} if spec.unit else spec.value
            node[key] = result[key]  # readers of the YAML tree (course.py) see the value where the mapping was
        elif isinstance(value, dict) and isinstance(node, dict) and isinstance(node.get(key), dict):
            result[key] = _unwrap(node[key], value, path + ".", where, site, out, diags, marks)
        else:
            result[key] = value
    return result


def load_protocol(path: Path, site: Mapping[str, Mapping[str, tuple[Any, str]]] | None = None,
                  ) -> tuple[Protocol | None, list[Diagnostic]]:
    """Read protocol.yaml; every structural problem becomes a Diagnostic. `site`: pack name -> path -> value."""
    # Not the shared parse: `_unwrap` writes each marked setting's value into the tree (course.py reads it there),
    # so a shared tree would reach the next load without its settings (a reload lost every site-adjustable value).
    data, diags = yamlsource.load(path)
    if diags:
        return None, diags
    return protocol_from_tree(data, str(path), site)


def protocol_from_tree(data: Any, where: str, site: Mapping[str, Mapping[str, tuple[Any, str]]] | None = None,
                       ) -> tuple[Protocol | None, list[Diagnostic]]:
    """The Protocol of a parsed protocol.yaml (`where` names it in diagnostics); the tree is changed in place."""
    diags: list[Diagnostic] = []
    if not isinstance(data, dict):
        return None, [Diagnostic(where, 1, 1, "schema", "protocol.yaml must be a mapping")]
    for key in ("protocol", "version", "services", "measures", "drugs"):
        if key not in data:
            line, col = yamlsource.node_pos(data)
            diags.append(Diagnostic(where, line, col, "schema", f"protocol.yaml needs '{key}'"))
    if diags:
        return None, diags
    settings: dict[str, Setting] = {}
    raw = yamlsource.plain(data)
    labels = raw.get("internal_labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        diags.append(Diagnostic(where, *yamlsource.value_pos(data, "internal_labels"), "schema",
                                "internal_labels is a list of the team's source ids (words)"))
        labels = []
    raw = _unwrap(data, raw, "", where, (site or {}).get(str(raw["protocol"])) or {}, settings, diags,
                  internal_pattern(labels))
    found = shape.check(data, where)  # below, every section and entry is of the type it is read as
    if found:
        return None, diags + found + _semantics(data, raw.get("semantics"), where)[1]
    measures: dict[str, Measure] = {}
    for name, spec in (raw.get("measures") or {}).items():
        kind = spec.get("kind", "quantity")
        if kind not in MEASURE_KINDS:
            line, col = yamlsource.value_pos(data["measures"][name], "kind")
            diags.append(Diagnostic(where, line, col, "schema",
                                    f"measure '{name}': kind must be one of {', '.join(MEASURE_KINDS)}"))
            continue
        positive = spec.get("positive_at")
        measures[name] = Measure(
            name=name,
            label=spec.get("label", name),
            kind=kind,
            valueset=spec.get("valueset"),
            unit=spec.get("unit"),
            aliases=dict(spec.get("aliases") or {}),
            worse=spec["worse"],  # required (shape.py): no default a second pack would inherit
            first=(spec["first"]["field"], spec["first"]["valueset"]) if "first" in spec else None,
            second=(spec["second"]["field"], spec["second"]["valueset"]) if "second" in spec else None,
            panel=spec.get("panel"),
            # G4: how close a standalone systolic and diastolic must be to pair; a pair measure declares it
            pairing_h=(_window(data["measures"][name], "pairing", f"measures.{name}", where, diags) or 0.0)
            if kind == "pair" else 0.0,
            upper_limit=spec.get("upper_limit"),
            positive_at=(float(positive["value"]), str(positive["unit"])) if positive else None,
            plausible=_plausible(spec.get("plausible")),
        )
    semantics, found = _semantics(data, raw.get("semantics"), where)
    diags += found
    order, scores, found = _order_and_scores(data, raw, measures, where)
    diags += found
    course, course_diags = parse_course(data.get("course"), where, list(raw.get("drugs") or {}), list(measures))
    diags += course_diags
    services = []
    for idx, svc in enumerate(raw.get("services") or []):
        missing = [k for k in ("id", "hook", "title", "description") if not svc.get(k)]
        if missing:
            line, col = yamlsource.value_pos(data["services"], idx)
            diags.append(Diagnostic(where, line, col, "schema", f"service needs {', '.join(missing)}"))
            continue
        node = data["services"][idx]
        allowed = ANCHORS.get(svc["hook"], ("now",))  # an unknown hook is reported by the pack loader
        anchor = svc.get("anchor", allowed[0])
        if anchor not in allowed:
            line, col = yamlsource.value_pos(node, "anchor")
            diags.append(Diagnostic(where, line, col, "schema", f"service {svc['id']}: a {svc['hook']} service "
                                                                f"evaluates against {' or '.join(allowed)}, "
                                                                f"not '{anchor}'"))
            continue
        sessions = svc.get("sessions")
        if sessions is not None and anchor != "appointment":
            line, col = yamlsource.key_pos(node, "sessions")
            diags.append(Diagnostic(where, line, col, "schema", f"service {svc['id']}: 'sessions' only applies to "
                                                                "the appointment anchor"))
            continue
        services.append(Service(svc["id"], svc["hook"], svc["title"], svc["description"].strip(), anchor,
                                str(sessions) if sessions else None))
    count_units: dict[str, dict[str, tuple[float, str]]] = {}
    for drug, spec in (raw.get("drugs") or {}).items():
        table = spec.get("count_units") if isinstance(spec, dict) else None
        if not table:
            continue
        count_units[drug] = {}
        for unit, amount in (table.items() if isinstance(table, dict) else ()):
            try:
                count_units[drug][str(unit)] = _amount(amount)
            except ValueError:
                line, col = yamlsource.value_pos(data["drugs"][drug]["count_units"], unit)
                diags.append(Diagnostic(where, line, col, "schema", f"drugs.{drug}.count_units.{unit}: '{amount}' "
                                                                    "is not an amount with a unit (like 28 mg)"))
    protocol = Protocol(
        name=raw["protocol"],
        version=str(raw["version"]),
        title=raw.get("title", raw["protocol"]),
        path=where,
        semantics=semantics,
        drugs={k: v["valueset"] for k, v in (raw.get("drugs") or {}).items()},
        routes={k: v["valueset"] for k, v in (raw.get("routes") or {}).items()},
        measures=measures,
        course=course,
        order=order,
        scores=scores,
        presence=raw.get("presence") or {},
        fetch={k: _window(data["fetch"], k, "fetch", where, diags) or 0.0 for k in raw["fetch"]},
        services=services,
        settings=settings,
        units={str(k): str(v) for k, v in (raw.get("units") or {}).items()},
        count_units=count_units,
        display_units={str(k): str(v) for k, v in (raw.get("display_units") or {}).items()},
        values={**{k: _plain_values(raw[k]) for k in ("course", "scores", "order") if isinstance(raw.get(k), dict)},
                "labels": {name: m.label for name, m in measures.items()}},  # `{{ protocol.labels[score.instrument] }}`
        defaults=dict(raw.get("defaults") or {}),
        internal_labels=tuple(labels),
        route_labels={k: str(v.get("label", k)) for k, v in (raw.get("routes") or {}).items() if isinstance(v, dict)},
        drug_names={k: (str(k), *(str(n) for n in (v.get("names") or []))) for k, v in (raw.get("drugs") or {}).items()
                    if isinstance(v, dict)},
    )
    protocol.valueset_pos = _valueset_positions(data)
    diags.extend(_check_defaults(data, protocol, where))
    return (None if diags else protocol), diags


def _valueset_positions(data: Any) -> dict[str, tuple[int, int]]:
    """Each value set name protocol.yaml uses -> the line and column of its first use (a shape-checked tree)."""
    out: dict[str, tuple[int, int]] = {}

    def note(node: Any, key: Any) -> None:
        value = node.get(key) if isinstance(node, dict) else node[key]
        if isinstance(value, str):
            out.setdefault(value, yamlsource.value_pos(node, key))

    for section in ("drugs", "routes"):
        for entry in (data.get(section) or {}).values():
            note(entry, "valueset")
    for spec in data["measures"].values():
        for key in ("valueset", "panel"):
            note(spec, key)
        for half in ("first", "second"):
            if isinstance(spec.get(half), dict):
                note(spec[half], "valueset")
    names = (data.get("presence") or {}).get("valuesets") or []
    for i in range(len(names)):
        note(names, i)
    for svc in data["services"]:
        note(svc, "sessions")
    return out


def _plain_values(node: Any) -> Any:
    """Declared values as templates print them: a marked value (`{value: 60d, default: true, ...}`) is its value."""
    if isinstance(node, dict):
        if "value" in node and "measure" not in node:
            return node["value"]
        return {k: _plain_values(v) for k, v in node.items()}
    return node


DEFAULTABLE = ("drugs", "hooks")  # what a pack may declare once for every rule (a rule may still override)


def _check_defaults(data: Any, protocol: Protocol, where: str) -> list[Diagnostic]:
    from ..core.model import HOOKS  # model imports nothing from here; local import keeps the module order free

    node = data.get("defaults")
    if node is None:
        return []
    if not isinstance(node, dict):
        return [Diagnostic(where, *yamlsource.value_pos(data, "defaults"), "schema", "defaults must be a mapping")]
    out: list[Diagnostic] = []
    for key, value in node.items():
        if key not in DEFAULTABLE:
            out.append(Diagnostic(where, *yamlsource.key_pos(node, key), "unknown-key",
                                  f"'{key}' cannot be a pack default (one of {', '.join(DEFAULTABLE)})"))
            continue
        allowed = tuple(protocol.drugs) if key == "drugs" else HOOKS
        if not isinstance(value, list) or not value:
            out.append(Diagnostic(where, *yamlsource.value_pos(node, key), "schema", f"defaults.{key} is a list"))
            continue
        for i, item in enumerate(value):
            if item not in allowed:
                out.append(Diagnostic(where, *yamlsource.value_pos(value, i), f"unknown-{key.rstrip('s')}",
                                      f"'{item}' is not one of {', '.join(allowed)}"))
    return out
