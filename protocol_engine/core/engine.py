"""The only module that imports durable_rules: evaluate(compiled, facts) -> findings.

durable_rules' C engine is driven directly (create_ruleset / assert_facts / start_action_for_state /
complete_and_start_action), not through its Python `Host`: the Host re-serialises the whole session
state and parses every queued action message as JSON in Python (44 dump/load round trips and 36
Python action callbacks per 20-Observation order-sign call, 16 % of the call). Here each fact is
serialised once per call whatever the number of shards, and only the messages of rules that held are
parsed. The engine is single-threaded per process (one lock; concurrency comes from gunicorn worker
processes), and no background dispatch or timer thread exists.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import durable_rules_engine as durable

from .compiler import CATCH_ALL, GO, compile_rules, fact_types_read
from .facts import VOLUME
from .model import Fact, Finding, Rule

_LOCK = threading.Lock()
_SESSION = itertools.count(1)
_HOSTS = itertools.count(1)
# durable_rules_engine result codes, read as durable/engine.py Ruleset._handle_result reads them.
_NOT_HANDLED, _OBSERVED, _DEFERRED = 1, 2, 3
_CATCH_ALL = '{"' + CATCH_ALL


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
    handle: int = 0


@dataclass
class CompiledRules:
    """durable_rules rulesets (shards) for one service, built once per rule-set load."""

    shards: list[Shard]
    rules: dict[str, Rule]
    fact_types: set[str]


def compile_service(rules: list[Rule]) -> CompiledRules:
    shards: list[Shard] = []
    with _LOCK:
        for group in plan_shards(rules):
            types = fact_types_read(group)
            shard = Shard(f"rs{next(_HOSTS)}", types)
            shard.handle = durable.create_ruleset(shard.name, _encode(compile_rules(group, types)))
            shards.append(shard)
    return CompiledRules(shards, {r.id: r for r in rules}, fact_types_read(rules))


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
    fired: list[dict[str, Any]] = []
    with _LOCK:
        sid = str(next(_SESSION))
        # Each fact is serialised once; a shard's batch is the join of the facts of its types.
        encoded = {n: (f["t"], _encode(_for_engine(f, sid))) for n, f in by_n.items()}
        go = json.dumps({"t": GO, "sid": sid})
        for shard in compiled.shards:
            wanted = [text for kind, text in encoded.values() if kind in shard.fact_types]
            try:
                if wanted:
                    _run(shard, durable.assert_facts(shard.handle, "[" + ",".join(wanted) + "]"), fired)
                _run(shard, durable.assert_fact(shard.handle, go), fired)
            except Exception as exc:
                raise EngineError(f"rule evaluation failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
            finally:
                with contextlib.suppress(Exception):  # a failed cleanup must not mask the answer
                    durable.delete_state(shard.handle, sid)
    grouped: dict[str, list[dict[str, Fact]]] = {}
    held: dict[str, list[tuple[str, ...]]] = {}  # per match: the named `any` alternatives it went through
    for message in fired:
        for key, match in message.items():
            rule_id, _, alt = key.partition("#")  # "CI-05#1": rule, alternative
            if rule_id not in compiled.rules:  # a catch-all (see compiler.py)
                continue
            bindings = {name: by_n[f["n"]] for name, f in match.items()
                        if isinstance(f, dict) and f.get("t") != GO and f.get("n") in by_n}
            if bindings not in grouped.setdefault(rule_id, []):
                grouped[rule_id].append(bindings)
                conjuncts = compiled.rules[rule_id].conjuncts
                held.setdefault(rule_id, []).append(
                    conjuncts[int(alt)].names if alt.isdigit() and int(alt) < len(conjuncts) else ())
    return [_lead_first(Finding(compiled.rules[rid], tuple(ms), tuple(held.get(rid, ()))))
            for rid, ms in grouped.items()]


def _lead_first(finding: Finding) -> Finding:
    """The ways the rule held that give its full card come first: the card's summary names the first match, so
    an active benzodiazepine leads, not the one on hold (a `variants:` match, e.g. G8's info-level on hold)."""
    variants = finding.rule.card.variants
    if not variants or len(finding.matches) < 2:
        return finding

    def lesser(match: dict[str, Fact]) -> bool:
        return any(v.bind in match and all(match[v.bind].get(f) == want for f, want in v.values) for v in variants)

    order = sorted(range(len(finding.matches)), key=lambda i: lesser(finding.matches[i]))
    held = finding.held
    return Finding(finding.rule, tuple(finding.matches[i] for i in order),
                   tuple(held[i] for i in order) if len(held) == len(finding.matches) else held)


def _run(shard: Shard, result: tuple[int, int], fired: list[dict[str, Any]]) -> None:
    """Run the actions an assertion made ready: each is one rule alternative that held, in firing order.

    The same C calls durable's Host makes per action (update_state, complete_and_start_action), with the
    session state passed back unchanged: no action here writes state.
    """
    code, state_handle = result
    if code == 0 and state_handle == 0:  # what durable's C parser answers for a batch it could not read
        raise EngineError(f"{shard.name} could not read the asserted facts")
    if code == _NOT_HANDLED:
        raise EngineError(f"a fact matched no rule of {shard.name} (compiler catch-alls missing)")
    if code == _OBSERVED:
        raise EngineError(f"a fact was asserted twice into {shard.name} (facts must be distinct)")
    if code == _DEFERRED:
        state_handle = 0
    started = durable.start_action_for_state(shard.handle, state_handle)
    if not started:
        return
    state, message = started
    while message:
        if not message.startswith(_CATCH_ALL):  # a catch-all's message is the fact just asserted: skip it
            fired.append(json.loads(message))
        durable.update_state(shard.handle, state)
        message = durable.complete_and_start_action(shard.handle, state_handle)


def _encode(fact: dict[str, Any]) -> str:
    """The fact as JSON durable's C parser reads as Python does.

    Its number grammar needs a fraction before an exponent: Python writes 0.00001 as `1e-05`, which the
    parser refuses; inside a batch it then drops that fact and the ones after it without an error, and
    the next call into the engine crashed the worker (SIGSEGV, issue 20 probe: a weight of 0.00001 kg).
    Such numbers are rare (below 1e-4 or from 1e16), so the common path stays json.dumps.
    """
    text = json.dumps(fact, ensure_ascii=False)
    return _plain(fact) if _UNREADABLE_NUMBER.search(text) else text


_UNREADABLE_NUMBER = re.compile(r"\d[eE][-+]?\d|NaN|Infinity")


def _plain(value: Any) -> str:
    """JSON with every float written with a fraction before its exponent (1.0e-05); NaN and infinities as null."""
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + _plain(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_plain(v) for v in value) + "]"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "null"
        mantissa, e, exponent = repr(value).partition("e")
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else repr(value)
    return json.dumps(value, ensure_ascii=False)


def _for_engine(fact: Fact, sid: str) -> dict[str, Any]:
    # durable_rules compares 84.0 and 84 as different values; whole numbers go in as integers.
    out = {k: (int(v) if isinstance(v, float) and v.is_integer() else v)
           for k, v in fact.items() if k not in ("describe", "refs", "at", "name")}
    out["sid"] = sid
    return out
