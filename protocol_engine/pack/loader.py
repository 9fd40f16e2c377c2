"""Rule files (YAML) -> Rule, with a Diagnostic at the exact line and column of every problem."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from itertools import product
from pathlib import Path
from typing import Any

from jinja2 import meta, nodes
from jinja2.exceptions import TemplateError, TemplateSyntaxError

from ..core import display
from ..core.durations import parse_hours
from ..core.errors import Diagnostic
from ..core.facts import FACTS, RENAMED
from ..core.model import (
    CATEGORIES,
    HOOKS,
    INDICATORS,
    STATUSES,
    Action,
    CardTemplate,
    Citation,
    Conjunct,
    FieldTest,
    Location,
    Pattern,
    Rule,
    Setting,
    Suggestion,
    Variant,
)
from ..core.templates import TEMPLATE_GLOBALS, UNITS_KEY, environment
from . import restated, settingspec, yamlsource
from .internal import INTERNAL  # noqa: F401  (re-exported: tests read clinician text with it)
from .internal import pattern as internal_pattern
from .protocol import Protocol
from .shape import did_you_mean
from .zone import deployment_zone

SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
PLAIN_KEYS = ("when", "then")
CITATION_KEYS = ("label", "url", "drugs")
RULE_KEYS = {"rule", "version", "status", "category", "title", "hooks", "drugs", "plain", "settings", "when",
             "suppressed_by", "card", "citation", "notes", "effective"}
OPS = {"eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "within", "older_than"}
PATTERN_META = {"fact", "as"}
MAX_CONJUNCTS = 64
SINGLE_FACTS = ("patient", "order", "course", "score")  # one per request


class RuleParser:
    """Parses one rule file; collects every problem rather than stopping at the first."""

    def __init__(self, path: Path, protocol: Protocol, valuesets: set[str],
                 site: Mapping[str, Mapping[str, tuple[Any, str]]] | None = None,
                 rule_ids: frozenset[str] = frozenset()) -> None:
        self.path = path
        self.rule_ids = rule_ids  # the pack's rule ids: typed into clinician text they are internal marks
        self.site = site or {}
        self.specs: dict[str, Setting] = {}
        self.where = str(path)
        self.protocol = protocol
        self.valuesets = valuesets
        self.diags: list[Diagnostic] = []
        self.settings: dict[str, Any] = {}
        # The rule file's own values: a restated literal is judged against these, not a site's, because the site
        # cannot edit the text ("usually 0.5 mg/kg" is not a restatement of a site's DOS-01 limit of 0.5).
        self.pack_settings: dict[str, Any] = {}
        self.setting_units: dict[str, str] = {}

    def error(self, pos: tuple[int, int], code: str, message: str, hint: str | None = None,
              length: int = 1) -> None:
        self.diags.append(Diagnostic(self.where, pos[0], pos[1], code, message, hint, length=length))

    def loc(self, pos: tuple[int, int]) -> Location:
        return Location(self.where, pos[0], pos[1])

    def parse(self) -> tuple[Rule | None, list[Diagnostic]]:
        data, diags = yamlsource.load(self.path, shared=True)
        if diags:
            return None, diags
        if not isinstance(data, dict):
            self.error((1, 1), "schema", "a rule file must be a YAML mapping")
            return None, self.diags
        for key in data:
            if key not in RULE_KEYS:
                self.error(yamlsource.key_pos(data, key), "unknown-key", f"unknown key '{key}'",
                           did_you_mean(str(key), sorted(RULE_KEYS)), len(str(key)))
        for key in ("rule", "version", "status", "category", "title", "hooks", "when", "card", "citation"):
            if key not in data and key not in self.protocol.defaults:
                code = "missing-citation" if key == "citation" else "schema"
                self.error(yamlsource.node_pos(data), code, f"missing required key '{key}'")
        if self.diags:
            return None, self.diags
        rule_id = str(data["rule"])
        version = str(data["version"])
        if not SEMVER.match(version):
            self.error(yamlsource.value_pos(data, "version"), "schema", f"version '{version}' is not semver (1.2.3)")
        self._enum(data, "status", STATUSES)
        self._enum(data, "category", CATEGORIES)
        # `drugs` and `hooks` come from the pack's `defaults` unless the rule says otherwise; `drugs: []`
        # opts a rule out of the drug scope (it applies whatever is ordered).
        defaults = self.protocol.defaults
        hooks = self._list_of(data if "hooks" in data else defaults, "hooks", HOOKS)
        if "drugs" in data and data["drugs"] == []:
            drugs: list[str] = []
        elif "drugs" in data:
            drugs = self._list_of(data, "drugs", tuple(self.protocol.drugs))
        else:
            drugs = [str(d) for d in defaults.get("drugs") or []]
        effective = self._effective(data)
        self._settings(data.get("settings"), data, rule_id)
        conjuncts = self._when(data["when"], data, bool(drugs))
        card = self._card(data["card"], data, conjuncts)
        citations = self._citations(data["citation"], data)
        for drug in drugs:  # every card leads with a source about its own drug (or about none in particular)
            if citations and not any(not c.drugs or drug in c.drugs for c in citations):
                self.error(yamlsource.key_pos(data, "citation"), "no-source-for-drug",
                           f"the rule gives {drug} cards, but every citation is about "
                           f"{' and '.join(sorted({d for c in citations for d in c.drugs}))}",
                           f"add a source about {drug} (its label, a consensus statement, a trial), or give a "
                           "citation 'drugs: [...]' when its title does not name the drug", len("citation"))
        plain = data.get("plain") or {}
        if not isinstance(plain, dict) or not plain.get("when") or not plain.get("then"):
            self.error(yamlsource.key_pos(data, "plain") if "plain" in data else yamlsource.node_pos(data),
                       "missing-plain-words", "a rule needs plain-words 'plain: {when: ..., then: ...}'")
            plain = {}
        self._unknown_keys(plain, PLAIN_KEYS, "plain")
        if isinstance(data.get("title"), str):
            self._check_restated(data, "title", data["title"], rendered=False)
            self._check_internal(data, "title", data["title"])
        plain_text = {k: self._plain_words(plain, k) for k in ("when", "then") if k in plain}
        suppressed = data.get("suppressed_by") or []
        if not isinstance(suppressed, list):
            self.error(yamlsource.value_pos(data, "suppressed_by"), "schema", "suppressed_by must be a list of ids")
            suppressed = []
        if self.diags or card is None or not citations:
            return None, self.diags
        facts_read = frozenset(p.fact for c in conjuncts for p in (*c.positives, *c.negatives))
        rule = Rule(
            id=rule_id, version=version, status=str(data["status"]), category=str(data["category"]),
            title=str(data["title"]), hooks=tuple(hooks), drugs=tuple(drugs),
            when_text=plain_text.get("when", ""), then_text=plain_text.get("then", ""),
            settings=dict(self.settings), conjuncts=tuple(conjuncts), card=card, citation=citations[0],
            suppressed_by=tuple(str(s) for s in suppressed), path=self.where,
            notes=" ".join(str(data.get("notes", "")).split()), facts_read=facts_read | {"order"},
            setting_specs=tuple(self.specs.values()), citations=tuple(citations), effective=effective,
            setting_units=dict(self.setting_units), display_units=self.protocol.display_units,
            protocol_values=self.protocol.values,
        )
        return rule, self.diags

    def _enum(self, data: Any, key: str, allowed: tuple[str, ...]) -> None:
        value = data.get(key)
        if value not in allowed:
            self.error(yamlsource.value_pos(data, key), f"unknown-{key}",
                       f"{key} '{value}' is not one of {', '.join(allowed)}", did_you_mean(str(value), list(allowed)),
                       len(str(value)))

    def _list_of(self, data: Any, key: str, allowed: tuple[str, ...]) -> list[str]:
        value = data.get(key)
        if not isinstance(value, list) or not value:
            self.error(yamlsource.value_pos(data, key), "schema", f"{key} must be a non-empty list")
            return []
        for i, item in enumerate(value):
            if item not in allowed:
                self.error(yamlsource.value_pos(value, i), f"unknown-{key.rstrip('s')}",
                           f"'{item}' is not one of {', '.join(allowed)}", did_you_mean(str(item), list(allowed)),
                           len(str(item)))
        return [str(v) for v in value]

    def _settings(self, node: Any, data: Any, rule_id: str) -> None:
        if node is None:
            return
        if not isinstance(node, dict):
            self.error(yamlsource.value_pos(data, "settings"), "schema", "settings must be a mapping")
            return
        overrides = self.site.get(rule_id, {})
        for name in node:
            spec, diags = settingspec.parse(self.where, node, str(name),
                                            internal_pattern(self.protocol.internal_labels))
            self.diags.extend(diags)
            if spec is None:
                continue
            self.pack_settings[spec.name] = spec.value
            if spec.name in overrides:  # a site's value, already checked against this declaration (site.py)
                spec = settingspec.overridden(spec, *overrides[spec.name])
            self.specs[spec.name] = spec
            self.settings[spec.name] = spec.value
            if spec.unit is not None:
                self.setting_units[spec.name] = spec.unit

    # -- when ----------------------------------------------------------------------------
    def _when(self, node: Any, parent: Any, scoped: bool) -> list[Conjunct]:
        dnf = self._dnf(node, parent, "when")
        if dnf is None:
            return []
        if len(dnf) > MAX_CONJUNCTS:
            self.error(yamlsource.key_pos(parent, "when"), "too-complex",
                       f"the condition expands to {len(dnf)} alternatives (limit {MAX_CONJUNCTS})")
            return []
        # A scoped rule always matches its order, so a rule of absences alone ("no BP in 24 h") is fine.
        if not scoped and not all(c.positives for c in dnf):
            self.error(yamlsource.key_pos(parent, "when"), "schema", "a rule needs at least one positive pattern")
        for conj in dnf:
            positive_types = {p.fact for p in conj.positives} | ({"order"} if scoped else set())
            for neg in conj.negatives:
                if neg.fact in SINGLE_FACTS and neg.fact in positive_types:
                    self.error((neg.loc.line, neg.loc.col), "negated-bound-fact",
                               f"'none' on '{neg.fact}' can never see the {neg.fact} fact the rule already matched",
                               "put the exclusion on the positive pattern: ne / not_in")
            names = [p.bind for p in conj.positives if p.bind]
            dupes = {n for n in names if names.count(n) > 1}
            for name in dupes:
                pat = next(p for p in conj.positives if p.bind == name)
                self.error((pat.loc.line, pat.loc.col), "duplicate-binding",
                           f"'{name}' is bound twice in one alternative; give each pattern its own 'as'")
        return dnf

    def _dnf(self, node: Any, parent: Any, key: Any) -> list[Conjunct] | None:
        pos = yamlsource.value_pos(parent, key)
        if not isinstance(node, dict):
            self.error(pos, "schema", "a condition must be a mapping: a pattern (with 'fact') or all/any/none")
            return None
        if "fact" in node:
            pattern = self._pattern(node, parent, key)
            return [Conjunct((pattern,), ())] if pattern else None
        unknown = [k for k in node if k not in ("all", "any", "none")]
        for k in unknown:
            self.error(yamlsource.key_pos(node, k), "unknown-key", f"'{k}' is not all, any, none or fact",
                       did_you_mean(str(k), ["all", "any", "none", "fact"]), len(str(k)))
        if unknown:
            return None
        result = [Conjunct((), ())]
        ok = True
        for combinator in ("all", "any", "none"):
            if combinator not in node:
                continue
            items = node[combinator]
            labels: list[str] = []
            if combinator == "any" and isinstance(items, dict) and items:
                # Named alternatives: `any: {reading: {...}, diagnosis: {...}}`; templates get `held`.
                for name in items:
                    if not isinstance(name, str) or not re.match(r"^[a-z][a-z0-9_-]*$", name):
                        self.error(yamlsource.key_pos(items, name), "schema",
                                   "an alternative's name is lower-case letters, digits, - and _")
                        ok = False
                labels = [str(n) for n in items]
                named_items = items
                items = [items[n] for n in items]
                subs = [self._dnf(named_items[n], named_items, n) for n in named_items]
                if any(sub is None for sub in subs):
                    ok = False
                    continue
                alternatives = [Conjunct(c.positives, c.negatives, (label, *c.names))
                                for label, sub in zip(labels, subs, strict=True) for c in (sub or [])]
                result = [Conjunct(a.positives + b.positives, a.negatives + b.negatives, a.names + b.names)
                          for a, b in product(result, alternatives)]
                continue
            if not isinstance(items, list) or not items:
                self.error(yamlsource.value_pos(node, combinator), "schema", f"'{combinator}' needs a non-empty list")
                ok = False
                continue
            if combinator == "none":
                negatives = []
                for i, item in enumerate(items):
                    if not isinstance(item, dict) or "fact" not in item:
                        self.error(yamlsource.value_pos(items, i), "none-needs-patterns",
                                   "'none' holds patterns only (each with 'fact')")
                        ok = False
                        continue
                    if "as" in item:
                        self.error(yamlsource.key_pos(item, "as"), "schema",
                                   "a pattern under 'none' matches nothing, so it cannot bind a name")
                    pattern = self._pattern(item, items, i)
                    if pattern:
                        negatives.append(pattern)
                result = [Conjunct(c.positives, c.negatives + tuple(negatives), c.names) for c in result]
                continue
            subs = [self._dnf(item, items, i) for i, item in enumerate(items)]
            if any(s is None for s in subs):
                ok = False
                continue
            if combinator == "all":
                for sub in subs:
                    result = [Conjunct(a.positives + b.positives, a.negatives + b.negatives, a.names + b.names)
                              for a, b in product(result, sub or [])]
            else:
                alternatives = [c for sub in subs for c in (sub or [])]
                result = [Conjunct(a.positives + b.positives, a.negatives + b.negatives, a.names + b.names)
                          for a, b in product(result, alternatives)]
        return result if ok else None

    def _pattern(self, node: Any, parent: Any, key: Any) -> Pattern | None:
        fact = node.get("fact")
        pos = yamlsource.value_pos(node, "fact")
        if fact not in FACTS:
            self.error(pos, "unknown-fact-type", f"unknown fact type '{fact}'",
                       did_you_mean(str(fact), sorted(FACTS)), len(str(fact)))
            return None
        fields = FACTS[fact]
        measure = node.get("measure")
        pair_fields: dict[str, str] = {}
        if isinstance(measure, str):
            m = self.protocol.measures.get(measure)
            if m is None:
                self.error(yamlsource.value_pos(node, "measure"), "unknown-measure",
                           f"measure '{measure}' is not declared in {Path(self.protocol.path).name}",
                           did_you_mean(measure, sorted(self.protocol.measures)), len(measure))
            elif m.first and m.second:
                pair_fields = {m.first[0]: f"number:{m.unit}", m.second[0]: f"number:{m.unit}"}
        tests: list[FieldTest] = []
        for name, spec in node.items():
            if name in PATTERN_META:
                continue
            kind = pair_fields.get(name) or fields.get(name)
            if kind is None:
                renamed = RENAMED.get(str(name))
                if renamed is not None and fact in renamed[1]:
                    self.error(yamlsource.key_pos(node, name), "renamed-field",
                               f"fact '{fact}': '{name}' is now '{renamed[0]}' (hours since the reading was taken; "
                               f"a patient's age in years is the patient fact's 'age')",
                               f"write `{renamed[0]}:`", len(str(name)))
                    continue
                self.error(yamlsource.key_pos(node, name), "unknown-field",
                           f"fact '{fact}' has no field '{name}'",
                           did_you_mean(str(name), sorted([*fields, *pair_fields])), len(str(name)))
                continue
            if kind == "number:measure":
                m = self.protocol.measures.get(measure) if isinstance(measure, str) else None
                kind = f"number:{m.unit}" if m and m.unit else "number"
            tests.extend(self._tests(node, name, spec, kind))
        bind = node.get("as")
        if bind is not None and (not isinstance(bind, str) or not re.match(r"^[a-z][a-z0-9_]*$", bind)):
            self.error(yamlsource.value_pos(node, "as"), "schema", "'as' must be a lower-case name")
            bind = None
        return Pattern(fact, bind, tuple(tests), self.loc(yamlsource.node_pos(node)))

    def _tests(self, node: Any, name: str, spec: Any, kind: str) -> list[FieldTest]:
        ops = spec if isinstance(spec, dict) else {"eq": spec}
        out = []
        for op, raw in ops.items():
            pos = yamlsource.value_pos(ops, op) if isinstance(spec, dict) else yamlsource.value_pos(node, name)
            if op not in OPS:
                self.error(yamlsource.key_pos(ops, op), "unknown-operator", f"unknown operator '{op}'",
                           did_you_mean(str(op), sorted(OPS)), len(str(op)))
                continue
            value = self._resolve(raw, kind, pos)
            if value is _BAD:
                continue
            if op in ("within", "older_than"):
                if kind != "duration":
                    self.error(pos, "schema", f"'{op}' applies to time fields; '{name}' is {kind}")
                    continue
                out.append(FieldTest(name, "lte" if op == "within" else "gt", value, self.loc(pos)))
                continue
            if op in ("in", "not_in"):
                if not isinstance(value, list) or not value:
                    self.error(pos, "schema", f"'{op}' needs a non-empty list")
                    continue
                if kind == "valueset":
                    for item in value:
                        self._check_valueset(item, pos)
            elif kind == "valueset":
                self._check_valueset(value, pos)
            if kind == "bool" and not isinstance(value, bool):
                self.error(pos, "type-mismatch", f"'{name}' is true or false")
                continue
            if kind.startswith("number") and op not in ("in", "not_in") and not isinstance(value, (int, float)):
                self.error(pos, "type-mismatch", f"'{name}' is a number; got '{value}'")
                continue
            out.append(FieldTest(name, op, value, self.loc(pos)))
        return out

    def _check_valueset(self, name: Any, pos: tuple[int, int]) -> None:
        if name not in self.valuesets:
            self.error(pos, "unknown-valueset", f"value set '{name}' is not defined",
                       did_you_mean(str(name), sorted(self.valuesets)), len(str(name)))

    def _resolve(self, raw: Any, kind: str, pos: tuple[int, int]) -> Any:
        value = yamlsource.plain(raw)
        unit = None
        if isinstance(value, str) and value.startswith("$"):
            setting = value[1:]
            if setting not in self.settings:
                self.error(pos, "unknown-setting", f"setting '{setting}' is not defined under 'settings'",
                           did_you_mean(setting, sorted(self.settings)), len(value))
                return _BAD
            unit = self.setting_units.get(setting)
            value = self.settings[setting]
        if kind == "duration":
            hours = parse_hours(value)
            if hours is None:
                self.error(pos, "bad-duration", f"'{value}' is not a duration",
                           "write a number and one of m, h, d, w, y: 30m, 24h, 14d", len(str(value)))
                return _BAD
            return hours
        if kind.startswith("number:") and unit is not None:
            expected = kind.split(":", 1)[1]
            if unit != expected:
                self.error(pos, "unit-mismatch", f"threshold is in '{unit}' but the field is in '{expected}'",
                           length=len(str(raw)))
                return _BAD
        return value

    # -- card ----------------------------------------------------------------------------
    def _card(self, node: Any, data: Any, conjuncts: list[Conjunct]) -> CardTemplate | None:
        if not isinstance(node, dict):
            self.error(yamlsource.value_pos(data, "card"), "schema", "card must be a mapping")
            return None
        indicator = node.get("indicator")
        if indicator not in INDICATORS:
            self.error(yamlsource.value_pos(node, "indicator"), "unknown-indicator",
                       f"indicator '{indicator}' is not one of {', '.join(INDICATORS)}",
                       did_you_mean(str(indicator), list(INDICATORS)))
        names = set(TEMPLATE_GLOBALS) | set(self.settings)
        # A name bound in only some alternatives may be used under `{% if name is defined %}`.
        names |= {p.bind for conj in conjuncts for p in conj.positives if p.bind}
        names.add("order")
        for key in ("summary", "detail"):
            value = node.get(key)
            if not isinstance(value, str) or not value.strip():
                self.error(yamlsource.key_pos(node, key) if key in node else yamlsource.node_pos(node), "schema",
                           f"card needs a '{key}' template")
                continue
            self._check_template(node, key, names)
            self._check_renamed(node, key, conjuncts)
            self._check_restated(node, key, str(node[key]))
            self._check_internal(node, key, str(node[key]))
        for item in node.get("override_reasons") or []:
            if isinstance(item, dict) and isinstance(item.get("display"), str):
                self._check_restated(item, "display", item["display"])
                self._check_internal(item, "display", item["display"], "override reason")
        for item in node.get("suggestions") or []:
            if isinstance(item, dict):
                if isinstance(item.get("label"), str):
                    self._check_restated(item, "label", item["label"])
                    self._check_internal(item, "label", item["label"], "suggestion label")
                for a in item.get("actions") or []:
                    if isinstance(a, dict) and isinstance(a.get("description"), str):
                        self._check_restated(a, "description", a["description"])
        self._check_held(node, conjuncts)
        reasons = []
        for i, item in enumerate(node.get("override_reasons") or []):
            if not isinstance(item, dict) or not item.get("code") or not item.get("display"):
                self.error(yamlsource.value_pos(node["override_reasons"], i), "schema",
                           "an override reason needs 'code' and 'display'")
                continue
            reasons.append((str(item["code"]), str(item["display"])))
        if indicator in ("warning", "critical") and not reasons:
            self.error(yamlsource.key_pos(node, "indicator"), "missing-override-reasons",
                       f"a {indicator} card must offer override reasons")
        suggestions = []
        for i, item in enumerate(node.get("suggestions") or []):
            s = self._suggestion(item, node["suggestions"], i)
            if s:
                suggestions.append(s)
        behavior = node.get("selection_behavior", "at-most-one")
        if behavior not in ("at-most-one", "any"):
            self.error(yamlsource.value_pos(node, "selection_behavior"), "schema",
                       "selection_behavior is at-most-one or any")
        variants = self._variants(node, conjuncts)
        if not isinstance(indicator, str) or self.diags:
            return None
        return CardTemplate(indicator, str(node["summary"]).strip(), str(node["detail"]).strip(),
                            tuple(reasons), tuple(suggestions), str(behavior), variants)

    def _variants(self, node: Any, conjuncts: list[Conjunct]) -> tuple[Variant, ...]:
        """`variants: [{when: {BINDING: {FIELD: VALUE}}, indicator: info}]`, checked against the bindings."""
        items = node.get("variants") or []
        if not isinstance(items, list):
            self.error(yamlsource.value_pos(node, "variants"), "schema", "variants must be a list")
            return ()
        bound = {p.bind: p.fact for conj in conjuncts for p in conj.positives if p.bind}
        everywhere = {name for name in bound if all(any(p.bind == name for p in c.positives) for c in conjuncts)}
        out = []
        for i, item in enumerate(items):
            pos = yamlsource.value_pos(items, i)
            if not isinstance(item, dict) or set(item) != {"when", "indicator"} or not isinstance(item["when"], dict) \
                    or len(item["when"]) != 1:
                self.error(pos, "schema", "a variant is {when: {BINDING: {FIELD: VALUE}}, indicator: LEVEL}")
                continue
            if item["indicator"] not in INDICATORS:
                self.error(yamlsource.value_pos(item, "indicator"), "unknown-indicator",
                           f"indicator '{item['indicator']}' is not one of {', '.join(INDICATORS)}",
                           did_you_mean(str(item["indicator"]), list(INDICATORS)))
                continue
            (name, values), = item["when"].items()
            if name not in everywhere:
                self.error(yamlsource.key_pos(item["when"], name), "unknown-binding",
                           f"variant names '{name}', which is not bound (as:) in every alternative of 'when'",
                           did_you_mean(str(name), sorted(everywhere)))
                continue
            fields = FACTS[bound[name]]
            if not isinstance(values, dict) or not values or any(f not in fields for f in values):
                self.error(yamlsource.value_pos(item["when"], name), "unknown-field",
                           f"variant tests fields of the '{bound[name]}' fact ({', '.join(sorted(fields))})")
                continue
            out.append(Variant(str(name), tuple((str(f), v) for f, v in values.items()), str(item["indicator"])))
        return tuple(out)

    def _check_renamed(self, node: Any, key: str, conjuncts: list[Conjunct]) -> None:
        """A template reading a renamed field of a bound fact (`{{ bp.age }}`) is told the new name."""
        bound = {p.bind: p.fact for conj in conjuncts for p in conj.positives if p.bind}
        for old, (new, types) in RENAMED.items():
            for bind, fact in sorted(bound.items()):
                if fact in types and re.search(rf"\b{re.escape(bind)}\.{old}\b", str(node[key])):
                    self.error(yamlsource.value_pos(node, key), "renamed-field",
                               f"the {key} template reads '{bind}.{old}': the {fact} fact's '{old}' is now "
                               f"'{new}' (hours since the reading was taken)", f"write `{bind}.{new}`")

    def _check_template(self, node: Any, key: str, names: set[str]) -> None:
        pos = yamlsource.value_pos(node, key)
        env = environment()
        try:
            ast = env.parse(str(node[key]))
            unknown = False
            for kind, known, found in (("filter", env.filters, ast.find_all(nodes.Filter)),
                                       ("test", env.tests, ast.find_all(nodes.Test))):
                for used in found:
                    if used.name not in known:
                        unknown = True
                        self.error((pos[0] + max(used.lineno - 1, 0), pos[1]), "template-unknown-" + kind,
                                   f"the {key} template uses the {kind} '{used.name}', which does not exist",
                                   did_you_mean(used.name, sorted(known)), len(used.name))
            if unknown:
                return
            undeclared = meta.find_undeclared_variables(ast)
        except TemplateSyntaxError as exc:  # also the compiler's assertions (found by rule-file fuzzing)
            self.error((pos[0] + max((exc.lineno or 1) - 1, 0), pos[1]), "template-syntax", exc.message or "syntax")
            return
        for var in sorted(undeclared - names):
            self.error(pos, "template-undefined-var", f"the {key} template uses '{var}', which is not bound",
                       did_you_mean(var, sorted(names)), len(var))

    def _check_internal(self, node: Any, key: Any, source: str, what: str | None = None,
                        card: bool = True) -> None:
        """Every internal mark of the field, each at its own place (not only the first). Rule ids are marks in
        what a clinician reads (`card`); the plain words are for reviewers of the rule page, where ids are
        the page names."""
        marks = internal_pattern(self.protocol.internal_labels, self.rule_ids if card else ())
        start = yamlsource.value_pos(node, key)
        seen: dict[str, int] = {}
        for text in restated.texts(source):
            for found in marks.finditer(text):
                mark = found.group(0)
                seen[mark] = seen.get(mark, 0) + 1
                line, col = self._locate(start, mark, seen[mark])
                hint = ("name the check in words (its title), not its id" if mark in self.rule_ids else
                        "write the source as published (as the citation labels do) and the semantics by name "
                        "(the pack README); keep [D]/[U]/[S] in notes")
                self.error((line, col), "internal-label",
                           f"the {what or key} shows '{mark}', an internal mark clinicians do not know", hint,
                           len(mark))

    def _unknown_keys(self, node: Any, allowed: tuple[str, ...], where: str) -> None:
        """A misspelt key inside a block (`plain: {than: ...}`, a citation's `ulr:`) is an error, not ignored."""
        if not isinstance(node, dict):
            return
        for key in node:
            if key not in allowed:
                self.error(yamlsource.key_pos(node, key), "unknown-key", f"unknown key '{key}' in {where}",
                           did_you_mean(str(key), list(allowed)) or f"{where} takes {', '.join(allowed)}",
                           len(str(key)))

    def _check_held(self, node: Any, conjuncts: list[Conjunct]) -> None:
        """`'name' in held` must name an `any` alternative of this rule."""
        declared = sorted({n for c in conjuncts for n in c.names})
        for key in ("summary", "detail"):
            source = node.get(key)
            if not isinstance(source, str):
                continue
            try:
                ast = environment().parse(source)
            except TemplateSyntaxError:
                continue
            for cmp in ast.find_all(nodes.Compare):
                if not (isinstance(cmp.expr, nodes.Const) and isinstance(cmp.expr.value, str)):
                    continue
                if not any(isinstance(op.expr, nodes.Name) and op.expr.name == "held" for op in cmp.ops):
                    continue
                name = cmp.expr.value
                if name not in declared:
                    line, col = self._locate(yamlsource.value_pos(node, key), f"'{name}'")
                    self.error((line, col), "unknown-alternative",
                               f"'{name}' is not the name of an 'any' alternative of this rule"
                               + (f" ({', '.join(declared)})" if declared else " (it names none)"),
                               did_you_mean(name, declared), len(name) + 2)

    def _suggestion(self, item: Any, parent: Any, i: int) -> Suggestion | None:
        pos = yamlsource.value_pos(parent, i)
        if not isinstance(item, dict) or not item.get("label") or not isinstance(item.get("actions"), list):
            self.error(pos, "schema", "a suggestion needs 'label' and a list of 'actions'")
            return None
        actions = []
        for j, a in enumerate(item["actions"]):
            apos = yamlsource.value_pos(item["actions"], j)
            if not isinstance(a, dict) or a.get("type") not in ("create", "update", "delete") or not a.get(
                    "description"):
                self.error(apos, "schema", "an action needs type (create, update, delete) and description")
                continue
            if a["type"] == "delete" and not a.get("resource_id"):
                self.error(apos, "schema", "a delete action names its target with 'resource_id'")
                continue
            if a["type"] in ("create", "update") and not isinstance(a.get("resource"), dict):
                self.error(apos, "schema", f"a {a['type']} action carries a FHIR 'resource'")
                continue
            actions.append(Action(a["type"], str(a["description"]), yamlsource.plain(a.get("resource")),
                                  a.get("resource_id")))
        return Suggestion(str(item["label"]), tuple(actions), bool(item.get("recommended", False)))

    def _citations(self, node: Any, data: Any) -> list[Citation]:
        """Every source, in order: the first is the card's `source`, the others are listed in its detail."""
        items = node if isinstance(node, list) else [node]
        if not items:
            self.error(yamlsource.value_pos(data, "citation"), "missing-citation", "citation needs a source")
        out: list[Citation] = []
        for i, item in enumerate(items):
            pos = yamlsource.value_pos(node, i) if isinstance(node, list) else yamlsource.value_pos(data, "citation")
            if not isinstance(item, dict) or not item.get("label"):
                self.error(pos, "missing-citation", "a citation needs a 'label' (what a clinician would recognise)")
                continue
            self._unknown_keys(item, CITATION_KEYS, "a citation")
            label = str(item["label"])
            mark = internal_pattern(self.protocol.internal_labels).search(label)
            if mark:
                lpos = self._locate(yamlsource.value_pos(item, "label"), mark.group(0))
                self.error(lpos, "internal-label",
                           f"the citation label shows '{mark.group(0)}', an internal mark clinicians do not "
                           "know", "name the source as published; say [D]/[U]/[S] in notes", len(mark.group(0)))
            url = item.get("url")
            if not url and data.get("status") != "draft":  # a draft (shadow) rule may still be finding its source
                self.error(yamlsource.key_pos(item, "label"), "citation-without-url",
                           f"citation '{label[:40]}' has no url", "link the primary source (label, DOI, registry)")
            elif url and not re.match(r"^https?://", str(url)):
                self.error(yamlsource.value_pos(item, "url"), "schema", "citation url must be absolute (http/https)")
            out.append(Citation(label, str(url) if url else None, self._citation_drugs(item, label)))
        return out

    def _citation_drugs(self, item: dict[str, Any], label: str) -> tuple[str, ...]:
        """Which drugs a source is about: `drugs:` if given, else the drug names its label uses ("SPRAVATO
        (esketamine) ..." is about esketamine; "CDS Hooks 2.0" about none). A card leads with a source about
        its own drug."""
        if "drugs" in item:
            drugs = item["drugs"]
            known = list(self.protocol.drugs)
            if not isinstance(drugs, list) or not all(d in known for d in drugs):
                self.error(yamlsource.value_pos(item, "drugs"), "unknown-drug",
                           f"a citation's drugs are a list of the pack's drugs ({', '.join(known)})")
                return ()
            return tuple(str(d) for d in drugs)
        return tuple(drug for drug, names in self.protocol.drug_names.items()
                     if any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", label, re.I) for n in names))

    def _effective(self, data: Any) -> dt.datetime | None:
        if "effective" not in data:
            return None
        raw = yamlsource.plain(data["effective"])
        try:
            when = dt.datetime.fromisoformat(str(raw))
        except ValueError:
            self.error(yamlsource.value_pos(data, "effective"), "bad-effective",
                       f"effective '{raw}' is not a date or date-time", "write 2026-12-01 or 2026-12-01T08:00:00+01:00",
                       len(str(raw)))
            return None
        # A bare date means midnight where the service runs (PROTOCOL_ENGINE_TIMEZONE), when clinics go live.
        return when if when.tzinfo else when.replace(tzinfo=deployment_zone())

    def _plain_words(self, plain: Any, key: str) -> str:
        """The plain words, with settings printed through the same filters as cards (no restated numbers)."""
        source = " ".join(str(plain.get(key, "")).split())
        self._check_restated(plain, key, source)
        self._check_internal(plain, key, source, f"plain.{key}", card=False)
        if "{{" not in source and "{%" not in source:
            return source
        try:
            ctx: dict[str, Any] = {UNITS_KEY: self.protocol.display_units, "protocol": self.protocol.values,
                                   **display.with_units(self.settings, self.setting_units)}
            return environment().from_string(source).render(ctx)
        except TemplateError as exc:
            self.error(yamlsource.value_pos(plain, key), "template-syntax",
                       f"plain.{key}: {getattr(exc, 'message', None) or exc} (plain words see settings only)")
            return source

    def _check_restated(self, node: Any, key: Any, source: str, rendered: bool = True) -> None:
        protocol_settings = {path: (s.value, s.unit) for path, s in self.protocol.settings.items()}
        # Units as people write them: the pack's `units:` table and its display table read backwards.
        spellings = {**{shown: code for code, shown in self.protocol.display_units.items()}, **self.protocol.units}
        seen: dict[str, int] = {}  # the second "30 minutes" of a template is reported where it is
        for hit in restated.find(source, self.pack_settings, self.protocol.values, self.setting_units,
                                 protocol_settings, spellings):
            seen[hit.literal] = seen.get(hit.literal, 0) + 1
            line, col = self._locate(yamlsource.value_pos(node, key), hit.literal, seen[hit.literal])
            also = f" (and {', '.join(repr(a) for a in hit.also)})" if hit.also else ""
            self.error((line, col), "restated-setting",
                       f"'{hit.literal}' restates the setting '{hit.setting}'{also} as a literal: the text keeps "
                       "the old value when the setting changes",
                       hit.hint if rendered else f"the {key} is not a template: say it without the number (the "
                       "card and the rule page print the setting)", len(hit.literal))

    def _locate(self, start: tuple[int, int], literal: str, nth: int = 1) -> tuple[int, int]:
        """The line and column of the `nth` occurrence of `literal` in the file, searching from the template's
        first line (a literal written twice is reported twice, each where it is)."""
        if not hasattr(self, "_lines"):
            try:
                self._lines = self.path.read_text(encoding="utf-8").splitlines()
            except OSError:
                self._lines = []
        words = literal.split()
        whole = re.compile(r"(?<![\w.\-\[#])" + r"\s+".join(re.escape(w) for w in words) + r"(?![\w.]*\d)")
        first = words[0] if words else literal  # "40\nminutes" spans lines: find the number
        alone = re.compile(r"(?<![\w.\-\[#])" + re.escape(first) + r"(?![\w.]*\d)")
        for pattern in (whole, alone):
            found_at: list[tuple[int, int]] = []
            for i in range(start[0] - 1, min(len(self._lines), start[0] + 200)):
                found_at += [(i + 1, m.start() + 1) for m in
                             pattern.finditer(self._lines[i], start[1] - 1 if i == start[0] - 1 else 0)]
                if len(found_at) >= nth:
                    return found_at[nth - 1]
            if found_at:
                return found_at[-1]
        return start


_BAD = object()


def parse_rule(path: Path, protocol: Protocol, valuesets: set[str],
               site: Mapping[str, Mapping[str, tuple[Any, str]]] | None = None,
               rule_ids: frozenset[str] = frozenset()) -> tuple[Rule | None, list[Diagnostic]]:
    return RuleParser(path, protocol, valuesets, site, rule_ids).parse()
