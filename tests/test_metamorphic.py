"""Metamorphic tests over every rule case: FHIR rewrites and irrelevant additions that must not change the cards.

Every case of every rules/**/*.test.yaml is built into its CDS Hooks request (protocol_engine/authoring/testing.py), answered
in-process, then answered again after each rewrite of tests/metamorphic.py that applies to it; the cards must be the
same (rule, indicator, evidence mapped back). A failure prints the case, the rewrite and the card difference.

Known failures owned by work in progress are listed exactly, pair by pair, in tests/metamorphic_xfail.json and run
as strict xfails: each one turns into a failure the moment it is fixed, so the list only shrinks.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from metamorphic import BY_NAME, REWRITES, Rewritten, card_keys, describe, difference

from protocol_engine.authoring.testing import PreparedCase, find_test_files, prepare_file
from protocol_engine.hooks.pipeline import ServiceRuntime, build_runtime, run
from protocol_engine.pack.packset import PackSet, load_packset

ROOT = Path(__file__).resolve().parent.parent
# The first test pays for preparing every rule case once (_cases, cached): minutes on a slow shared CI runner, which
# the suite's 120 s per-test timeout cut off there (the failing "CI-01" check of an earlier CI run).
pytestmark = pytest.mark.timeout(900)
XFAIL_FILE = Path(__file__).with_name("metamorphic_xfail.json")


@cache
def _loaded() -> tuple[PackSet, dict[str, ServiceRuntime]]:
    packset, diags = load_packset(ROOT / "rules")
    assert packset is not None, "\n".join(d.render() for d in diags)
    return packset, build_runtime(packset)


@cache
def _cases() -> dict[str, PreparedCase]:
    packset, runtimes = _loaded()
    cases: dict[str, PreparedCase] = {}
    for path in find_test_files([ROOT / "rules"]):
        prepared, diags = prepare_file(path, packset, runtimes)
        assert not diags, "\n".join(d.render() for d in diags)
        for pc in prepared:
            if pc.todo or pc.service_id is None:
                continue
            key = f"{pc.rule}: {pc.name}"
            n = 2
            while key in cases:
                key, n = f"{pc.rule}: {pc.name} ({n})", n + 1
            cases[key] = pc
    return cases


def _known() -> dict[tuple[str, str], str]:
    """(case, rewrite) -> reason, from tests/metamorphic_xfail.json."""
    if not XFAIL_FILE.exists():
        return {}
    known = {}
    for group in json.loads(XFAIL_FILE.read_text())["groups"]:
        for rewrite, cases in group["pairs"].items():
            for case in cases:
                known[(case, rewrite)] = group["reason"]
    return known


def _params() -> list[Any]:
    known = _known()
    params = []
    for key, pc in _cases().items():
        request = _request(key)
        for rewrite in REWRITES:
            if rewrite.apply(request, key, pc.now) is None:
                continue  # nothing to rewrite in this case (no panel, no medication, ...)
            marks = []
            reason = known.pop((key, rewrite.name), None)
            if reason is not None:
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            params.append(pytest.param(key, rewrite.name, marks=marks, id=f"{key} | {rewrite.name}"))
    assert not known, f"{XFAIL_FILE.name} lists pairs that are not checks any more: {sorted(known)[:5]}"
    return params


def _answer(pc: PreparedCase, request: dict[str, Any]) -> list[dict[str, Any]]:
    packset, runtimes = _loaded()
    assert pc.service_id is not None
    return run(runtimes, packset.revision, pc.service_id, request, pc.now).cards


@cache
def _request_text(key: str) -> str:
    return json.dumps(_cases()[key].request(_loaded()[1]))


def _request(key: str) -> dict[str, Any]:
    """The case's request, built once per session (a fresh copy each time: rewrites and the service may not share)."""
    request: dict[str, Any] = json.loads(_request_text(key))
    return request


@cache
def _baseline(key: str) -> list[dict[str, Any]]:
    return _answer(_cases()[key], _request(key))


@pytest.mark.parametrize(("case", "rewrite"), _params())
def test_rewrite_keeps_the_cards(case: str, rewrite: str) -> None:
    pc = _cases()[case]
    spec = BY_NAME[rewrite]
    rewritten = spec.apply(_request(case), case, pc.now)
    assert rewritten is not None
    before = _baseline(case)
    where = f"case:    {Path(pc.file).relative_to(ROOT)} :: {pc.name!r} ({pc.hook})\nrewrite: {rewrite} - " \
            f"{spec.description}"
    if rewritten.bounds is not None:
        # Only imprecision that cannot change the answer: the earliest and the latest full dates agree with it.
        for bound in rewritten.bounds:
            if difference(before, _answer(pc, bound), Rewritten(bound)):
                pytest.skip("the reduced date's bounds straddle a threshold (a data-quality card is the answer)")
    try:
        after = _answer(pc, rewritten.request)
    except Exception as exc:  # the service must answer a valid request in any shape
        pytest.fail(f"{where}\nthe rewritten request raised {type(exc).__name__}: {exc}")
    diff = difference(before, after, rewritten)
    assert not diff, (f"{where}\noriginal cards: {describe(card_keys(before))}\n"
                      f"after rewrite:  {describe(card_keys(after, rewritten, frozenset(r for r, _, _ in card_keys(before))))}\n{diff}")


def sweep(only: set[str] | None = None) -> dict[str, dict[str, str]]:
    """Every (case, rewrite) check outside pytest: rewrite -> {case: the failure}. Skipped bounds are left out."""
    _, runtimes = _loaded()
    failures: dict[str, dict[str, str]] = {}
    for key, pc in _cases().items():
        request = pc.request(runtimes)
        before = _baseline(key)
        for spec in REWRITES:
            if only and spec.name not in only:
                continue
            rewritten = spec.apply(request, key, pc.now)
            if rewritten is None:
                continue
            if rewritten.bounds is not None and any(
                    difference(before, _answer(pc, b), Rewritten(b)) for b in rewritten.bounds):
                continue
            try:
                diff = difference(before, _answer(pc, rewritten.request), rewritten)
            except Exception as exc:
                diff = f"  raised {type(exc).__name__}: {exc}"
            if diff:
                failures.setdefault(spec.name, {})[key] = diff
    return failures


if __name__ == "__main__":  # python tests/test_metamorphic.py [rewrite ...] > failures.json: what fails today
    import sys

    sys.path.insert(0, str(ROOT))
    print(json.dumps(sweep(set(sys.argv[1:]) or None), indent=1, sort_keys=True))
