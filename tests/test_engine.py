"""The durable_rules adapter: shard planning keeps every rule, respects the size limit and cuts assertions."""

from __future__ import annotations

from typing import Any

from protocol_engine.engine import MAX_RULES_PER_SHARD, _shard_cost, plan_shards


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
