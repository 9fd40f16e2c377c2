"""Rules over imprecise values: a rule holds only when it holds for every value a range allows.

The deriver writes a reduced-precision value (a birth date `2009`, a condition onset `2026-08`, a
date-only observation) as its low end in the fact, with `ranges: {field: [low, high]}` beside it.
Every rule compares a field with one threshold per test, so it is evaluated twice: once with every
range at its low end and once at its high end. A rule that holds in both holds for the whole range
(for one-sided tests on each field); a rule that holds in only one depends on where in the range the
true value lies, and is answered with an `imprecise` fact (a data-quality card naming the rule and the
values) instead of a guess either way. Charts without ranges are evaluated once, as before.
"""

from __future__ import annotations

from typing import Any

from . import engine
from .model import Fact, Finding, Rule
from .templates import Span

IMPRECISE = "imprecise"


def _world(fact: Fact, end: int) -> Fact:
    ranges: dict[str, list[Any]] = fact.get("ranges") or {}
    if not ranges:
        return fact
    out = {k: v for k, v in fact.items() if k != "ranges"}
    for name, bounds in ranges.items():
        out[name] = bounds[end]
    return out


def _spanned(finding: Finding, ranged: dict[Any, Fact]) -> Finding:
    """The finding with each ranged value shown as its range on the card (`16-17`, `173-203 days`)."""
    matches = []
    for match in finding.matches:
        bound = {}
        for name, fact in match.items():
            original = ranged.get(fact.get("n"))
            if original is not None:
                fact = {**fact, **{k: Span(min(lo, hi), max(lo, hi)) for k, (lo, hi) in original["ranges"].items()
                                   if _number(lo) and _number(hi)}}
            bound[name] = fact
        matches.append(bound)
    return Finding(finding.rule, tuple(matches), finding.held)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _straddles(rule: Rule, fact: Fact) -> bool:
    """Whether a threshold the rule tests on this fact lies inside one of its ranges."""
    ranges: dict[str, list[Any]] = fact["ranges"]
    for conj in rule.conjuncts:
        for pattern in (*conj.positives, *conj.negatives):
            if pattern.fact != fact["t"]:
                continue
            for test in pattern.tests:
                if test.field not in ranges or isinstance(test.value, bool) \
                        or not isinstance(test.value, (int, float)):
                    continue
                low, high = ranges[test.field]
                if test.op in ("lt", "gte") and low < test.value <= high:
                    return True
                if test.op in ("lte", "gt") and low <= test.value < high:
                    return True
    return False


def evaluate(compiled: engine.CompiledRules, facts: list[Fact]) -> list[Finding]:
    ranged = [f for f in facts if f.get("ranges")]
    if not ranged:
        return engine.evaluate(compiled, facts)
    low_facts = [_world(f, 0) for f in facts]
    low = engine.evaluate(compiled, low_facts)
    high = engine.evaluate(compiled, [_world(f, 1) for f in facts])
    high_ids = {f.rule.id for f in high}
    low_ids = {f.rule.id for f in low}
    by_n = {f["n"]: f for f in ranged}
    findings = [_spanned(f, by_n) for f in low if f.rule.id in high_ids]
    undecided = [f.rule for f in (*low, *high) if f.rule.id in low_ids ^ high_ids
                 and f.rule.status == "active" and IMPRECISE not in f.rule.facts_read]
    if not undecided:
        return findings
    n = max((int(f.get("n", 0)) for f in facts), default=0)
    extra: list[Fact] = []
    for rule in {r.id: r for r in undecided}.values():
        values = [f for f in ranged if f["t"] in rule.facts_read]
        values = [f for f in values if _straddles(rule, f)] or values
        n += 1
        extra.append({
            "t": IMPRECISE, "rule": rule.id, "title": rule.title, "n": n,
            "refs": [ref for f in values for ref in f.get("refs", ())],
            "values": "; ".join(str(f.get("describe", f["t"])) for f in values),
            "describe": f"{rule.title} cannot be decided: "  # evidence a clinician reads: the check in words
                        + "; ".join(str(f.get("describe", f["t"])) for f in values),
        })
    more = engine.evaluate(compiled, low_facts + extra)
    return findings + [f for f in more if IMPRECISE in f.rule.facts_read]
