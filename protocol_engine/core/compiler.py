"""Rule -> durable_rules ruleset definition (plain JSON-able dicts); pure and snapshot-testable.

Measured semantics of durable_rules 2.0.28 that shape this (see tests/test_engine.py):
- `$not` patterns are only reliable when every positive fact is already asserted, so each
  rule starts with a `$go` sentinel asserted after the data, and negations come last.
- a fact matching no rule raises MessageNotHandledException, and deleting that session can
  crash the process, so every fact type gets a cheap catch-all rule. (A catch-all that never fires,
  its second pattern waiting for a fact type nothing asserts, would save an action per fact, but
  corrupted the heap within a few thousand sessions: measured, not used.)
"""

from __future__ import annotations

from typing import Any

from .model import Conjunct, FieldTest, Location, Pattern, Rule

GO = "$go"
CATCH_ALL = "$catch#"  # prefix of the catch-all rules' names
_DURABLE_OPS = {"lt": "$lt", "lte": "$lte", "gt": "$gt", "gte": "$gte", "ne": "$neq"}


def _test(test: FieldTest) -> dict[str, Any]:
    if test.op == "eq":
        return {test.field: test.value}
    if test.op == "in":
        return {"$or": [{test.field: v} for v in test.value]}
    if test.op == "not_in":
        # Not a `none` pattern: durable_rules never matches `$not` against the fact a positive
        # pattern of the same rule already bound, so exclusions on one fact are field tests.
        return {"$and": [{"$neq": {test.field: v}} for v in test.value]}
    return {_DURABLE_OPS[test.op]: {test.field: test.value}}


def pattern_expr(pattern: Pattern, extra: tuple[FieldTest, ...] = ()) -> dict[str, Any]:
    terms = [{"t": pattern.fact}] + [_test(t) for t in (*pattern.tests, *extra)]
    return {"$and": terms}


def drug_scope(rule: Rule) -> tuple[FieldTest, ...]:
    """The rule's `drugs:` list as a test on the order fact (empty when the rule applies to every drug)."""
    if not rule.drugs:
        return ()
    return (FieldTest("drug", "in", list(rule.drugs), Location(rule.path, 1, 1)),)


def scoped(rule: Rule, conj: Conjunct) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """Positive (name, expr) pairs and negative exprs, with the rule's drug scope applied."""
    scope = drug_scope(rule)
    positives: list[tuple[str, dict[str, Any]]] = []
    has_order = any(p.fact == "order" for p in conj.positives)
    for i, p in enumerate(conj.positives):
        name = p.bind or f"_p{i}"
        positives.append((name, pattern_expr(p, scope if p.fact == "order" else ())))
    # A rule with no drug scope (`drugs: []`, e.g. DQ-05: another patient's records) holds with or without an order
    # in scope: at patient-view with no protocol course there is none, and the fault is still the request's.
    if not has_order and rule.drugs:
        positives.append(("_scope", pattern_expr(Pattern("order", None, (), Location(rule.path, 1, 1)), scope)))
    negatives = [pattern_expr(p) for p in conj.negatives]
    return positives, negatives


def compile_rules(rules: list[Rule], fact_types: set[str]) -> dict[str, dict[str, Any]]:
    """One durable rule per alternative of each rule (`CI-05#0`, `CI-05#1`, ...) plus catch-alls."""
    definition: dict[str, dict[str, Any]] = {}
    for rule in rules:
        for k, conj in enumerate(rule.conjuncts):
            positives, negatives = scoped(rule, conj)
            body: list[dict[str, Any]] = [{"_go": {"t": GO}}]
            body += [{name: expr} for name, expr in positives]
            body += [{f"_n{j}$not": expr} for j, expr in enumerate(negatives)]
            definition[f"{rule.id}#{k}"] = {"all": body}
    for fact_type in sorted(fact_types | {GO}):
        definition[f"{CATCH_ALL}{fact_type}"] = {"all": [{"m": {"t": fact_type}}]}
    return definition


def fact_types_read(rules: list[Rule]) -> set[str]:
    return {f for r in rules for f in r.facts_read}
