"""`protocol-engine impact`: what a rule change does, before it is merged.

The rule set at a git revision (the base) and the working tree are each loaded (with the same site settings, or
each with its own), then every rule case, every sample patient under every hook and every request of a corpus
is evaluated by both at the same moment. Per rule, the requests whose card appears, disappears or changes
indicator are listed with a one-line reason taken from what differs between the two rule sets.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.engine import EngineError
from ..core.errors import ProtocolEngineError
from ..core.model import HOOKS, Rule
from ..hooks.pipeline import ServiceRuntime, run
from ..pack import settingspec, yamlsource
from ..pack.packset import Pack
from .testing import CASE_KEYS, find_test_files
from .vignette import build_request, load_fixtures, merge_case, unknown_fixtures, when

if TYPE_CHECKING:  # the registry's loaded rule set, named for type checking only (authoring never imports runtime)
    from ..runtime.registry import Loaded

RequestFor = Callable[["Loaded"], tuple[str, dict[str, Any]] | None]


class ImpactError(Exception):
    """The comparison cannot be made (no such revision, not a git checkout, rules that do not load)."""


@dataclass(frozen=True)
class Input:
    kind: str  # case | sample | corpus
    name: str
    request_for: RequestFor  # (service id, CDS Hooks request) for one side, None when that side has no service
    now: dt.datetime


@dataclass
class Answer:
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule -> card
    held: set[str] = field(default_factory=set)  # rules that held before suppression and status
    error: str | None = None


@dataclass(frozen=True)
class Change:
    rule: str
    kind: str  # appears | disappears | indicator | error
    input: Input
    before: str | None
    after: str | None
    reason: str


@dataclass
class Report:
    base_label: str
    head_label: str
    counts: dict[str, int]
    changes: list[Change]
    declared: list[str]  # what differs between the two rule sets, one line each
    seconds: float = 0.0


# -- the base rule set -----------------------------------------------------------------------------------------

def checkout(rules: Path, rev: str, into: Path) -> Path:
    """The rules directory as it was at `rev` (git archive), extracted under `into`; returns its path there."""
    rules = rules.resolve()
    try:
        top = Path(_git(rules, "rev-parse", "--show-toplevel").decode().strip()).resolve()
        _git(top, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip() if exc.stderr else ""
        raise ImpactError(f"'{rev}' is not a commit of the git checkout holding {rules}"
                          + (f" ({detail})" if detail else "")) from exc
    except OSError as exc:
        raise ImpactError(f"git is not available: {exc}") from exc
    rel = rules.relative_to(top)
    try:
        archive = _git(top, "archive", "--format=tar", rev, "--", rel.as_posix())
    except subprocess.CalledProcessError as exc:
        raise ImpactError(f"{rel} does not exist at {rev}") from exc
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / rel


def _git(cwd: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, check=True, timeout=60).stdout


def describe_rev(rules: Path, rev: str) -> str:
    try:
        return _git(rules.resolve(), "rev-parse", "--short", rev).decode().strip()
    except (subprocess.CalledProcessError, OSError):
        return rev


# -- inputs ----------------------------------------------------------------------------------------------------

def _service(loaded: Loaded, pack_name: str, hook: str) -> tuple[str, ServiceRuntime] | None:
    return next(((sid, rt) for sid, rt in sorted(loaded.runtimes.items())
                 if rt.pack.protocol.name == pack_name and rt.service.hook == hook), None)


def case_inputs(head: Loaded, now: dt.datetime) -> Iterator[Input]:
    """Every case of every test file beside the working tree's rules (`todo` cases excepted)."""
    for pack in head.packset.packs:
        for path in find_test_files([pack.root]):
            data, diags = yamlsource.load(path)
            if diags or not isinstance(data, dict) or not isinstance(data.get("cases"), list):
                continue
            fixtures, fixture_diags = load_fixtures(pack.root)
            if fixture_diags or unknown_fixtures(path, data, fixtures):
                continue  # `validate` and `test` report it
            raw = yamlsource.plain(data)
            defaults = raw.get("defaults") or {}
            for i, case in enumerate(raw["cases"]):
                if not isinstance(case, dict) or "todo" in case or set(case) - CASE_KEYS:
                    continue
                merged = merge_case(defaults, case, fixtures)
                at = when(case.get("now", raw.get("now")), now)
                name = f"case {path.name} #{i + 1} \"{case.get('name') or ''}\""
                yield Input("case", name, _case_request(pack.protocol.name, merged, at), at)


def _case_request(pack_name: str, case: dict[str, Any], at: dt.datetime) -> RequestFor:
    def request_for(loaded: Loaded) -> tuple[str, dict[str, Any]] | None:
        found = _service(loaded, pack_name, str(case.get("hook", "order-sign")))
        if found is None:
            return None
        sid, rt = found
        return sid, json.loads(json.dumps(build_request(case, rt, at)))
    return request_for


def sample_inputs(head: Loaded, now: dt.datetime) -> Iterator[Input]:
    """Every bundled sample patient through every service of the pack."""
    from .samples import sample_index, sample_request

    for entry in sample_index():
        for rt in [r for _, r in sorted(head.runtimes.items())]:
            pack_name, hook, name = rt.pack.protocol.name, rt.service.hook, entry["name"]

            def request_for(loaded: Loaded, pack_name: str = pack_name, hook: str = hook,
                            name: str = name) -> tuple[str, dict[str, Any]] | None:
                found = _service(loaded, pack_name, hook)
                if found is None:
                    return None
                body = sample_request(name, hook, now, found[1].resource_types())
                return (found[0], body) if body is not None else None

            yield Input("sample", f"sample {name} at {hook}", request_for, now)


def corpus_inputs(corpus: Path, now: dt.datetime) -> Iterator[Input]:
    """Under the corpus directory: each *.json CDS Hooks request, sent to the service of its hook; and each
    FHIR Bundle holding a Patient (a chart, e.g. from a synthetic-EHR generator), sent to every service of the
    pack that can take it (order hooks only when the Bundle holds a draft MedicationRequest)."""
    from .samples import bundle_request

    for path in sorted(corpus.rglob("*.json")):
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        name = f"corpus {path.relative_to(corpus)}"
        if isinstance(body, dict) and isinstance(body.get("hook"), str):
            def request_for(loaded: Loaded, body: dict[str, Any] = body) -> tuple[str, dict[str, Any]] | None:
                sid = next((s for s, rt in sorted(loaded.runtimes.items()) if rt.service.hook == body["hook"]), None)
                return (sid, json.loads(json.dumps(body))) if sid else None

            yield Input("corpus", name, request_for, now)
        elif isinstance(body, dict) and body.get("resourceType") == "Bundle" and any(
                isinstance(e, dict) and isinstance(e.get("resource"), dict)
                and e["resource"].get("resourceType") == "Patient" for e in body.get("entry") or []):
            drafts = any(isinstance(e, dict) and isinstance(e.get("resource"), dict)
                         and e["resource"].get("resourceType") == "MedicationRequest"
                         and e["resource"].get("status") == "draft" for e in body.get("entry") or [])
            for hook in (h for h in HOOKS if drafts or h not in ("order-select", "order-sign")):
                def chart_for(loaded: Loaded, bundle: dict[str, Any] = body, hook: str = hook,
                              label: str = path.stem) -> tuple[str, dict[str, Any]] | None:
                    found = next(((s, rt) for s, rt in sorted(loaded.runtimes.items()) if rt.service.hook == hook),
                                 None)
                    if found is None:
                        return None
                    built = bundle_request(bundle, label, hook, now, found[1].resource_types())
                    return (found[0], built) if built is not None else None

                yield Input("corpus", f"{name} at {hook}", chart_for, now)


# -- evaluation and comparison ---------------------------------------------------------------------------------

def answer(loaded: Loaded, item: Input) -> Answer:
    try:
        built = item.request_for(loaded)
    except Exception as exc:  # a case the shorthand cannot build is an answer too, compared like any other
        return Answer(error=f"request not built: {type(exc).__name__}: {str(exc)[:120]}")
    if built is None:
        return Answer(error="no service answers this hook")
    sid, body = built
    try:
        decision = run(loaded.runtimes, loaded.packset.revision, sid, body, item.now)
    except (ProtocolEngineError, EngineError) as exc:
        return Answer(error=f"{type(exc).__name__}: {str(exc)[:120]}")
    return Answer({c.rule.id: c.json for c in decision.issued}, {f.rule.id for f in decision.findings})


def _rules(loaded: Loaded) -> dict[str, tuple[Rule, Pack]]:
    return {r.id: (r, p) for p in loaded.packset.packs for r in p.rules}


def _setting_changes(before: dict[str, Any], after: dict[str, Any], units: dict[str, str | None]) -> list[str]:
    out = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old != new:
            unit = units.get(name)
            out.append(f"{name} {settingspec.show(old, unit) if old is not None else '(none)'} -> "
                       f"{settingspec.show(new, unit) if new is not None else '(none)'}")
    return out


def rule_differences(base: Loaded, head: Loaded) -> dict[str, list[str]]:
    """Per rule id, what its declaration says differently; key '' holds what concerns every rule."""
    out: dict[str, list[str]] = {}
    old, new = _rules(base), _rules(head)
    for rule_id in sorted(set(old) | set(new)):
        notes: list[str] = []
        if rule_id not in old:
            notes.append("new rule")
        elif rule_id not in new:
            notes.append("rule removed")
        else:
            a, b = old[rule_id][0], new[rule_id][0]
            if a.version != b.version:
                notes.append(f"version {a.version} -> {b.version}")
            if a.status != b.status:
                notes.append(f"status {a.status} -> {b.status}")
            if a.card.indicator != b.card.indicator:
                notes.append(f"indicator {a.card.indicator} -> {b.card.indicator}")
            units = {s.name: s.unit for s in (*a.setting_specs, *b.setting_specs)}
            notes += _setting_changes(a.settings, b.settings, units)
            if _when(a) != _when(b):
                notes.append("condition (when) changed")
            if a.suppressed_by != b.suppressed_by:
                notes.append(f"suppressed_by {list(a.suppressed_by)} -> {list(b.suppressed_by)}")
            if a.hooks != b.hooks:
                notes.append(f"hooks {list(a.hooks)} -> {list(b.hooks)}")
            if (a.card.summary, a.card.detail) != (b.card.summary, b.card.detail):
                notes.append("card text changed")
        if notes:
            out[rule_id] = notes
    shared: list[str] = []
    packs_old = {p.protocol.name: p for p in base.packset.packs}
    for pack in head.packset.packs:
        before = packs_old.get(pack.protocol.name)
        if before is None:
            shared.append(f"new pack {pack.protocol.name}")
            continue
        a_set = {k: s.value for k, s in before.protocol.settings.items()}
        b_set = {k: s.value for k, s in pack.protocol.settings.items()}
        units = {k: s.unit for k, s in (*before.protocol.settings.items(), *pack.protocol.settings.items())}
        shared += [f"{pack.protocol.name} {c}" for c in _setting_changes(a_set, b_set, units)]
        shared += [f"value set {name} changed" for name in _valueset_changes(before, pack)]
    if shared:
        out[""] = shared
    return out


def _when(rule: Rule) -> Any:
    """The condition as written ($settings unresolved: a threshold change is reported as a setting change)."""
    data, _ = yamlsource.load(Path(rule.path))
    return yamlsource.plain(data.get("when")) if isinstance(data, dict) else None


def _valueset_changes(a: Pack, b: Pack) -> list[str]:
    def digest(pack: Pack) -> dict[str, str]:
        out = {}
        for path in sorted((pack.root / "valuesets").glob("*.yaml")):
            out[path.stem] = hashlib.sha256(path.read_bytes()).hexdigest()
        return out

    da, db = digest(a), digest(b)
    return sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))


def _site_differences(base: Loaded, head: Loaded) -> list[str]:
    def values(loaded: Loaded) -> dict[str, Any]:
        site = loaded.packset.site
        return {f"{o.owner} {o.setting}": o.value for o in (site.overrides if site else ())}

    a, b = values(base), values(head)
    return [f"site {k}: {a.get(k, '(pack default)')} -> {b.get(k, '(pack default)')}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def compare(item: Input, before: Answer, after: Answer, why: dict[str, list[str]],
            shared: list[str]) -> list[Change]:
    if before.error or after.error:
        if before.error == after.error:
            return []
        return [Change("-", "error", item, before.error, after.error,
                       f"the request could not be evaluated by the {'base' if before.error else 'working tree'} "
                       "rule set")]
    changes = []
    for rule in sorted(set(before.cards) | set(after.cards)):
        old, new = before.cards.get(rule), after.cards.get(rule)
        if old and new and old["indicator"] == new["indicator"]:
            continue
        kind = "appears" if old is None else "disappears" if new is None else "indicator"
        changes.append(Change(rule, kind, item, old["indicator"] if old else None, new["indicator"] if new else None,
                              _reason(rule, kind, before, after, why, shared, new or old or {})))
    return changes


def _reason(rule: str, kind: str, before: Answer, after: Answer, why: dict[str, list[str]], shared: list[str],
            card: dict[str, Any]) -> str:
    parts: list[str] = []
    if kind == "disappears" and rule in after.held:
        by = sorted(r for r in after.cards if r not in before.cards)
        parts.append(f"still holds, now suppressed by {', '.join(by)}" if by else "still holds, no card (status)")
    elif kind == "appears" and rule in before.held:
        by = sorted(r for r in before.cards if r not in after.cards)
        parts.append(f"held before too, no longer suppressed by {', '.join(by)}" if by else
                     "held before too, now gives a card (status)")
    own = why.get(rule, [])
    if own:
        parts.append("; ".join(own))
    elif not parts:
        parts.append("; ".join(shared) if shared else "the rule is unchanged; other rules or shared files changed")
    summary = " ".join(str(card.get("summary", "")).split())
    return f"{' | '.join(parts)}: \"{summary[:90]}\"" if summary else " | ".join(parts)


def impact(base: Loaded, head: Loaded, inputs: list[Input], base_label: str, head_label: str) -> Report:
    import time

    started = time.perf_counter()
    why = rule_differences(base, head)
    shared = why.pop("", []) + _site_differences(base, head)
    changes: list[Change] = []
    counts: dict[str, int] = {}
    for item in inputs:
        counts[item.kind] = counts.get(item.kind, 0) + 1
        changes += compare(item, answer(base, item), answer(head, item), why, shared)
    declared = [f"{rule}: {'; '.join(notes)}" for rule, notes in sorted(why.items())] + shared
    return Report(base_label, head_label, counts, changes, declared, time.perf_counter() - started)


def render(report: Report) -> list[str]:
    lines = [f"impact: {report.base_label} -> {report.head_label}",
             "evaluated: " + ", ".join(f"{n} {kind} request(s)" for kind, n in sorted(report.counts.items()))]
    lines.append("what differs in the rule files:" if report.declared else "the rule files declare nothing different")
    lines += [f"  {line}" for line in report.declared]
    by_rule: dict[str, list[Change]] = {}
    for change in report.changes:
        by_rule.setdefault(change.rule, []).append(change)
    mark = {"appears": "+", "disappears": "-", "indicator": "~", "error": "!"}
    for rule in sorted(by_rule):
        items = by_rule[rule]
        tally = ", ".join(f"{sum(1 for c in items if c.kind == k)} {k}" for k in mark
                          if any(c.kind == k for c in items))
        lines.append(f"{rule if rule != '-' else 'errors'}: {tally}")
        for c in items:
            shift = {"appears": c.after, "disappears": c.before,
                     "indicator": f"{c.before} -> {c.after}", "error": ""}[c.kind]
            lines.append(f"  {mark[c.kind]} {shift:<9} {c.input.name}: {c.reason}")
    total = len({c.input.name for c in report.changes})
    lines.append(f"{total} request(s) changed across {len(by_rule)} rule(s) of {sum(report.counts.values())} "
                 f"evaluated ({report.seconds:.1f} s)" if report.changes else
                 f"no card appears, disappears or changes indicator in {sum(report.counts.values())} requests "
                 f"({report.seconds:.1f} s)")
    return lines


def as_json(report: Report) -> dict[str, Any]:
    return {"base": report.base_label, "head": report.head_label, "evaluated": report.counts,
            "declared": report.declared, "seconds": round(report.seconds, 2),
            "changes": [{"rule": c.rule, "change": c.kind, "kind": c.input.kind, "request": c.input.name,
                         "before": c.before, "after": c.after, "reason": c.reason} for c in report.changes]}


def temporary_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="protocol-engine-impact-")
