"""The only module that imports durable_rules: evaluate(compiled, facts) -> findings.

durable_rules is treated as single-threaded per process (one lock; concurrency comes from
gunicorn worker processes), and its background dispatch threads are never started.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import durable.engine as durable

from .compiler import GO, compile_rules, fact_types_read
from .facts import VOLUME
from .model import Fact, Finding, Rule

_LOCK = threading.Lock()
_SESSION = itertools.count(1)
_HOSTS = itertools.count(1)


class _QuietHost(durable.Host):  # type: ignore[misc]
    def _run(self) -> None:
        """No timer threads: every call is driven synchronously under _LOCK."""


class EngineError(Exception):
    pass


# Measured here with durable-rules 2.0.28: one ruleset of about 74 compiled rules corrupts the
# heap on evaluation ("free(): invalid size"), while 71 worked. Shards of at most this many
# catalogue rules each stay far below that limit and below the per-batch firing limit.
MAX_RULES_PER_SHARD = 20


@dataclass
class Shard:
    name: str
    fact_types: set[str]


@dataclass
class CompiledRules:
    """durable_rules rulesets (shards) for one service, built once per rule-set load."""

    host: Any
    shards: list[Shard]
    rules: dict[str, Rule]
    fact_types: set[str]
    fired: list[tuple[str, dict[str, Any]]]


def compile_service(rules: list[Rule]) -> CompiledRules:
    fired: list[tuple[str, dict[str, Any]]] = []

    def recorder(rule_key: str) -> Any:
        def action(c: Any) -> None:
            fired.append((rule_key, dict(c._m)))
        return action

    def ignore(c: Any) -> None:
        return None

    definitions: dict[str, dict[str, Any]] = {}
    shards: list[Shard] = []
    for group in plan_shards(rules):
        types = fact_types_read(group)
        definition = compile_rules(group, types)
        for key, body in definition.items():
            body["run"] = ignore if key.startswith("$catch") else recorder(key.split("#", 1)[0])
        name = f"rs{next(_HOSTS)}"
        definitions[name] = definition
        shards.append(Shard(name, types))
    with _LOCK:
        host = _QuietHost()
        host.set_rulesets(definitions)
    return CompiledRules(host, shards, {r.id: r for r in rules}, fact_types_read(rules), fired)


def _shard_cost(groups: list[list[Rule]]) -> int:
    return sum(sum(VOLUME.get(t, 1) for t in fact_types_read(g)) for g in groups if g)


def _neighbours(groups: list[list[Rule]], size: int) -> Iterator[list[list[Rule]]]:
    """Plans one step away: a rule moved to a shard with room, or swapped with a rule of a full one."""
    for a, b in itertools.permutations(range(len(groups)), 2):
        for i in range(len(groups[a])):
            if len(groups[b]) < size:
                moved = [list(g) for g in groups]
                moved[b].append(moved[a].pop(i))
                yield moved
                continue
            for j in range(len(groups[b])):
                swapped = [list(g) for g in groups]
                swapped[a][i], swapped[b][j] = swapped[b][j], swapped[a][i]
                yield swapped


def plan_shards(rules: list[Rule], size: int = MAX_RULES_PER_SHARD) -> list[list[Rule]]:
    """Split rules into the fewest shards, placing rules that read the same fact types together.

    Every fact is asserted into every shard that reads its type, and each assertion costs a fired
    catch-all action, so the plan minimises the facts asserted per request (weighted by VOLUME):
    a greedy placement, then single moves and swaps between shards while they lower the cost.
    """
    if not rules:
        return [[]]
    count = -(-len(rules) // size)
    groups: list[list[Rule]] = [[] for _ in range(count)]
    for rule in sorted(rules, key=lambda r: (-len(r.facts_read), sorted(r.facts_read), r.id)):
        def added(i: int, rule: Rule = rule) -> tuple[int, int]:
            return sum(VOLUME.get(t, 1) for t in set(rule.facts_read) - fact_types_read(groups[i])), -len(groups[i])
        groups[min((i for i in range(count) if len(groups[i]) < size), key=added)].append(rule)
    cost = _shard_cost(groups)
    while (better := next((t for t in _neighbours(groups, size) if _shard_cost(t) < cost), None)) is not None:
        groups, cost = better, _shard_cost(better)
    return [sorted(g, key=rules.index) for g in groups if g]


def evaluate(compiled: CompiledRules, facts: list[Fact]) -> list[Finding]:
    """Assert the facts in a fresh session per shard, fire, collect findings, delete the sessions."""
    by_n = {f["n"]: f for f in facts if f["t"] in compiled.fact_types}
    fired: list[tuple[str, dict[str, Any]]] = []
    with _LOCK:
        sid = str(next(_SESSION))
        for shard in compiled.shards:
            wanted = [_for_engine(f, sid) for f in by_n.values() if f["t"] in shard.fact_types]
            compiled.fired.clear()
            try:
                if wanted:
                    compiled.host.assert_facts(shard.name, wanted)
                compiled.host.assert_fact(shard.name, {"t": GO, "sid": sid})
                fired.extend(compiled.fired)
            except Exception as exc:
                raise EngineError(f"rule evaluation failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
            finally:
                compiled.fired.clear()
                with contextlib.suppress(Exception):  # a failed cleanup must not mask the answer
                    compiled.host.delete_state(shard.name, sid)
    grouped: dict[str, list[dict[str, Fact]]] = {}
    for rule_id, match in fired:
        bindings = {name: by_n[f["n"]] for name, f in match.items()
                    if isinstance(f, dict) and f.get("t") != GO and f.get("n") in by_n}
        if bindings not in grouped.setdefault(rule_id, []):
            grouped[rule_id].append(bindings)
    return [Finding(compiled.rules[rid], tuple(ms)) for rid, ms in grouped.items()]


def _for_engine(fact: Fact, sid: str) -> dict[str, Any]:
    # durable_rules compares 84.0 and 84 as different values; whole numbers go in as integers.
    out = {k: (int(v) if isinstance(v, float) and v.is_integer() else v)
           for k, v in fact.items() if k not in ("describe", "refs", "at")}
    out["sid"] = sid
    return out
