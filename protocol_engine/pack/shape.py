"""The shape of protocol.yaml, checked before anything reads it: every section and entry of the type the loader
expects, every key known, each problem a positioned Diagnostic with what to write (never a KeyError or TypeError).

`check(data, where)` runs on the parsed tree after marked settings are unwrapped (`{value: 60d, default: true}` is
then `60d`); protocol.py reads only a tree this accepted. The meaning of values (durations, measure names, anchors,
semantics statuses) is checked where they are read; here only their type and presence.
"""

from __future__ import annotations

import difflib
from typing import Any

from ..core.errors import Diagnostic
from ..core.model import HOOKS
from . import yamlsource

TOP_KEYS = ("protocol", "version", "title", "semantics", "defaults", "internal_labels", "display_units", "drugs",
            "routes", "measures", "units", "presence", "course", "order", "scores", "fetch", "services")
DRUG_KEYS = ("valueset", "names", "count_units")
ROUTE_KEYS = ("valueset", "label")
MEASURE_KEYS = ("label", "kind", "valueset", "unit", "aliases", "worse", "first", "second", "panel", "pairing",
                "upper_limit", "positive_at", "plausible")
# Kinds whose readings are numbers in the measure's unit: each declares the range a real reading can lie in.
PLAUSIBLE_KINDS = ("quantity", "pair")
WORSE = ("higher", "lower")
PRESENCE_KEYS = ("positive", "negative", "valuesets")
ORDER_KEYS = ("weight",)
SCORES_KEYS = ("instruments", "baseline_window")
SERVICE_KEYS = ("id", "hook", "title", "description", "anchor", "sessions")
# The resource types fetched with a date bound when prefetch lacks them (adapters/fhir/prefetch.py TEMPLATES, the
# types with a date parameter; tests/test_protocol_shape.py keeps the two equal). Each needs a declared look-back:
# without one the fetch would read the patient's whole history.
FETCH_TYPES = ("Observation", "MedicationAdministration")


def did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


class _Checker:
    def __init__(self, where: str) -> None:
        self.where = where
        self.diags: list[Diagnostic] = []

    def error(self, pos: tuple[int, int], message: str, hint: str | None = None, code: str = "schema") -> None:
        self.diags.append(Diagnostic(self.where, pos[0], pos[1], code, message, hint=hint))

    def keys(self, node: dict[Any, Any], allowed: tuple[str, ...], section: str) -> None:
        for key in node:
            if str(key) not in allowed:
                self.error(yamlsource.key_pos(node, key), f"{section}: '{key}' is not one of {', '.join(allowed)}",
                           did_you_mean(str(key), list(allowed)), "unknown-key")

    def mapping(self, parent: Any, key: Any, name: str, example: str) -> dict[Any, Any] | None:
        """parent[key] if it is a mapping; None (with an error unless it is absent) otherwise."""
        value = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(value, dict):
            return value
        if isinstance(parent, dict) and key in parent:
            self.error(yamlsource.value_pos(parent, key), f"{name} is a mapping, not {_kind(value)}",
                       f"for example `{example}`")
        return None

    def text(self, parent: dict[Any, Any], key: Any, name: str, required: bool = False, example: str = "") -> None:
        if key not in parent:
            if required:
                self.error(yamlsource.node_pos(parent), f"{name} needs '{key}'",
                           f"for example `{example}`" if example else None)
            return
        value = parent[key]
        if not isinstance(value, str) or not value.strip():
            self.error(yamlsource.value_pos(parent, key), f"{name}.{key} is a word or text, not {_kind(value)}",
                       f"for example `{example}`" if example else None)

    def words(self, parent: dict[Any, Any], key: Any, name: str, example: str, scalars: bool = False) -> None:
        if key not in parent:
            return
        value = parent[key]
        ok = (str, int, float) if scalars else (str,)
        if not isinstance(value, list) or not all(isinstance(x, ok) and not isinstance(x, bool) for x in value):
            self.error(yamlsource.value_pos(parent, key), f"{name}.{key} is a list of words", f"for example "
                                                                                              f"`{example}`")

    def table(self, parent: Any, key: str, example: str) -> None:
        """A mapping of words to words (units, display_units, aliases)."""
        node = self.mapping(parent, key, key, example)
        if node is None:
            return
        for k, v in node.items():
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                self.error(yamlsource.value_pos(node, k), f"{key}.{k} is a word, not {_kind(v)}",
                           f"for example `{example}`")


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"'{str(value).lower()}' (a yes/no)"
    if isinstance(value, str):
        return f"the text '{value}'"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"'{value}'"


def check(data: dict[Any, Any], where: str) -> list[Diagnostic]:
    c = _Checker(where)
    c.keys(data, TOP_KEYS, "protocol.yaml")
    for key in ("protocol", "title"):
        c.text(data, key, "protocol.yaml", example=f"{key}: lithium")
    if not isinstance(data.get("version"), (str, int, float)) or isinstance(data.get("version"), bool):
        c.error(yamlsource.value_pos(data, "version"), "version is a version number, not "
                                                       f"{_kind(data.get('version'))}", "for example `version: 1.0.0`")
    for section, keys, example in (("drugs", DRUG_KEYS, "lithium: {valueset: lithium}"),
                                   ("routes", ROUTE_KEYS, "iv: {valueset: route-intravenous, label: IV}")):
        node = c.mapping(data, section, section, f"{section}: {{{example}}}")
        for name, entry in (node or {}).items():
            if not isinstance(entry, dict):
                written = entry if isinstance(entry, str) else name
                c.error(yamlsource.value_pos(node, name), f"{section}.{name} is a mapping with 'valueset', not "
                                                          f"{_kind(entry)}",
                        f"for example `{name}: {{valueset: {written}}}`")
                continue
            c.keys(entry, keys, f"{section}.{name}")
            c.text(entry, "valueset", f"{section}.{name}", required=True, example=f"valueset: {name}")
            if section == "drugs":
                c.words(entry, "names", f"drugs.{name}", "names: [BRANDNAME]")
                if "count_units" in entry:
                    c.mapping(entry, "count_units", f"drugs.{name}.count_units", "count_units: {spray: 14 mg}")
            else:
                c.text(entry, "label", f"routes.{name}", example="label: IV")
    if isinstance(data.get("drugs"), dict) and not data["drugs"]:
        c.error(yamlsource.value_pos(data, "drugs"), "drugs names at least one drug",
                "for example `drugs: {lithium: {valueset: lithium}}`")
    _measures(c, data)
    for key in ("units", "display_units"):
        c.table(data, key, f'{key}: {{mmHg: "mm[Hg]"}}')
    presence = c.mapping(data, "presence", "presence", "presence: {positive: [positive], negative: [negative]}")
    if presence is not None:
        c.keys(presence, PRESENCE_KEYS, "presence")
        for key in PRESENCE_KEYS:
            c.words(presence, key, "presence", f"{key}: [positive, detected]", scalars=key != "valuesets")
    sections: tuple[tuple[str, tuple[str, ...], str], ...] = (
        ("order", ORDER_KEYS, "order: {weight: {measure: weight, within: 30d}}"),
        ("scores", SCORES_KEYS, "scores: {instruments: [phq9], baseline_window: 30d}"))
    for key, allowed, example in sections:
        node = c.mapping(data, key, key, example)
        if node is not None:
            c.keys(node, allowed, key)
    c.mapping(data, "defaults", "defaults", "defaults: {drugs: [lithium], hooks: [order-sign]}")  # keys: protocol.py
    _fetch(c, data)
    _services(c, data)
    return c.diags


def _measures(c: _Checker, data: dict[Any, Any]) -> None:
    node = c.mapping(data, "measures", "measures", "measures: {lithium-level: {valueset: lithium-level, ...}}")
    for name, spec in (node or {}).items():
        if not isinstance(spec, dict):
            c.error(yamlsource.value_pos(node, name), f"measures.{name} is a mapping, not {_kind(spec)}",
                    f"for example `{name}: {{label: {name}, valueset: {name}, unit: mg, worse: higher}}`")
            continue
        section = f"measures.{name}"
        c.keys(spec, MEASURE_KEYS, section)
        for key in ("label", "kind", "unit", "panel"):
            c.text(spec, key, section)
        kind = spec.get("kind", "quantity")
        if kind != "pair":
            c.text(spec, "valueset", section, required=True, example=f"valueset: {name}")
        else:
            for half in ("first", "second"):
                pair = spec.get(half)
                if not (isinstance(pair, dict) and isinstance(pair.get("field"), str)
                        and isinstance(pair.get("valueset"), str)):
                    at = yamlsource.value_pos(spec, half) if half in spec else yamlsource.node_pos(spec)
                    c.error(at, f"{section}.{half}: a pair measure names its {half} half's field and value set",
                            f"for example `{half}: {{field: systolic, valueset: systolic-bp}}`")
        if "aliases" in spec:
            c.table(spec, "aliases", 'aliases: {mmHg: "mm[Hg]"}')
        worse = spec.get("worse")
        if worse not in WORSE:
            at = yamlsource.value_pos(spec, "worse") if "worse" in spec else yamlsource.node_pos(spec)
            message = (f"{section}: 'worse' is one of higher, lower, not {_kind(worse)}" if "worse" in spec else
                       f"{section} needs 'worse' (higher or lower: which value governs when two readings share a "
                       "time, G5; the engine assumes none)")
            c.error(at, message, did_you_mean(str(worse), list(WORSE)) if isinstance(worse, str) else
                    "for example `worse: higher`")
        limit = spec.get("upper_limit")
        if "upper_limit" in spec and (not isinstance(limit, (int, float)) or isinstance(limit, bool)):
            c.error(yamlsource.value_pos(spec, "upper_limit"), f"{section}.upper_limit is a number, not "
                                                               f"{_kind(limit)}", "for example `upper_limit: 40`")
        _plausible(c, spec, section, kind)
        positive = spec.get("positive_at")
        if "positive_at" in spec:
            try:
                ok = isinstance(positive, dict) and isinstance(positive.get("unit"), str) and (
                    float(positive["value"]) >= 0)
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                c.error(yamlsource.value_pos(spec, "positive_at"), f"{section}.positive_at is a value and a unit",
                        'for example `positive_at: {value: 25, unit: "[IU]/L"}`')


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def _plausible(c: _Checker, spec: dict[Any, Any], section: str, kind: Any) -> None:
    """`plausible: [low, high]`, in the measure's unit: required for numeric measures (a reading outside it is not
    used, and said: DQ-02), optional for scores; the engine assumes no range."""
    example = "for example `plausible: [0.2, 650]` (kg), with its source in a comment"
    if "plausible" not in spec:
        if kind in PLAUSIBLE_KINDS:
            c.error(yamlsource.node_pos(spec), f"{section} needs 'plausible' ([low, high] in its unit: a reading "
                                               "outside it is set aside as implausible; the engine assumes none)",
                    example)
        return
    value = spec["plausible"]
    if kind == "pair":
        halves = [h.get("field") for h in (spec.get("first"), spec.get("second")) if isinstance(h, dict)]
        if not (isinstance(value, dict) and sorted(map(str, value)) == sorted(map(str, halves))
                and all(_range(v) for v in value.values())):
            c.error(yamlsource.value_pos(spec, "plausible"), f"{section}.plausible gives each half its [low, high]: "
                                                             f"{', '.join(map(str, halves))}",
                    "for example `plausible: {systolic: [20, 300], diastolic: [10, 200]}`")
    elif not _range(value):
        c.error(yamlsource.value_pos(spec, "plausible"), f"{section}.plausible is [low, high], two numbers with "
                                                         f"low below high, not {_kind(value)}", example)


def _range(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_number(x) for x in value) and value[0] < value[1]


def _fetch(c: _Checker, data: dict[Any, Any]) -> None:
    example = "fetch: {" + ", ".join(f"{t}: 400d" for t in FETCH_TYPES) + "}"
    if "fetch" not in data:
        c.error(yamlsource.node_pos(data), "protocol.yaml needs 'fetch': how far back each resource type is fetched "
                                           "when prefetch lacks it (the engine assumes no limit)",
                f"for example `{example}`")
        return
    node = c.mapping(data, "fetch", "fetch", example)
    if node is None:
        return
    c.keys(node, FETCH_TYPES, "fetch")
    for rtype in FETCH_TYPES:
        if rtype not in node:
            c.error(yamlsource.key_pos(data, "fetch"), f"fetch needs '{rtype}', a look-back (like 400d): the engine "
                                                       "assumes none", f"for example `{rtype}: 400d`")


def _services(c: _Checker, data: dict[Any, Any]) -> None:
    node = data.get("services")
    example = "services: [{id: lithium-order-sign, hook: order-sign, title: ..., description: ...}]"
    if not isinstance(node, list) or not node:
        c.error(yamlsource.value_pos(data, "services"), f"services is a list of services, not {_kind(node)}",
                f"for example `{example}`")
        return
    for i, svc in enumerate(node):
        if not isinstance(svc, dict):
            c.error(yamlsource.value_pos(node, i), f"services[{i}] is a mapping, not {_kind(svc)}",
                    "for example `- {id: lithium-order-sign, hook: order-sign, title: ..., description: ...}`")
            continue
        c.keys(svc, SERVICE_KEYS, f"services[{i}]")
        for key in ("id", "hook", "title", "description"):
            c.text(svc, key, f"services[{i}]", required=True)
        for key in ("anchor", "sessions"):
            c.text(svc, key, f"services[{i}]")
        hook = svc.get("hook")
        if isinstance(hook, str) and hook not in HOOKS:
            c.error(yamlsource.value_pos(svc, "hook"), f"service {svc.get('id')}: hook '{hook}' is not one of "
                                                       f"{', '.join(HOOKS)}", did_you_mean(hook, list(HOOKS)),
                    "unknown-hook")
