"""Site settings overlays: a deployment's (or a tenant's) values for the pack's service defaults.

A small YAML file outside the pack (`PROTOCOL_ENGINE_SITE`; per tenant, `sites:` in the clients file):

    site: Example Clinic (P&T approval 2026-11-02)
    rules:
      CI-05:
        lookback: 12h
      DOS-01:
        limit: {value: 0.75, unit: mg/kg, source: "Clinic policy KP-7"}
    protocols:
      ketamine:
        course.gap: 45d

Only settings declared `default: true` can be set, within their declared range, in their unit (or one UCUM
converts to it). The file is checked against the pack's declarations like a rule file: every problem is a
positioned diagnostic, and a bad file is never applied (at start the service refuses it, on reload the last
good set keeps serving).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import units
from ..core.errors import Diagnostic
from ..core.model import Setting
from . import settingspec, yamlsource
from .packset import PackSet
from .shape import did_you_mean

TOP_KEYS = ("site", "rules", "protocols")
VALUE_KEYS = ("value", "unit", "source")


@dataclass(frozen=True)
class Override:
    scope: str  # "rule" or "protocol"
    owner: str  # rule id or pack name
    setting: str  # setting name or dotted protocol path
    value: Any
    shipped: Any
    unit: str | None
    source: str
    origin: str  # the file that set it (a tenant's file may sit on the deployment's)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.scope: self.owner, "setting": self.setting, "value": self.value,
                               "shipped": self.shipped}
        if self.unit:
            out["unit"] = self.unit
        if self.source:
            out["source"] = self.source
        return out


@dataclass(frozen=True)
class Site:
    name: str
    revision: str
    files: tuple[str, ...]
    overrides: tuple[Override, ...] = ()
    tenant: str | None = None
    rules: dict[str, dict[str, tuple[Any, str]]] = field(default_factory=dict)  # for the loader
    protocols: dict[str, dict[str, tuple[Any, str]]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "revision": self.revision,
                               "overrides": [o.describe() for o in self.overrides]}
        if self.tenant:
            out["tenant"] = self.tenant
        return out

    def for_rule(self, rule_id: str, pack: str) -> dict[str, Any]:
        """What a card of this rule shows: the site, and the overrides that can change what the rule decides."""
        return {"name": self.name, "revision": self.revision,
                "overrides": [o.describe() for o in self.overrides
                              if o.owner == (rule_id if o.scope == "rule" else pack)]}

    def summary(self) -> str:
        """One line for discovery's usageRequirements."""
        if not self.overrides:
            return f"Site settings '{self.name}' (revision {self.revision}): the pack's defaults, unchanged."
        changes = "; ".join(f"{o.owner} {o.setting} {settingspec.show(o.value, o.unit)} "
                            f"(shipped {settingspec.show(o.shipped, o.unit)})" for o in self.overrides)
        return f"Site settings '{self.name}' (revision {self.revision}) change service defaults: {changes}."


def tenant_sites(clients_file: Path | None) -> dict[str, Path]:
    """`sites: {tenant: file}` of the trusted-clients file; paths relative to that file."""
    if clients_file is None or not clients_file.is_file():
        return {}
    data, diags = yamlsource.load(clients_file)
    if diags or not isinstance(data, dict) or not isinstance(data.get("sites"), dict):
        return {}
    out = {}
    for tenant, name in data["sites"].items():
        path = Path(str(name))
        out[str(tenant)] = path if path.is_absolute() else clients_file.parent / path
    return out


class _Reader:
    def __init__(self, path: Path, base: PackSet) -> None:
        self.where = str(path)
        self.base = base
        self.diags: list[Diagnostic] = []
        self.overrides: list[Override] = []

    def error(self, pos: tuple[int, int], code: str, message: str, hint: str | None = None, length: int = 1) -> None:
        self.diags.append(Diagnostic(self.where, pos[0], pos[1], code, message, hint, length=length))

    def read(self, data: Any) -> str:
        if data is None:
            return Path(self.where).stem
        if not isinstance(data, dict):
            self.error((1, 1), "schema", "a site settings file is a mapping: site, rules, protocols")
            return ""
        for key in data:
            if key not in TOP_KEYS:
                self.error(yamlsource.key_pos(data, key), "unknown-key", f"unknown key '{key}'",
                           did_you_mean(str(key), list(TOP_KEYS)), len(str(key)))
        name = data.get("site") or Path(self.where).stem
        rules = {r.id: r for r in self.base.all_rules()}
        packs = {p.protocol.name: p for p in self.base.packs}
        rule_ids = [r.id for r in self.base.all_rules()]
        for section, known in (("rules", rules), ("protocols", packs)):
            node = data.get(section)
            if node is None:
                continue
            if not isinstance(node, dict):
                self.error(yamlsource.value_pos(data, section), "schema", f"'{section}' is a mapping")
                continue
            for owner, settings in node.items():
                pos = yamlsource.key_pos(node, owner)
                if owner not in known:
                    what = "rule" if section == "rules" else "protocol"
                    self.error(pos, f"unknown-{what}", f"no {what} '{owner}' in the loaded rule set",
                               did_you_mean(str(owner), sorted(known)), len(str(owner)))
                    continue
                if not isinstance(settings, dict):
                    self.error(yamlsource.value_pos(node, owner), "schema", f"'{owner}' maps setting names to values")
                    continue
                if section == "rules":
                    rule = rules[str(owner)]
                    specs = {s.name: s for s in rule.setting_specs}
                    scope, label = "rule", f"rule {owner}"
                    if rule_ids.count(str(owner)) > 1:
                        self.error(pos, "ambiguous-rule", f"rule id {owner} is in more than one pack")
                else:
                    specs = dict(packs[str(owner)].protocol.settings)
                    scope, label = "protocol", f"protocol {owner}"
                for name_, raw in settings.items():
                    self.setting(scope, str(owner), label, specs, settings, str(name_), raw)
        return str(name)

    def setting(self, scope: str, owner: str, label: str, specs: dict[str, Setting], parent: Any, name: str,
                raw: Any) -> None:
        pos = yamlsource.key_pos(parent, name)
        spec = specs.get(name)
        if spec is None:
            adjustable = sorted(n for n, s in specs.items() if s.adjustable)
            self.error(pos, "unknown-setting", f"{label} has no setting '{name}'"
                       + (f" (site-adjustable: {', '.join(adjustable)})" if adjustable else
                          " that a site may change"),
                       did_you_mean(name, sorted(specs)), len(name))
            return
        if not spec.adjustable:
            self.error(pos, "setting-fixed", f"{label} '{name}' is fixed by the protocol, not a service default "
                                             "(default: true): a site cannot change it", length=len(name))
            return
        value, unit, source = yamlsource.plain(raw), None, ""
        vpos = yamlsource.value_pos(parent, name)
        if isinstance(raw, dict) and "value" in raw and settingspec.kind_of(spec.value) != "mapping":
            for key in raw:
                if key not in VALUE_KEYS:
                    self.error(yamlsource.key_pos(raw, key), "unknown-key", f"'{name}': unknown key '{key}'",
                               did_you_mean(str(key), list(VALUE_KEYS)), len(str(key)))
            value, vpos = yamlsource.plain(raw["value"]), yamlsource.value_pos(raw, "value")
            unit = raw.get("unit")
            source = " ".join(str(raw.get("source") or "").split())
            if unit is not None:
                value = self.convert(name, spec, value, str(unit), yamlsource.value_pos(raw, "unit"))
                if value is None:
                    return
        found = settingspec.problem(spec, value)
        if found:
            self.error(vpos, found[0], f"{label}: {found[1]}", length=len(str(yamlsource.plain(raw))))
            return
        self.overrides.append(Override(scope, owner, name, value, spec.value, spec.unit, source, self.where))

    def convert(self, name: str, spec: Setting, value: Any, unit: str, pos: tuple[int, int]) -> Any:
        if spec.unit is None:
            self.error(pos, "setting-unit", f"'{name}' has no unit (shipped {settingspec.show(spec.value)})",
                       "write the value alone", len(unit))
            return None
        if unit == spec.unit:
            return value
        factor = units.factor(unit, spec.unit) if isinstance(value, (int, float)) else None
        if factor is None:
            self.error(pos, "setting-unit", f"'{name}' is in {spec.unit}; '{unit}' is not a UCUM unit that "
                                            f"converts to it", f"write {spec.unit}", len(unit))
            return None
        return round(value * factor, 6)


def load_site(path: Path, base: PackSet, parent: Site | None = None,
              tenant: str | None = None) -> tuple[Site | None, list[Diagnostic]]:
    """Read and check a site settings file against the pack's declarations (`base`: loaded without overlay)."""
    data, diags = yamlsource.load(path)
    if diags:
        return None, diags
    reader = _Reader(path, base)
    name = reader.read(data)
    if reader.diags:
        return None, reader.diags
    mine = {(o.scope, o.owner, o.setting): o for o in reader.overrides}
    merged = {(o.scope, o.owner, o.setting): o for o in (parent.overrides if parent else ())}
    merged.update(mine)  # a tenant's value wins over the deployment's for the same setting
    overrides = tuple(merged.values())
    rules: dict[str, dict[str, tuple[Any, str]]] = {}
    protocols: dict[str, dict[str, tuple[Any, str]]] = {}
    for o in overrides:
        (rules if o.scope == "rule" else protocols).setdefault(o.owner, {})[o.setting] = (o.value, o.source)
    digest = hashlib.sha256(path.read_bytes() + (parent.revision.encode() if parent else b"")).hexdigest()[:12]
    files = (*(parent.files if parent else ()), str(path))
    label = f"{parent.name} / {name}" if parent and name != parent.name else name
    return Site(label, digest, files, overrides, tenant, rules, protocols), []


def check_site(path: Path, base: PackSet) -> list[Diagnostic]:
    return load_site(path, base)[1]
