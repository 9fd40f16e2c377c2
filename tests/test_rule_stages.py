"""A rule file through its stages, one module at a time: pack/loader.py (YAML -> Rule, positioned diagnostics),
core/compiler.py (Rule -> durable_rules definition) and core/engine.py (facts -> findings), on one real rule
(CI-06) and small hand-written facts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from protocol_engine.core import engine
from protocol_engine.core.compiler import GO, compile_rules, fact_types_read
from protocol_engine.pack.loader import parse_rule

ROOT = Path(__file__).resolve().parent.parent
CI06 = ROOT / "rules" / "ketamine" / "contraindications" / "CI-06-elevated-bp.rule.yaml"


def parse(loaded: Any, path: Path) -> Any:
    pack = loaded.packset.packs[0]
    return parse_rule(path, pack.protocol, set(pack.index.valuesets))


def test_the_loader_reads_a_rule_file_into_a_typed_rule(loaded: Any) -> None:
    rule, diags = parse(loaded, CI06)
    assert diags == [] and rule is not None
    assert (rule.id, rule.category, rule.card.indicator) == ("CI-06", "precaution", "warning")
    assert rule.suppressed_by == ("CI-05",) or list(rule.suppressed_by) == ["CI-05"]
    # the measurement it names, and the order: its drug scope (ketamine, esketamine) is checked on the order
    assert set(rule.facts_read) == {"measurement", "order"} and len(rule.conjuncts) == 2  # two `any` alternatives


def test_a_misspelt_fact_type_is_a_positioned_error_with_a_suggestion(loaded: Any, tmp_path: Path) -> None:
    broken = tmp_path / CI06.name
    shutil.copy(CI06, broken)
    text = broken.read_text()
    broken.write_text(text.replace("- fact: measurement", "- fact: measurment", 1))
    line = next(i for i, t in enumerate(broken.read_text().splitlines(), 1) if "measurment" in t)
    rule, diags = parse(loaded, broken)
    assert rule is None
    [diag] = [d for d in diags if d.code == "unknown-fact-type"]
    assert diag.line == line and "measurement" in (diag.hint or diag.message)


def test_the_compiler_gives_one_durable_rule_per_alternative_behind_the_go_sentinel(loaded: Any) -> None:
    rule, _ = parse(loaded, CI06)
    assert rule is not None
    definition = compile_rules([rule], fact_types_read([rule]))
    json.dumps(definition)  # plain JSON-able dicts, as durable_rules takes them
    alternatives = sorted(k for k in definition if k.startswith("CI-06#"))
    assert alternatives == ["CI-06#0", "CI-06#1"]
    assert all(definition[k]["all"][0] == {"_go": {"t": GO}} for k in alternatives)


def test_the_engine_holds_the_rule_on_a_high_systolic_only(loaded: Any) -> None:
    rule, _ = parse(loaded, CI06)
    assert rule is not None
    compiled = engine.compile_service([rule])

    def bp(systolic: float, diastolic: float) -> dict[str, Any]:
        return {"t": "measurement", "measure": "blood-pressure", "taken_ago": 1.0, "systolic": systolic,
                "diastolic": diastolic}

    def held(*facts: dict[str, Any]) -> list[str]:
        numbered = [{**f, "n": n} for n, f in enumerate(facts)]
        return [f.rule.id for f in engine.evaluate(compiled, numbered)]

    ketamine = {"t": "order", "drug": "ketamine", "route": "iv", "draft": True}
    assert held(bp(152, 80), ketamine) == ["CI-06"]
    assert held(bp(120, 80), ketamine) == []
    assert held(bp(152, 80), {**ketamine, "drug": "sertraline"}) == []  # outside the rule's drug scope


def test_a_misspelt_setting_and_a_template_variable_no_fact_gives_are_each_positioned_errors(
        loaded: Any, tmp_path: Path) -> None:
    broken = tmp_path / CI06.name
    text = CI06.read_text()
    text = text.replace("systolic: {gt: $systolic_limit}", "systolic: {gt: $systolic_limt}", 1)
    text = text.replace("taken {{ bp.at|time }}", "taken {{ reading.at|time }}", 1)
    broken.write_text(text)
    lines = broken.read_text().splitlines()
    rule, diags = parse(loaded, broken)
    assert rule is None
    by_code = {d.code: d for d in diags}
    setting = by_code["unknown-setting"]
    assert "systolic_limt" in lines[setting.line - 1] and "systolic_limit" in (setting.hint or setting.message)
    template = by_code["template-undefined-var"]
    assert "reading" in template.message and template.line > setting.line
    assert all(d.render().startswith(f"{broken}:{d.line}:{d.col}: error[") for d in (setting, template))
