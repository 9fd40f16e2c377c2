"""core/derive/ keeps one concern a module and no private reach-ins: no module reads another object's `_name`
(`self.d._single` was how Readings built readings) or imports another module's `_name`. Checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

DERIVE = Path(__file__).resolve().parent.parent / "protocol_engine" / "core" / "derive"


def reach_ins(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(f"{ast.unparse(node)} (line {node.lineno})")
        elif isinstance(node, ast.ImportFrom):
            found += [f"import {a.name} (line {node.lineno})" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_derive_module_reaches_into_another_objects_private_names() -> None:
    modules = sorted(DERIVE.glob("*.py"))
    assert {p.stem for p in modules} >= {"readings", "course", "medications", "orders", "scores", "patient"}
    assert {p.name: reach_ins(p.read_text(encoding="utf-8")) for p in modules} == {p.name: [] for p in modules}


def test_the_check_sees_a_reach_in() -> None:
    assert reach_ins("class R:\n    def f(self):\n        return self.d._single(1)\n") == ["self.d._single (line 3)"]
    assert reach_ins("from .common import _H\n") == ["import _H (line 1)"]
    assert reach_ins("class R:\n    def f(self):\n        return self._own()\n") == []
