"""The only module that imports durable_rules: evaluate(compiled, facts) -> findings.

durable_rules is treated as single-threaded per process (one lock; concurrency comes from
gunicorn worker processes), and its background dispatch threads are never started.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any

import durable.engine as durable

from .compiler import GO, compile_rules, fact_types_read
from .model import Fact, Finding, Rule

_LOCK = threading.Lock()
_SESSION = itertools.count(1)
_HOSTS = itertools.count(1)


class _QuietHost(durable.Host):  # type: ignore[misc]
    def _run(self) -> None:
        """No timer threads: every call is driven synchronously under _LOCK."""


class EngineError(Exception):
    pass


@dataclass
class CompiledRules:
    """A durable_rules ruleset for one service, built once per rule-set load."""

    name: str
    host: Any
    rules: dict[str, Rule]
    fact_types: set[str]
    fired: list[tuple[str, dict[str, Any]]]


def compile_service(rules: list[Rule]) -> CompiledRules:
    fired: list[tuple[str, dict[str, Any]]] = []
    fact_types = fact_types_read(rules)
    definition = compile_rules(rules, fact_types)

    def recorder(rule_key: str) -> Any:
        def action(c: Any) -> None:
            fired.append((rule_key, dict(c._m)))
        return action

    def ignore(c: Any) -> None:
        return None

    for key, body in definition.items():
        body["run"] = ignore if key.startswith("$catch") else recorder(key.split("#", 1)[0])
    name = f"rs{next(_HOSTS)}"
    with _LOCK:
        host = _QuietHost()
        host.set_rulesets({name: definition})
    return CompiledRules(name, host, {r.id: r for r in rules}, fact_types, fired)


def evaluate(compiled: CompiledRules, facts: list[Fact]) -> list[Finding]:
    """Assert the facts in a fresh session, fire, collect findings, and delete the session."""
    wanted = [f for f in facts if f["t"] in compiled.fact_types]
    by_n = {f["n"]: f for f in wanted}
    with _LOCK:
        sid = str(next(_SESSION))
        compiled.fired.clear()
        try:
            if wanted:
                compiled.host.assert_facts(compiled.name, [_for_engine(f, sid) for f in wanted])
            compiled.host.assert_fact(compiled.name, {"t": GO, "sid": sid})
            fired = list(compiled.fired)
        except Exception as exc:
            raise EngineError(f"rule evaluation failed: {type(exc).__name__}") from exc
        finally:
            compiled.fired.clear()
            try:
                compiled.host.delete_state(compiled.name, sid)
            except Exception:  # noqa: S110 - a failed cleanup must not mask the answer
                pass
    grouped: dict[str, list[dict[str, Fact]]] = {}
    for rule_id, match in fired:
        bindings = {name: by_n[f["n"]] for name, f in match.items()
                    if isinstance(f, dict) and f.get("t") != GO and f.get("n") in by_n}
        if bindings not in grouped.setdefault(rule_id, []):
            grouped[rule_id].append(bindings)
    return [Finding(compiled.rules[rid], tuple(ms)) for rid, ms in grouped.items()]


def _for_engine(fact: Fact, sid: str) -> dict[str, Any]:
    out = {k: v for k, v in fact.items() if k not in ("describe", "refs", "at")}
    out["sid"] = sid
    return out
