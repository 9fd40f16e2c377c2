"""`protocol-engine explain`: each rule's conditions against the facts it saw, and what held.

The decision itself comes from the engine; this module re-reads the same compiled patterns in
plain Python only to show an informaticist why a rule did or did not hold.
"""

from __future__ import annotations

from ..core.cards import Issued
from ..core.compiler import drug_scope
from ..core.model import Fact, FieldTest, Pattern, Rule

_SYMBOL = {"eq": "=", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">=", "in": "in", "not_in": "not in"}


def _holds(test: FieldTest, fact: Fact) -> bool:
    if test.field not in fact:
        return False
    value = fact[test.field]
    try:
        if test.op == "eq":
            return bool(value == test.value)
        if test.op == "ne":
            return bool(value != test.value)
        if test.op == "in":
            return value in test.value
        if test.op == "not_in":
            return value not in test.value
        return bool({"lt": value < test.value, "lte": value <= test.value, "gt": value > test.value,
                     "gte": value >= test.value}[test.op])
    except TypeError:
        return False


def describe(pattern: Pattern, extra: tuple[FieldTest, ...] = ()) -> str:
    tests = " and ".join(f"{t.field} {_SYMBOL[t.op]} {t.value}" for t in (*pattern.tests, *extra))
    return f"{pattern.fact}" + (f" where {tests}" if tests else "")


def explain_rule(rule: Rule, facts: list[Fact], fired: bool) -> list[str]:
    lines = [f"{rule.id} v{rule.version} [{rule.card.indicator}] {rule.title}: {'FIRED' if fired else 'silent'}"]
    scope = drug_scope(rule)
    for k, conj in enumerate(rule.conjuncts):
        lines.append(f"  alternative {k + 1}:")
        checks: list[tuple[str, Pattern, bool]] = [("must match", p, True) for p in conj.positives]
        if not any(p.fact == "order" for p in conj.positives) and rule.drugs:
            checks.insert(0, ("must match", Pattern("order", None, (), conj.positives[0].loc if conj.positives
                                                    else conj.negatives[0].loc), True))
        checks += [("must not match", p, False) for p in conj.negatives]
        for label, pattern, positive in checks:
            extra = scope if pattern.fact == "order" else ()
            candidates = [f for f in facts if f["t"] == pattern.fact]
            matching = [f for f in candidates if all(_holds(t, f) for t in (*pattern.tests, *extra))]
            held = bool(matching) if positive else not matching
            mark = "yes" if held else "no "
            lines.append(f"    [{mark}] {label}: {describe(pattern, extra)}")
            for f in matching[:3]:
                lines.append(f"          saw {f.get('describe', _brief(f))}")
            if not matching and candidates:
                for f in candidates[:3]:
                    failed = [t for t in (*pattern.tests, *extra) if not _holds(t, f)]
                    why = ", ".join(f"{t.field}={f.get(t.field, '(absent)')!r} fails {_SYMBOL[t.op]} {t.value}"
                                    for t in failed)
                    lines.append(f"          near miss {f.get('describe', _brief(f))}: {why}")
            if not candidates:
                lines.append(f"          no '{pattern.fact}' fact in this request")
    return lines


def _brief(fact: Fact) -> str:
    return ", ".join(f"{k}={v}" for k, v in fact.items() if k not in ("t", "n", "refs"))


def summary_lines(cards: list[Issued]) -> list[str]:
    if not cards:
        return ["cards: none (every rule checked; nothing to say)"]
    return ["cards:"] + [f"  {c.json['indicator']:8} {c.rule.id:7} {c.json['summary']}" for c in cards]
