"""The durable_rules adapter: shard planning keeps every rule, respects the size limit and cuts assertions."""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from protocol_engine.core.engine import MAX_RULES_PER_SHARD, _shard_cost, plan_shards

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
_REFERENCES = itertools.count(1)


def test_every_rule_lands_in_exactly_one_shard_of_bounded_size(loaded: Any) -> None:
    for service_id, runtime in loaded.runtimes.items():
        plan = plan_shards(runtime.rules)
        placed = [rule.id for shard in plan for rule in shard]
        assert sorted(placed) == sorted(r.id for r in runtime.rules), service_id
        assert all(0 < len(shard) <= MAX_RULES_PER_SHARD for shard in plan)
        assert len(plan) == -(-len(runtime.rules) // MAX_RULES_PER_SHARD)  # no more shards than needed
        assert [[r.id for r in s] for s in plan] == [[r.id for r in s] for s in plan_shards(runtime.rules)]


def test_the_plan_asserts_fewer_facts_than_cutting_the_rule_list_in_order(loaded: Any) -> None:
    rules = loaded.runtimes["ketamine-order-sign"].rules
    in_order = [rules[i:i + MAX_RULES_PER_SHARD] for i in range(0, len(rules), MAX_RULES_PER_SHARD)]
    assert _shard_cost(plan_shards(rules)) < _shard_cost(in_order)


def test_rules_sharing_the_numerous_fact_types_are_kept_together(loaded: Any) -> None:
    rules = loaded.runtimes["ketamine-order-sign"].rules
    plan = plan_shards(rules)
    readers = [sum("measurement" in r.facts_read for r in shard) for shard in plan]
    everywhere = sum(1 for shard in plan if any("measurement" in r.facts_read for r in shard))
    assert everywhere < len(plan), readers


def _facts_of_every_rule_case(monkeypatch: Any) -> list[tuple[Any, list[dict[str, Any]]]]:
    """(compiled service, facts) of every vignette beside every rule, captured on their way to the engine."""
    from protocol_engine.authoring.testing import find_test_files, run_file
    from protocol_engine.core import engine
    from protocol_engine.hooks.pipeline import build_runtime
    from protocol_engine.pack.packset import load_packset

    captured: list[tuple[Any, list[dict[str, Any]]]] = []
    real = engine.evaluate

    def capture(compiled: Any, facts: list[dict[str, Any]]) -> Any:
        captured.append((compiled, copy.deepcopy(facts)))
        return real(compiled, facts)

    monkeypatch.setattr(engine, "evaluate", capture)
    packset, _ = load_packset(RULES)
    assert packset is not None
    runtimes = build_runtime(packset)
    for path in find_test_files([RULES]):
        run_file(path, packset, runtimes)
    monkeypatch.undo()
    return captured


class _Reference:
    """durable_rules' own Python Host on the same rule definitions: the direct driver must agree with it."""

    def __init__(self, rules: list[Any]) -> None:
        import durable.engine as durable

        from protocol_engine.core.compiler import compile_rules, fact_types_read

        class Quiet(durable.Host):  # type: ignore[misc]
            def _run(self) -> None:
                """no timer threads"""

        self.fired: list[tuple[str, dict[str, Any]]] = []

        def recorder(key: str) -> Any:
            def action(c: Any) -> None:  # one argument: durable treats two as an async action
                self.fired.append((key.split("#")[0], dict(c._m)))
            return action

        self.shards: dict[str, set[str]] = {}
        definitions = {}
        for shard in plan_shards(rules):
            name = f"ref{next(_REFERENCES)}"
            definition = compile_rules(shard, fact_types_read(shard))
            for key, body in definition.items():
                body["run"] = (lambda c: None) if key.startswith("$") else recorder(key)
            definitions[name] = definition
            self.shards[name] = fact_types_read(shard)
        self.host = Quiet()
        self.host.set_rulesets(definitions)

    def evaluate(self, facts: list[dict[str, Any]]) -> dict[str, list[list[int]]]:
        from protocol_engine.core.engine import _for_engine

        self.fired.clear()
        sid = f"ref-{next(_REFERENCES)}"
        for name, types in self.shards.items():
            wanted = [_for_engine(f, sid) for f in facts if f["t"] in types]
            if wanted:
                self.host.assert_facts(name, wanted)
            self.host.assert_fact(name, {"t": "$go", "sid": sid})
            self.host.delete_state(name, sid)
        out: dict[str, list[list[int]]] = {}
        for rule_id, match in self.fired:
            ns = sorted(f["n"] for f in match.values() if isinstance(f, dict) and f.get("t") != "$go")
            if ns not in out.setdefault(rule_id, []):
                out[rule_id].append(ns)
        return {k: sorted(v) for k, v in out.items()}


def test_the_direct_engine_driver_fires_what_durables_own_host_fires(monkeypatch: Any) -> None:
    """Every rule case's facts, evaluated by engine.evaluate and by durable's Python Host: the same findings."""
    from protocol_engine.core.engine import evaluate

    cases = _facts_of_every_rule_case(monkeypatch)
    assert len(cases) > 200
    references: dict[int, _Reference] = {}
    fired_somewhere = 0
    for compiled, facts in cases:
        ours = {f.rule.id: sorted(sorted(b["n"] for b in m.values()) for m in f.matches)
                for f in evaluate(compiled, facts)}
        if id(compiled) not in references:
            references[id(compiled)] = _Reference(list(compiled.rules.values()))
        reference = references[id(compiled)]
        assert ours == reference.evaluate(facts), [f["t"] for f in facts]
        fired_somewhere += bool(ours)
    assert fired_somewhere > 100


def test_thousands_of_sessions_leave_the_process_alive(tmp_path: Path) -> None:
    """A heap fault in the C engine shows only after many sessions (a never-firing catch-all did, at ~3,000)."""
    script = tmp_path / "soak.py"
    script.write_text(textwrap.dedent(f"""
        import datetime as dt, sys
        sys.path.insert(0, {str(ROOT)!r})
        from bench.generate import request
        from protocol_engine.core import engine
        from protocol_engine.hooks.pipeline import run
        from protocol_engine.runtime.registry import load
        loaded = load(__import__("pathlib").Path({str(RULES)!r}))
        now = dt.datetime.now(dt.UTC)
        seen = []
        real = engine.evaluate
        engine.evaluate = lambda c, f: seen.append((c, f)) or real(c, f)
        for s in range(20):
            run(loaded.runtimes, loaded.packset.revision, "ketamine-order-sign",
                request(20, now, seed=s, patient=f"p{{s}}"), now)
        for i in range(4000):
            real(*seen[i % len(seen)])
        print("alive")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "alive" in done.stdout, done.stderr[-2000:]
