"""Rule authoring tools: validate (against deliberately broken files), fmt, explain, new, list, reload."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ADULT, KETAMINE_ORDER, ROOT, bp, request_for

from protocol_engine.cli import main
from protocol_engine.pack.packset import load_packset

BROKEN = Path(__file__).resolve().parent / "broken_rules"


def _pack(tmp_path: Path, *rule_files: Path) -> Path:
    pack = tmp_path / "rules" / "ketamine"
    pack.mkdir(parents=True)
    shutil.copy(ROOT / "rules" / "ketamine" / "protocol.yaml", pack / "protocol.yaml")
    shutil.copytree(ROOT / "rules" / "ketamine" / "valuesets", pack / "valuesets")
    (pack / "monitoring").mkdir()
    for f in rule_files:
        shutil.copy(f, pack / "monitoring" / f.name)
    return pack


@pytest.mark.parametrize("broken", sorted(BROKEN.glob("*.rule.yaml")), ids=lambda p: p.stem)
def test_validate_points_at_the_right_line_and_column(tmp_path: Path, broken: Path) -> None:
    expect = re.match(r"# expect: (\d+):(\d+) (\S+)(?: (.*))?", broken.read_text().splitlines()[0])
    assert expect, "fixture needs an '# expect: LINE:COL code [hint]' header"
    line, col, code, hint = int(expect[1]), int(expect[2]), expect[3], expect[4]
    pack = _pack(tmp_path, broken)
    result = CliRunner().invoke(main, ["validate", "--no-git", str(pack)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    wanted = f"{pack / 'monitoring' / broken.name}:{line}:{col}: error[{code}]"
    assert wanted in result.output, result.output
    if hint:
        assert hint in result.output
    assert re.search(r"^\s+\d+ \| ", result.output, re.M) and "^" in result.output  # the line and a caret


def test_validate_reports_every_problem_at_once(tmp_path: Path) -> None:
    pack = _pack(tmp_path, *sorted(BROKEN.glob("*.rule.yaml")))
    result = CliRunner().invoke(main, ["validate", "--no-git", str(pack)])
    codes = set(re.findall(r"error\[([a-z-]+)\]", result.output))
    assert len(codes) >= 12, codes


def test_validate_requires_firing_and_silent_cases(tmp_path: Path) -> None:
    pack = _pack(tmp_path)
    src = ROOT / "rules" / "ketamine" / "monitoring"
    shutil.copy(src / "MON-03-heart-rate.rule.yaml", pack / "monitoring")
    test = (src / "MON-03-heart-rate.test.yaml").read_text()
    (pack / "monitoring" / "MON-03-heart-rate.test.yaml").write_text(test.replace("silent: [MON-03]", "silent: []"))
    result = CliRunner().invoke(main, ["validate", "--no-git", str(pack)])
    assert result.exit_code == 1 and "error[missing-negative-case]" in result.output
    (pack / "monitoring" / "MON-03-heart-rate.test.yaml").unlink()
    result = CliRunner().invoke(main, ["validate", "--no-git", str(pack)])
    assert "error[missing-test-file]" in result.output


def test_validate_catches_a_changed_rule_whose_version_was_not_bumped(tmp_path: Path) -> None:
    pack = _pack(tmp_path)
    src = ROOT / "rules" / "ketamine" / "monitoring"
    for name in ("MON-03-heart-rate.rule.yaml", "MON-03-heart-rate.test.yaml"):
        shutil.copy(src / name, pack / "monitoring")
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    rule = pack / "monitoring" / "MON-03-heart-rate.rule.yaml"
    rule.write_text(rule.read_text().replace("high: {value: 120", "high: {value: 130"))
    result = CliRunner().invoke(main, ["validate", str(pack)])
    assert result.exit_code == 1 and "error[version-not-bumped]" in result.output
    rule.write_text(re.sub(r"(?m)^version: .*$", "version: 1.1.0", rule.read_text()))
    assert CliRunner().invoke(main, ["validate", str(pack)]).exit_code == 0


def test_the_shipped_rules_validate_and_match_the_json_schema() -> None:
    from jsonschema import Draft202012Validator

    from protocol_engine.pack import yamlsource

    result = CliRunner().invoke(main, ["validate", "--no-git", str(ROOT / "rules")])
    assert result.exit_code == 0, result.output
    schemas = {suffix: Draft202012Validator(json.loads((ROOT / "protocol_engine" / "schema" / f"{suffix}.schema.json")
                                                       .read_text())) for suffix in ("rule", "test")}
    for path in (ROOT / "rules").rglob("*.yaml"):
        kind = path.name.split(".")[-2]
        if kind in schemas:
            data, _ = yamlsource.load(path)
            errors = [e.message for e in schemas[kind].iter_errors(yamlsource.plain(data))]
            assert not errors, (path, errors)


def test_test_command_prints_pass_fail_and_a_closing_count(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["test", str(ROOT / "rules"), "--rule", "CI-05"])
    assert result.exit_code == 0
    assert re.search(r"^PASS CI-05 ", result.output, re.M)
    assert re.search(r"^\d+ passed, 0 failed$", result.output.strip().splitlines()[-1])
    pack = _pack(tmp_path)
    src = ROOT / "rules" / "ketamine" / "monitoring"
    shutil.copy(src / "MON-03-heart-rate.rule.yaml", pack / "monitoring")
    test = (src / "MON-03-heart-rate.test.yaml").read_text().replace('value: "130 /min"', 'value: "110 /min"')
    (pack / "monitoring" / "MON-03-heart-rate.test.yaml").write_text(test + "  - todo: fires on an irregular rhythm\n")
    result = CliRunner().invoke(main, ["test", str(pack)])
    assert result.exit_code == 1
    assert "FAIL MON-03 fires on HR 130" in result.output and "actual cards:" in result.output
    assert "SKIP MON-03 fires on an irregular rhythm" in result.output
    assert re.search(r"\d+ passed, 1 failed, 1 skipped$", result.output.strip())


def test_fmt_is_idempotent_and_keeps_comments(tmp_path: Path) -> None:
    pack = _pack(tmp_path)
    target = pack / "monitoring" / "MON-03.rule.yaml"
    original = (ROOT / "rules" / "ketamine" / "monitoring" / "MON-03-heart-rate.rule.yaml").read_text()
    lines = original.splitlines()
    # Move `citation` to the top and `title` to the end: fmt must restore the canonical order.
    shuffled = "\n".join([l for l in lines if l.startswith("title:")] + [l for l in lines if not l.startswith("title:")])
    target.write_text(shuffled + "\n")
    runner = CliRunner()
    assert runner.invoke(main, ["fmt", "--check", str(target)]).exit_code == 1
    assert runner.invoke(main, ["fmt", str(target)]).exit_code == 0
    once = target.read_text()
    assert runner.invoke(main, ["fmt", "--check", str(target)]).exit_code == 0
    assert runner.invoke(main, ["fmt", str(target)]).exit_code == 0 and target.read_text() == once
    assert "# yaml-language-server" in once and 'source: "ClinicalTrials.gov NCT05803551 eligibility criteria' in once and once.index("rule:") < once.index("title:") < once.index("when:")
    for path in (ROOT / "rules").rglob("*.rule.yaml"):
        assert runner.invoke(main, ["fmt", "--check", str(path)]).exit_code == 0, path


def test_explain_shows_each_condition_with_the_values_it_saw(tmp_path: Path, loaded: Any) -> None:
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(172, 104, id="bp-1")]})
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(body))
    result = CliRunner().invoke(main, ["explain", "--request", str(request_file)])
    assert result.exit_code == 0, result.output
    assert re.search(r"CI-05 v[\d.]+ \[critical\] Severe hypertension before a ketamine or esketamine dose: FIRED",
                     result.output)
    assert "[yes] must match: measurement where measure = blood-pressure" in result.output
    assert "saw BP 172/104 mmHg" in result.output and "Observation/bp-1" in result.output
    assert re.search(r"CI-06 .*: silent", result.output)
    assert "near miss" in result.output
    assert re.search(r"critical\s+CI-05", result.output)


def test_new_scaffolds_a_valid_rule_and_list_prints_the_catalogue(tmp_path: Path) -> None:
    pack = _pack(tmp_path)
    result = CliRunner().invoke(main, ["new", "MON-20", "--category", "monitoring", "--title", "Temperature",
                                       "--pack", str(pack)])
    assert result.exit_code == 0, result.output
    assert (pack / "monitoring" / "MON-20-temperature.rule.yaml").exists()
    packset, diags = load_packset(pack)
    assert packset is not None, [d.render() for d in diags]
    listing = CliRunner().invoke(main, ["list", "--rules", str(ROOT / "rules")])
    assert listing.exit_code == 0 and re.search(r"^CI-05\s+\d+\.\d+\.\d+\s+active\s+contraindication", listing.output, re.M)
    assert len(listing.output.strip().splitlines()) >= 67


def _wait(condition: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_broken_edit_never_takes_a_running_service_down(tmp_path: Path, loaded: Any) -> None:
    from server import create_app

    rules = tmp_path / "live"
    shutil.copytree(ROOT / "rules", rules)
    app = create_app({"auth": "disabled", "rules": str(rules), "database_url": f"sqlite:///{tmp_path}/pe.db",
                      "reload_interval": 0.2})
    client = app.test_client()
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(172, 104)]})
    first = client.post("/cds-services/ketamine-order-sign", json=body).json["cards"]
    revision = first[0]["extension"]["protocol-engine"]["ruleset"]
    registry = app.extensions["protocol_engine"]["registry"]
    rule = rules / "ketamine" / "contraindications" / "CI-05-severe-hypertension.rule.yaml"
    good = rule.read_text()
    rule.write_text(good.replace("valueset: hypertensive-crisis", "valueset: hypertensive-crises"))
    _wait(lambda: bool(registry.last_errors))  # the watcher sees the change, validates, refuses it
    assert registry.last_errors and registry.last_errors[0].code == "unknown-valueset"
    assert registry.last_errors[0].line == good[: good.index("valueset: hypertensive-crisis")].count("\n") + 1
    again = client.post("/cds-services/ketamine-order-sign", json=body).json["cards"]
    assert [c["extension"]["protocol-engine"]["rule"] for c in again] == [
        c["extension"]["protocol-engine"]["rule"] for c in first]
    assert again[0]["extension"]["protocol-engine"]["ruleset"] == revision
    assert client.get("/readyz").json["lastReloadErrors"] == 1
    rule.write_text(re.sub(r"(?m)^version: .*$", "version: 9.0.0", good.replace("(limit {{", "(at or above {{")))
    _wait(lambda: registry.current.packset.revision != revision)
    fixed = client.post("/cds-services/ketamine-order-sign", json=body).json["cards"]
    ci05 = next(c for c in fixed if c["extension"]["protocol-engine"]["rule"] == "CI-05")
    assert ci05["extension"]["protocol-engine"]["ruleset"] != revision
    assert ci05["extension"]["protocol-engine"]["ruleVersion"] == "9.0.0"
    assert "at or above 180/100 mmHg" in ci05["summary"]
    registry.stop()
    app.extensions["protocol_engine"]["audit"].flush()
