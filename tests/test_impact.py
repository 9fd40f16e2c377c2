"""`protocol-engine impact`: a threshold change lists exactly the requests whose cards change, and why."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ADULT, KETAMINE_ORDER, bp, request_for

from protocol_engine.authoring.testing import find_test_files, run_file
from protocol_engine.cli import main
from protocol_engine.runtime.registry import load

# Each comparison loads two rule sets and evaluates ~500 requests twice: minutes on a busy 2-core machine.
pytestmark = pytest.mark.timeout(1800)
ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)  # the captured sandbox request's BP is from 07:13 that day
CI05 = "ketamine/contraindications/CI-05-severe-hypertension.rule.yaml"


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git checkout holding a copy of the shipped rules, committed: the base of every comparison."""
    top = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "rules", top / "rules")
    _git(top, "init", "-q")
    _git(top, "add", "-A")
    _git(top, "commit", "-qm", "base")
    return top


def _captured_with_bp(systolic: int, diastolic: int) -> dict[str, Any]:
    """The sandbox's own order-sign request (a shape we did not write), its BP panel rewritten."""
    body = json.loads((ROOT / "examples" / "requests" / "captured-order-sign-severe-hypertension.json").read_text())
    body = copy.deepcopy(body)
    for entry in body["prefetch"]["observations"]["entry"]:
        for comp in entry["resource"].get("component", []):
            code = comp["code"]["coding"][0]["code"]
            if code in ("8480-6", "8462-4"):
                comp["valueQuantity"]["value"] = systolic if code == "8480-6" else diastolic
    return body


def _corpus(tmp: Path) -> Path:
    """BPs around the changed threshold: which ones must change is known by construction."""
    loaded = load(ROOT / "rules")
    corpus = tmp / "corpus"
    corpus.mkdir()
    for s, d in ((175, 85), (170, 85), (169, 85), (185, 85), (120, 80), (175, 100)):
        case = {"hook": "order-sign", "patient": ADULT, "order": KETAMINE_ORDER, "given": [bp(s, d)]}
        (corpus / f"bp-{s}-{d}.json").write_text(json.dumps(request_for(loaded, "ketamine-order-sign", case, NOW)))
    (corpus / "sandbox-bp-175-85.json").write_text(json.dumps(_captured_with_bp(175, 85)))
    (corpus / "sandbox-bp-184-106.json").write_text(json.dumps(_captured_with_bp(184, 106)))
    (corpus / "not-a-request.json").write_text(json.dumps({"resourceType": "Patient", "id": "x"}))
    (corpus / "chart-175-85.json").write_text(json.dumps(_chart(175, 85)))
    (corpus / "chart-120-80.json").write_text(json.dumps(_chart(120, 80)))
    return corpus


def _chart(systolic: int, diastolic: int) -> dict[str, Any]:
    """A chart Bundle (a sample patient, re-dated to NOW) with its BP panel rewritten."""
    from protocol_engine.authoring.samples import sample

    bundle = sample("severe-hypertension", NOW)
    assert bundle is not None
    for entry in bundle["entry"]:
        for comp in entry["resource"].get("component", []):
            code = comp["code"]["coding"][0]["code"]
            if code in ("8480-6", "8462-4"):
                comp["valueQuantity"]["value"] = systolic if code == "8480-6" else diastolic
    return bundle


def _case_cards(rules: Path, strict: bool) -> dict[str, dict[str, str]]:
    """The rule-case runner's own answers (another code path than impact's): case -> {rule: indicator}."""
    loaded = load(rules)
    out = {}
    for path in find_test_files([rules]):
        results, _ = run_file(path, loaded.packset, loaded.runtimes)
        # The shipped cases pass; after the change some fail, which is the point (their cards are still compared).
        assert not strict or all(r.status != "FAIL" for r in results), [(r.name, r.problems) for r in results]
        for i, r in enumerate(results):
            out[f"{path.name} #{i + 1}"] = {c["extension"]["protocol-engine"]["rule"]: c["indicator"] for c in r.cards}
    return out


def _impact(repo: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["impact", "--rules", str(repo / "rules"), "--now", NOW.isoformat(),
                                       "--json", *args])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.output)


def test_no_change_exits_0(repo: Path, tmp_path: Path) -> None:
    code, report = _impact(repo, "--corpus", str(_corpus(tmp_path)), "--no-cases")
    assert code == 0 and report["changes"] == [] and report["declared"] == []
    assert report["evaluated"]["corpus"] == 8 + 2 * 5  # 8 requests; 2 charts with a draft order x 5 hooks
    assert report["evaluated"]["sample"] >= 30 and "case" not in report["evaluated"]


def test_a_threshold_change_lists_exactly_the_affected_requests(repo: Path, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    before_cases = _case_cards(repo / "rules", strict=True)
    rule = repo / "rules" / CI05
    original = rule.read_text()
    try:
        changed = original.replace('systolic_limit: {value: 180, unit: "mm[Hg]"',
                                   'systolic_limit: {value: 170, unit: "mm[Hg]"')
        assert changed != original
        shipped = re.search(r"^version: (\S+)", original, re.M)
        assert shipped
        rule.write_text(changed.replace(f"version: {shipped[1]}", "version: 9.0.0", 1))
        after_cases = _case_cards(repo / "rules", strict=False)
        code, report = _impact(repo, "--corpus", str(corpus))
    finally:
        rule.write_text(original)
    assert code == 1 and report["evaluated"]["case"] >= 400
    assert report["declared"] == [f"CI-05: version {shipped[1]} -> 9.0.0; systolic_limit 180 mm[Hg] -> 170 mm[Hg]"]
    listed = {(c["rule"], c["change"], c["request"].split('"')[0].strip()) for c in report["changes"]}
    # The corpus: a systolic in [170, 180) with a diastolic under 100 now gives CI-05, and CI-06 yields to it.
    for name in ("bp-175-85.json", "bp-170-85.json", "sandbox-bp-175-85.json"):
        assert ("CI-05", "appears", f"corpus {name}") in listed
        assert ("CI-06", "disappears", f"corpus {name}") in listed
    # The rule cases: exactly those whose cards the case runner sees change.
    expected_cases = {name for name in before_cases if before_cases[name] != after_cases.get(name)}
    assert expected_cases, "the change must touch at least one rule case"
    listed_cases = {c["request"].split('"')[0].strip().removeprefix("case ") for c in report["changes"]
                    if c["kind"] == "case"}
    assert listed_cases == expected_cases
    # A chart Bundle goes to every service: the one whose BP crosses the new threshold changes at order-sign.
    assert ("CI-05", "appears", "corpus chart-175-85.json at order-sign") in listed
    assert not any("chart-120-80" in request for _, _, request in listed)
    listed_requests = {c["request"].split('"')[0].strip() for c in report["changes"]
                       if not c["request"].startswith("corpus chart-")}
    assert listed_requests == {f"corpus {n}" for n in ("bp-175-85.json", "bp-170-85.json", "sandbox-bp-175-85.json")} \
        | {f"case {n}" for n in expected_cases} | {r for r in listed_requests if r.startswith("sample ")}
    for c in report["changes"]:
        if c["rule"] == "CI-05":
            assert c["before"] is None and c["after"] == "critical"
            assert "systolic_limit 180 mm[Hg] -> 170 mm[Hg]" in c["reason"] and "Hold ketamine" in c["reason"]
        else:
            assert c["rule"] == "CI-06" and c["change"] == "disappears"
            assert "still holds, now suppressed by CI-05" in c["reason"]


def test_a_site_file_on_one_side_is_compared_too(repo: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: Test\nrules:\n  DOS-01:\n    limit: 0.5\n")
    plain = tmp_path / "plain.yaml"
    plain.write_text("site: The pack's defaults\n")
    result = CliRunner().invoke(main, ["impact", "--rules", str(repo / "rules"), "--now", NOW.isoformat(),
                                       "--base-site", str(plain), "--site", str(site), "--no-cases", "--no-samples",
                                       "--corpus", str(_corpus(tmp_path))])
    # None of the corpus orders is weight-dosed above 0.5 mg/kg with a weight: the site change touches nothing here.
    assert result.exit_code == 0, result.output
    assert "site DOS-01 limit: (pack default) -> 0.5" in result.output


def test_a_bad_revision_exits_2_with_a_clear_message(repo: Path) -> None:
    result = CliRunner().invoke(main, ["impact", "--rules", str(repo / "rules"), "--base", "no-such-rev"])
    assert result.exit_code == 2 and "'no-such-rev' is not a commit" in result.output
