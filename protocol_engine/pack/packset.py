"""The pack set: every pack under a rules directory, loaded and validated as a whole, with a revision.

Words (each meaning has its own name in code): a *pack* is one protocol's directory (protocol.yaml, rules, value
sets); the *PackSet* is every pack of the rules directory; its *revision* is the digest cards and traces carry as
`ruleset` (the word users see); *Loaded* (runtime/registry.py) is a PackSet with its compiled services, as a worker
serves it; a *ruleset* in core/engine.py is durable_rules' own unit (one compiled shard); PackSetError is a
PackSet that does not load (compiler-style diagnostics).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.derive import Deriver
from ..core.errors import Diagnostic
from ..core.model import Rule
from ..core.valuesets import ValueSet, ValueSetIndex, parse_code
from . import yamlsource
from .internal import RULE_FILE_ID
from .loader import parse_rule
from .protocol import Protocol, Service, load_protocol
from .shape import did_you_mean
from .zone import deployment_zone

if TYPE_CHECKING:
    from .site import Site

RULE_SUFFIX = ".rule.yaml"
TEST_SUFFIX = ".test.yaml"


@dataclass
class Pack:
    protocol: Protocol
    index: ValueSetIndex
    rules: list[Rule]
    deriver: Deriver
    root: Path

    def rules_for(self, hook: str) -> list[Rule]:
        return [r for r in self.rules if hook in r.hooks and r.status != "retired"]


@dataclass
class PackSet:
    packs: list[Pack]
    revision: str
    services: dict[str, tuple[Service, Pack]] = field(default_factory=dict)
    loaded_files: int = 0
    site: Site | None = None  # the site settings overlay in force, if any

    def all_rules(self) -> list[Rule]:
        return [r for p in self.packs for r in p.rules]


def load_valueset(path: Path) -> tuple[ValueSet | None, list[Diagnostic]]:
    data, diags = yamlsource.load(path, shared=True)
    if diags:
        return None, diags
    where = str(path)
    if not isinstance(data, dict) or "valueset" not in data or "expansion" not in data:
        return None, [Diagnostic(where, 1, 1, "schema", "a value set file needs 'valueset' and 'expansion'")]
    vs = ValueSet(str(data["valueset"]), str(data.get("version", "")), str(data.get("title", "")))
    for key, target in (("expansion", vs.codes), ("exclude", vs.excludes)):
        items = data.get(key) or []
        if not isinstance(items, list):
            diags.append(Diagnostic(where, *yamlsource.value_pos(data, key), "schema", f"'{key}' must be a list"))
            continue
        for i, item in enumerate(items):
            parsed = parse_code(str(item))
            if parsed is None:
                diags.append(Diagnostic(where, *yamlsource.value_pos(items, i), "bad-code",
                                        f"'{item}' is not SYSTEM#code (LOINC, SNOMED, ICD10, RXNORM, ROUTE, or a URL)"))
                continue
            from ..core.valuesets import normalise_code

            system, code, shown = parsed
            star = code.endswith("*")
            norm = normalise_code(system, code.rstrip("*"))
            target.append((system, norm + ("*" if star else "")))
            if shown and key == "expansion" and not star:
                vs.displays[(system, norm)] = shown
    text = data.get("text") or []
    if not isinstance(text, list):
        diags.append(Diagnostic(where, *yamlsource.value_pos(data, "text"), "schema", "'text' must be a list"))
    else:
        vs.text = [str(t) for t in text]
    return (None if diags else vs), diags


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.name).encode())
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def pack_roots(root: Path) -> list[Path]:
    if (root / "protocol.yaml").is_file():
        return [root]
    return sorted(p.parent for p in root.glob("*/protocol.yaml"))


def load_pack(root: Path, site: Site | None = None) -> tuple[Pack | None, list[Diagnostic], list[Path]]:
    files: list[Path] = [root / "protocol.yaml"]
    protocol, diags = load_protocol(root / "protocol.yaml", site.protocols if site else None)
    valuesets: list[ValueSet] = []
    for path in sorted((root / "valuesets").glob("*.yaml")):
        files.append(path)
        vs, vdiags = load_valueset(path)
        diags.extend(vdiags)
        if vs:
            if any(v.name == vs.name for v in valuesets):
                diags.append(Diagnostic(str(path), 1, 1, "duplicate-valueset", f"value set '{vs.name}' defined twice"))
            valuesets.append(vs)
    if protocol is None:
        return None, diags, files
    names = {v.name for v in valuesets}
    for needed in sorted(protocol.valuesets_used() - names):
        diags.append(Diagnostic(protocol.path, *protocol.valueset_pos.get(needed, (1, 1)), "unknown-valueset",
                                f"protocol.yaml uses value set '{needed}', which is not defined",
                                did_you_mean(needed, sorted(names))))
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    attempted: set[str] = set()  # ids of files with errors: no second, cascading error about them
    paths = sorted(root.rglob("*" + RULE_SUFFIX))
    rule_ids = frozenset(m.group(1) for p in paths if (m := RULE_FILE_ID.match(p.name)))
    for path in paths:
        files.append(path)
        rule, rdiags = parse_rule(path, protocol, names, site.rules if site else None, rule_ids)
        diags.extend(rdiags)
        if rule is None:
            data, _ = yamlsource.load(path, shared=True)
            if isinstance(data, dict) and data.get("rule"):
                attempted.add(str(data["rule"]))
            continue
        if rule.id in seen:
            diags.append(Diagnostic(str(path), 1, 1, "duplicate-rule-id",
                                    f"rule id {rule.id} is also used by {seen[rule.id]}"))
            continue
        seen[rule.id] = str(path)
        rules.append(rule)
    ids = set(seen)
    for rule in rules:
        for other in rule.suppressed_by:
            if other not in ids and other not in attempted:
                diags.append(Diagnostic(rule.path, 1, 1, "unknown-rule", f"suppressed_by names unknown rule {other}",
                                        did_you_mean(other, sorted(ids))))
    index = ValueSetIndex(valuesets)
    if diags:
        return None, diags, files
    return Pack(protocol, index, rules, Deriver(protocol, index, rules, deployment_zone()), root), diags, files


def load_packset(root: Path, site: Site | None = None) -> tuple[PackSet | None, list[Diagnostic]]:
    """Load and validate every pack, with a site's settings overlay (already validated: site.py) if given;
    returns None with diagnostics when anything is wrong."""
    roots = pack_roots(root)
    if not roots:
        return None, [Diagnostic(str(root), 1, 1, "no-packs", "no protocol.yaml found under this directory")]
    packs: list[Pack] = []
    diags: list[Diagnostic] = []
    files: list[Path] = []
    for pack_root in roots:
        pack, pdiags, pfiles = load_pack(pack_root, site)
        diags.extend(pdiags)
        files.extend(pfiles)
        if pack:
            packs.append(pack)
    services: dict[str, tuple[Service, Pack]] = {}
    for pack in packs:
        for svc in pack.protocol.services:
            if svc.id in services:
                diags.append(Diagnostic(pack.protocol.path, 1, 1, "duplicate-service", f"service id {svc.id} twice"))
            services[svc.id] = (svc, pack)
    if diags:
        return None, diags
    return PackSet(packs, _digest(files), services, len(files), site), []
