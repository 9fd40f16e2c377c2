"""Every vignette beside every rule, run through pytest (the same runner as `protocol-engine test`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from protocol_engine.authoring.testing import find_test_files, run_file
from protocol_engine.hooks.pipeline import build_runtime
from protocol_engine.pack.packset import load_packset

ROOT = Path(__file__).resolve().parent.parent
PACK_ROOTS = [ROOT / "rules", ROOT / "tests" / "packs"]


def _cases() -> list[Any]:
    params = []
    for root in PACK_ROOTS:
        if not root.exists():
            continue
        packset, diags = load_packset(root)
        assert packset is not None, "\n".join(d.render() for d in diags)
        runtimes = build_runtime(packset)
        for path in find_test_files([root]):
            results, diags = run_file(path, packset, runtimes)
            assert not diags, "\n".join(d.render() for d in diags)
            for r in results:
                params.append(pytest.param(r, id=f"{r.rule}: {r.name}"))
    return params


@pytest.mark.parametrize("result", _cases())
def test_rule_case(result: Any) -> None:
    if result.status == "SKIP":
        pytest.skip("todo case")
    assert result.status == "PASS", "\n".join(result.problems)
