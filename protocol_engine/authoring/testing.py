"""Rule test files: each case (its request built by vignette.py) run end to end and its expectations checked.

Used by `protocol-engine test` and by pytest (tests/test_rule_cases.py), so both run the same cases.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.cards import Issued
from ..core.errors import Diagnostic
from ..hooks.evaluate import Decision
from ..hooks.pipeline import ServiceRuntime, run
from ..pack import yamlsource
from ..pack.packset import RULE_SUFFIX, TEST_SUFFIX, PackSet
from ..pack.shape import did_you_mean
from .vignette import build_request, given_problems, load_fixtures, merge_case, time_problems, unknown_fixtures, when

CASE_KEYS = {"name", "given", "expect", "hook", "patient", "order", "todo", "now", "orders", "selections",
             "appointments", "encounter", "draft_orders", "prefetch"}
FILE_KEYS = ("rule", "now", "defaults", "cases")
EXPECT_KEYS = ("cards", "fires", "silent", "no_cards", "max_indicator")
NOW_HINT = "write an ISO time (2026-03-02T09:00:00Z) or one relative to the present (-2d, +1h)"
# An expected card names its rule, the protocol-engine evidence, or any key of the CDS Hooks card itself.
CARD_KEYS = ("rule", "evidence", "summary", "detail", "indicator", "source", "suggestions", "selectionBehavior",
             "overrideReasons", "links", "uuid")


def file_problems(path: Path, data: Any, fixtures: dict[str, list[dict[str, Any]]]) -> list[Diagnostic]:
    """Every schema problem of a test file (its YAML nodes), positioned, with a did-you-mean: its keys, each case's,
    each `given` entry (vignette.given_problems), each fixture name, each `expect` and expected card key.
    `validate` reports these; the case runner refuses a file that has any (never a traceback mid-run)."""
    where = str(path)
    diags: list[Diagnostic] = []

    def unknown(node: Any, allowed: Any, what: str) -> None:
        for key in node if isinstance(node, dict) else ():
            if str(key) not in allowed:
                diags.append(Diagnostic(where, *yamlsource.key_pos(node, key), "unknown-key",
                                        f"{what}: '{key}' is not one of {', '.join(sorted(allowed))}",
                                        did_you_mean(str(key), sorted(allowed))))

    if not isinstance(data, dict) or "rule" not in data or not isinstance(data.get("cases"), list):
        return [Diagnostic(where, 1, 1, "schema", "a test file needs 'rule', 'now' and a list of 'cases'")]
    unknown(data, FILE_KEYS, "test file")
    diags += time_problems(where, data, "now", "test file", NOW_HINT)
    defaults = data.get("defaults")
    if defaults is not None and not isinstance(defaults, dict):
        diags.append(Diagnostic(where, *yamlsource.value_pos(data, "defaults"), "schema",
                                "defaults is a mapping of case keys (like `given:`)"))
        defaults = None
    unknown(defaults, CASE_KEYS, "defaults")
    diags += given_problems(where, (defaults or {}).get("given"), fixtures)
    for i, case in enumerate(data["cases"]):
        if not isinstance(case, dict):
            diags.append(Diagnostic(where, *yamlsource.value_pos(data["cases"], i), "schema",
                                    f"case {i + 1} is a mapping (name, given, expect, ...)"))
            continue
        name = str(case.get("name") or case.get("todo") or f"case {i + 1}")
        if "todo" in case:
            continue
        unknown(case, CASE_KEYS, f"case '{name}'")
        diags += given_problems(where, case.get("given"), fixtures)
        expect = case.get("expect")
        if expect is not None and not isinstance(expect, dict):
            diags.append(Diagnostic(where, *yamlsource.value_pos(case, "expect"), "schema",
                                    f"case '{name}': expect is a mapping (cards, fires, silent, ...)"))
            continue
        unknown(expect, EXPECT_KEYS, f"case '{name}' expect")
        for key in ("cards", "fires", "silent"):
            listed = (expect or {}).get(key)
            if listed is not None and not isinstance(listed, list):
                diags.append(Diagnostic(where, *yamlsource.value_pos(expect, key), "schema",
                                        f"case '{name}': expect.{key} is a list",
                                        hint=f"for example `{key}: [...]`, one item a line with `- `"))
        diags += time_problems(where, case, "now", f"case '{name}'", NOW_HINT)
        cards = (expect or {}).get("cards")
        for j, card in enumerate(cards if isinstance(cards, list) else []):
            if not isinstance(card, dict):
                diags.append(Diagnostic(where, *yamlsource.value_pos(cards, j), "schema",
                                        f"case '{name}': an expected card is a mapping (rule, summary, ...)"))
                continue
            unknown(card, CARD_KEYS, f"case '{name}' expected card")
    return diags + unknown_fixtures(path, data, fixtures)


@dataclass
class CaseResult:
    file: str
    rule: str
    name: str
    status: str  # PASS | FAIL | SKIP
    problems: list[str] = field(default_factory=list)
    issued: list[Issued] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    firing_case: bool = False
    silent_case: bool = False

    @property
    def cards(self) -> list[dict[str, Any]]:
        return [c.json for c in self.issued]


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
        if isinstance(expected, dict) and ("contains" in expected or "excludes" in expected):
            # {contains: text} and {excludes: text}, alone or together: a case can tell two wordings apart
            # even when one contains the other's words.
            if "contains" in expected and (not isinstance(actual, str) or str(expected["contains"]) not in actual):
                diffs.append(f"{key} does not contain {expected['contains']!r}: {actual!r}")
            if "excludes" in expected and (not isinstance(actual, str) or str(expected["excludes"]) in actual):
                diffs.append(f"{key} contains {expected['excludes']!r}, which it must not: {actual!r}")
        elif isinstance(expected, dict) and "max_length" in expected:
            if not isinstance(actual, str) or len(actual) > int(expected["max_length"]):
                diffs.append(f"{key} longer than {expected['max_length']}")
        elif actual != expected:
            diffs.append(f"{key}: expected {expected!r}, got {actual!r}")
    return diffs


def check(expect: dict[str, Any], decision: Decision, rule_id: str) -> list[str]:
    problems: list[str] = []
    fired = {f["rule"] for f in decision.fired + decision.shadow}
    cards = decision.cards
    for want in expect.get("cards") or []:
        want = dict(want)
        candidates = [c.json for c in decision.issued if c.rule.id == want.get("rule", rule_id)]
        if not candidates:
            problems.append(f"expected a {want.get('rule', rule_id)} card; cards were "
                            f"{[c.rule.id for c in decision.issued]}")
            continue
        diffs = card_matches(candidates[0], want)
        if diffs:
            problems.append(f"{want.get('rule', rule_id)} card: " + "; ".join(diffs))
    if (expect.get("cards") == [] or expect.get("no_cards")) and cards:
        problems.append(f"expected no cards; got {[c.rule.id for c in decision.issued]}")
    for rid in expect.get("fires") or []:
        if rid not in fired:
            problems.append(f"expected {rid} to fire; fired: {sorted(fired)}")
    for rid in expect.get("silent") or []:
        if rid in fired:
            problems.append(f"expected {rid} to stay silent, but it fired")
    counts: dict[tuple[str, tuple[str, ...]], int] = {}
    for c in decision.issued:  # one card per rule, per proposed session at appointment-book
        evidence = c.json["extension"]["protocol-engine"]["evidence"]
        key = (c.rule.id, tuple(e for e in evidence if e.startswith("Appointment/")))
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


def prepare_file(path: Path, packset: PackSet, runtimes: dict[str, ServiceRuntime],
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
    pack = next((p for p in packset.packs if path.resolve().is_relative_to(p.root.resolve())), None)
    if pack is None:
        return [], [Diagnostic(str(path), 1, 1, "schema", "test file is not inside a loaded pack")]
    defaults = raw.get("defaults") or {}
    fixtures, fixture_diags = load_fixtures(pack.root)
    fixture_diags += file_problems(path, data, fixtures)
    if fixture_diags:
        return [], diags + fixture_diags
    prepared = []
    for i, case in enumerate(raw["cases"]):
        name = str(case.get("name") or case.get("todo") or f"case {i + 1}")
        if "todo" in case:
            prepared.append(PreparedCase(str(path), rule_id, name, case, {}, dt.datetime.now(dt.UTC), "", None, True))
            continue
        merged = merge_case(defaults, case, fixtures)
        now = when(case.get("now", raw.get("now")), dt.datetime.now(dt.UTC))
        hook = merged.get("hook", "order-sign")
        service_id = next((sid for sid, r in runtimes.items() if r.pack is pack and r.service.hook == hook), None)
        prepared.append(PreparedCase(str(path), rule_id, name, merged, case.get("expect") or {}, now, hook,
                                     service_id))
    return prepared, diags


def run_file(path: Path, packset: PackSet, runtimes: dict[str, ServiceRuntime],
             only_rule: str | None = None) -> tuple[list[CaseResult], list[Diagnostic]]:
    prepared, diags = prepare_file(path, packset, runtimes, only_rule)
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
            decision = run(runtimes, packset.revision, pc.service_id, pc.request(runtimes), pc.now)
        except Exception as exc:  # a case that cannot run is a failure, reported, not a crash
            result.status, result.problems = "FAIL", [f"{type(exc).__name__}: {exc}"]
            results.append(result)
            continue
        result.issued = decision.issued
        result.fired = [f["rule"] for f in decision.fired]
        result.problems = check(expect, decision, rule_id)
        if result.problems and decision.skipped:  # say why nothing was evaluated
            result.problems.append(f"the service evaluated no rule: {decision.skipped}")
        if result.problems:
            result.status = "FAIL"
        results.append(result)
    return results, diags
