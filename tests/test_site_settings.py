"""Site settings: the machine-readable [D] marking in rule files and protocol.yaml, and site overlays."""

from __future__ import annotations

import re
from pathlib import Path

from protocol_engine.pack.packset import load_packset

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = Path("/work/shared/clinical/ketamine-protocol.md")


def test_every_service_default_is_marked_and_has_a_range() -> None:
    packset, diags = load_packset(ROOT / "rules")
    assert packset is not None, diags
    adjustable = [(r.id, s) for r in packset.all_rules() for s in r.setting_specs if s.adjustable]
    assert len(adjustable) >= 25
    for rule_id, s in adjustable:
        assert s.minimum is not None and s.maximum is not None, (rule_id, s.name)
    # The [D] comment of the old format is gone from every settings block: the marking is data now.
    for path in (ROOT / "rules").rglob("*.rule.yaml"):
        block = re.search(r"^settings:\n((?:  .*\n)+)", path.read_text(), re.M)
        assert block is None or "[D]" not in block.group(1), path
    protocol = packset.packs[0].protocol
    assert {"course.gap", "course.induction.ketamine.doses", "measures.blood-pressure.pairing",
            "semantics.future_tolerance", "measures.hcg.positive_at"} <= set(protocol.settings)
    # Unwrapped for the code that reads them: the same shapes as before the marking.
    assert protocol.course.gap_h == 60 * 24 and protocol.course.induction["ketamine"].doses == 6
    assert protocol.measures["hcg"].positive_at == (25.0, "[IU]/L")
    assert protocol.measures["blood-pressure"].worse == "higher"


def test_fixed_settings_keep_their_provenance_and_are_not_adjustable() -> None:
    packset, _ = load_packset(ROOT / "rules")
    assert packset is not None
    ci05 = next(r for r in packset.all_rules() if r.id == "CI-05")
    specs = {s.name: s for s in ci05.setting_specs}
    assert specs["lookback"].adjustable and specs["lookback"].value == "24h"
    assert not specs["systolic_limit"].adjustable and specs["systolic_limit"].unit == "mm[Hg]"
    assert "Ketamine Swiss product information" in specs["systolic_limit"].source
    assert ci05.settings == {"lookback": "24h", "systolic_limit": 180, "diastolic_limit": 100}
    from protocol_engine.authoring.catalogue import catalogue

    entry = next(r for r in catalogue(packset)["rules"] if r["id"] == "CI-05")
    assert entry["setting_specs"][0] == {"name": "lookback", "value": "24h", "adjustable": True, "min": "1h",
                                         "max": "72h", "source": specs["lookback"].source}


# -- site overlays -------------------------------------------------------------------------------------------------

import datetime as dt  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from conftest import ADULT, KETAMINE_ORDER, bp, request_for  # noqa: E402

from protocol_engine.cli import main  # noqa: E402
from protocol_engine.hooks.pipeline import run  # noqa: E402
from protocol_engine.pack.site import load_site  # noqa: E402
from protocol_engine.runtime.registry import Registry, load  # noqa: E402

NOW = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
GOOD = """\
site: Example Clinic (P&T 2026-11-02)
rules:
  CI-05:
    lookback: 12h
  DOS-01:
    limit: {value: 0.75, unit: mg/kg, source: "Clinic policy KP-7"}
protocols:
  ketamine:
    course.gap: 45d
"""


@pytest.fixture(scope="module")
def base() -> Any:
    packset, diags = load_packset(ROOT / "rules")
    assert packset is not None, diags
    return packset


def _site(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "where", "code", "words"), [
    ("rules:\n  CI-05:\n    lookbak: 12h\n", "3:5", "unknown-setting", "did you mean 'lookback'?"),
    ("rules:\n  CI05:\n    lookback: 12h\n", "2:3", "unknown-rule", "did you mean 'CI-05'?"),
    ("rules:\n  CI-05:\n    systolic_limit: 170\n", "3:5", "setting-fixed", "cannot change it"),
    ("rules:\n  CI-05:\n    lookback: 96h\n", "3:15", "setting-out-of-range", "(1h to 72h)"),
    ("rules:\n  CI-05:\n    lookback: 12\n", "3:15", "setting-type", "is a duration"),
    ("rules:\n  DOS-01:\n    limit: {value: 0.75, unit: mg}\n", "3:32", "setting-unit", "write mg/kg"),
    ("rules:\n  CI-05:\n    lookback: {value: 12h, unit: h}\n", "3:34", "setting-unit", "has no unit"),
    ("protocols:\n  ketamine:\n    course.gapp: 45d\n", "3:5", "unknown-setting", "did you mean 'course.gap'?"),
    ("protocols:\n  ketamine:\n    course.gap: 7d\n", "3:17", "setting-out-of-range", "(14d to 180d)"),
    ("protocols:\n  ketamine:\n    measures.blood-pressure.worse: highest\n", "3:36", "setting-choice",
     "higher, lower"),
    ("protocols:\n  ketamin:\n    course.gap: 45d\n", "2:3", "unknown-protocol", "did you mean 'ketamine'?"),
    ("site: x\nrule:\n  CI-05: {lookback: 12h}\n", "2:1", "unknown-key", "did you mean 'rules'?"),
    ("rules:\n  CI-05:\n    lookback: [12h\n", "4:1", "yaml-syntax", ""),
])
def test_a_bad_site_file_gets_positioned_compiler_style_errors(tmp_path: Path, base: Any, text: str, where: str,
                                                               code: str, words: str) -> None:
    path = _site(tmp_path, text)
    site, diags = load_site(path, base)
    assert site is None and diags
    rendered = "\n".join(d.render() for d in diags)
    assert f"{path}:{where}: error[{code}]" in rendered, rendered
    assert words in rendered and ("^" in rendered or code == "yaml-syntax")


def test_a_unit_ucum_converts_is_accepted_in_the_declared_unit(tmp_path: Path, base: Any) -> None:
    site, diags = load_site(_site(tmp_path, "rules:\n  DOS-01:\n    limit: {value: 750, unit: ug/kg}\n"), base)
    assert site is not None, diags
    assert [(o.setting, o.value, o.shipped) for o in site.overrides] == [("limit", 0.75, 1.0)]


def test_validate_checks_a_site_file(tmp_path: Path) -> None:
    bad = _site(tmp_path, "rules:\n  CI-05:\n    lookback: 96h\n")
    result = CliRunner().invoke(main, ["validate", "--no-git", "--site", str(bad), str(ROOT / "rules")])
    assert result.exit_code == 1 and "error[setting-out-of-range]" in result.output
    good = _site(tmp_path, GOOD, "good.yaml")
    result = CliRunner().invoke(main, ["validate", "--no-git", "--site", str(good), str(ROOT / "rules")])
    assert result.exit_code == 0 and "site settings 'Example Clinic (P&T 2026-11-02)': 3 change(s)" in result.output


def _dos01_case(dose: str) -> dict[str, Any]:
    # 70 kg: 56 mg is 0.8 mg/kg (above a site limit of 0.75, below the shipped 1.0)
    return {"hook": "order-sign", "patient": ADULT, "order": {**KETAMINE_ORDER, "dose": dose},
            "given": [bp(120, 80), {"observation": "LOINC#29463-7", "at": "-2d", "value": "70 kg"}]}


def _rules_fired(loaded: Any, case: dict[str, Any], tenant: str | None = None) -> dict[str, dict[str, Any]]:
    current = loaded.for_tenant(tenant)
    body = request_for(current, "ketamine-order-sign", case, NOW)
    outcome = run(current.runtimes, current.packset.revision, "ketamine-order-sign", body, NOW)
    return {c["extension"]["protocol-engine"]["rule"]: c for c in outcome.cards} | {"_trace": outcome.trace()}


def test_a_site_value_changes_the_decision_and_is_shown_in_the_card_and_trace(tmp_path: Path) -> None:
    shipped = load(ROOT / "rules")
    sited = load(ROOT / "rules", _site(tmp_path, GOOD))
    assert "DOS-01" not in _rules_fired(shipped, _dos01_case("56 mg"))
    cards = _rules_fired(sited, _dos01_case("56 mg"))
    card = cards["DOS-01"]
    site = card["extension"]["protocol-engine"]["site"]
    assert site["name"] == "Example Clinic (P&T 2026-11-02)" and len(site["revision"]) == 12
    assert {"rule": "DOS-01", "setting": "limit", "value": 0.75, "shipped": 1.0, "unit": "mg/kg",
            "source": "Clinic policy KP-7"} in site["overrides"]
    assert {"protocol": "ketamine", "setting": "course.gap", "value": "45d", "shipped": "60d"} in site["overrides"]
    assert not any(o.get("rule") == "CI-05" for o in site["overrides"])  # only what bears on this rule
    trace = cards["_trace"]["site"]
    assert trace["name"] == site["name"] and len(trace["overrides"]) == 3
    # Below both limits: silent either way (the overlay changes the threshold, nothing else).
    assert "DOS-01" not in _rules_fired(sited, _dos01_case("49 mg"))
    ci05 = next(r for r in sited.packset.all_rules() if r.id == "CI-05")
    lookback = next(s for s in ci05.setting_specs if s.name == "lookback")
    assert (lookback.value, lookback.shipped, lookback.overridden) == ("12h", "24h", True)
    assert sited.packset.packs[0].protocol.course.gap_h == 45 * 24
    assert sited.packset.revision == shipped.packset.revision  # the same rule files; the site is named apart


def test_a_fixed_setting_cannot_be_reached_through_the_protocol_section(tmp_path: Path, base: Any) -> None:
    site, diags = load_site(_site(tmp_path, "protocols:\n  ketamine:\n    scores.baseline_window: 60d\n"), base)
    assert site is None and diags[0].code == "unknown-setting" and "site-adjustable:" in diags[0].message


@pytest.mark.timeout(600)
def test_reload_applies_a_good_site_file_and_keeps_the_last_good_one_on_a_bad_one(tmp_path: Path) -> None:
    path = _site(tmp_path, GOOD)
    registry = Registry(ROOT / "rules", path)
    try:
        assert _overrides(registry) == {"lookback": "12h", "limit": 0.75, "course.gap": "45d"}
        assert not registry.changed()
        path.write_text(GOOD.replace("lookback: 12h", "lookback: 960h"))
        _touch(path)
        assert registry.changed() and registry.reload() is False
        assert registry.last_errors[0].code == "setting-out-of-range" and registry.last_errors[0].line == 4
        assert _overrides(registry)["lookback"] == "12h"  # the last good set keeps serving
        path.write_text(GOOD.replace("lookback: 12h", "lookback: 6h"))
        _touch(path)
        assert registry.reload() is True and _overrides(registry)["lookback"] == "6h" and not registry.last_errors
    finally:
        registry.stop()


def _overrides(registry: Registry) -> dict[str, Any]:
    site = registry.current.packset.site
    assert site is not None
    return {o.setting: o.value for o in site.overrides}


def _touch(path: Path) -> None:
    stamp = time.time() + 5  # a new mtime even on a coarse-grained file system
    import os

    os.utime(path, (stamp, stamp))


def test_a_service_refuses_to_start_on_a_bad_site_file(tmp_path: Path) -> None:
    from protocol_engine.core.errors import PackSetError
    from server import create_app

    path = _site(tmp_path, "rules:\n  CI-05:\n    lookback: forever\n")
    with pytest.raises(PackSetError) as info:
        create_app({"auth": "disabled", "database_url": f"sqlite:///{tmp_path}/pe.db", "reload_interval": 0,
                    "site": str(path)})
    assert info.value.diagnostics[0].code == "setting-type"


@pytest.mark.timeout(600)  # three rule sets compiled (shipped, deployment, tenant)
def test_discovery_cards_and_trace_over_http_and_per_tenant(tmp_path: Path) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    from server import create_app

    key = ec.generate_private_key(ec.SECP384R1())
    jwk = {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": "k1", "alg": "ES384"}
    _site(tmp_path, GOOD)
    _site(tmp_path, "site: Hospital B\nrules:\n  DOS-01:\n    limit: 0.6\n", "hospital-b.yaml")
    clients = tmp_path / "clients.yaml"
    clients.write_text(json.dumps({"clients": [{"iss": "https://ehr.example.org", "jwks": {"keys": [jwk]},
                                                "tenants": ["hospital-a", "hospital-b"]}],
                                   "sites": {"hospital-b": "hospital-b.yaml"}}))
    app = create_app({"auth": "required", "clients": str(clients), "site": str(tmp_path / "site.yaml"),
                      "database_url": f"sqlite:///{tmp_path}/pe.db", "reload_interval": 0})
    try:
        def call(tenant: str, method: str, path: str, body: Any = None) -> Any:
            now = int(time.time())
            tok = jwt.encode({"iss": "https://ehr.example.org", "aud": "http://localhost" + path, "exp": now + 60,
                              "iat": now, "jti": str(uuid.uuid4()), "tenant": tenant}, key, algorithm="ES384",
                             headers={"kid": "k1"})
            return app.test_client().open(path, method=method, json=body, headers={"Authorization": f"Bearer {tok}"})

        a = call("hospital-a", "GET", "/cds-services").get_json()["services"]
        b = call("hospital-b", "GET", "/cds-services").get_json()["services"]
        usage_a = next(s for s in a if s["id"] == "ketamine-order-sign")["usageRequirements"]
        usage_b = next(s for s in b if s["id"] == "ketamine-order-sign")["usageRequirements"]
        assert "Site settings 'Example Clinic (P&T 2026-11-02)'" in usage_a and "DOS-01 limit 0.75 mg/kg" in usage_a
        assert "Example Clinic (P&T 2026-11-02) / Hospital B" in usage_b and "DOS-01 limit 0.6 mg/kg" in usage_b
        assert "CI-05 lookback 12h (shipped 24h)" in usage_b  # the tenant's file sits on the deployment's
        loaded = load(ROOT / "rules")
        body = request_for(loaded, "ketamine-order-sign", _dos01_case("45 mg"))  # 0.64 mg/kg
        cards_a = call("hospital-a", "POST", "/cds-services/ketamine-order-sign", body).get_json()["cards"]
        cards_b = call("hospital-b", "POST", "/cds-services/ketamine-order-sign", body).get_json()["cards"]
        assert "DOS-01" not in {c["extension"]["protocol-engine"]["rule"] for c in cards_a}
        dos01 = next(c for c in cards_b if c["extension"]["protocol-engine"]["rule"] == "DOS-01")
        assert dos01["extension"]["protocol-engine"]["site"]["overrides"][0]["value"] == 0.6
        catalogue_b = call("hospital-b", "GET", "/rules").get_json()
        spec = next(s for r in catalogue_b["rules"] if r["id"] == "DOS-01" for s in r["setting_specs"])
        assert spec["value"] == 0.6 and spec["site"] == {"shipped": 1.0}
    finally:
        app.extensions["protocol_engine"]["audit"].flush()


def test_settings_lists_what_a_site_may_change_in_the_site_file_shape(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["settings", "--site", str(_site(tmp_path, GOOD)), "--rules",
                                       str(ROOT / "rules")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("# site settings 'Example Clinic") and "protocols:" in lines and "rules:" in lines
    assert any(line.strip().startswith("lookback: 12h") and "shipped 24h; range 1h..72h" in line for line in lines)
    assert any(line.strip().startswith("course.gap: 45d") for line in lines)
    assert not any("systolic_limit" in line for line in lines)  # fixed settings only with --all
    full = CliRunner().invoke(main, ["settings", "--all", "--rules", str(ROOT / "rules")]).output
    assert any("systolic_limit: 180" in line and "fixed by the protocol" in line for line in full.splitlines())


def test_rule_pages_show_the_site_value_in_force_with_the_shipped_value_beside_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from protocol_engine.authoring import rulepage
    from protocol_engine.cli import main

    site = _site(tmp_path, GOOD)
    sited = load(ROOT / "rules", site)
    found = rulepage.find(sited.packset, "CI-05")
    assert found is not None
    page = rulepage.build(sited.packset, sited.runtimes, *found)
    row = next(s for s in page.settings if s.name == "lookback")
    assert row.value == "12 h (site; shipped 24 h)", row.value
    assert "12 h (site; shipped 24 h)" in rulepage.to_html(page)
    # Not overridden: the shipped value, unmarked.
    assert all("site;" not in s.value for s in page.settings if s.name != "lookback")
    monkeypatch.setenv("PROTOCOL_ENGINE_SITE", str(site))
    result = CliRunner().invoke(main, ["docs", "--rules", str(ROOT / "rules"), "--out", str(tmp_path / "docs")])
    assert result.exit_code == 0, result.output
    assert "12 h (site; shipped 24 h)" in (tmp_path / "docs" / "CI-05.md").read_text()


def test_rule_pages_under_a_valid_site_run_the_cases_on_the_shipped_values(tmp_path: Path) -> None:
    """Probe 19b: a valid site file showed 20 FAIL case rows (the cases are written for the pack's own values)."""
    from protocol_engine.authoring import rulepage

    site = tmp_path / "site.yaml"
    site.write_text("site: Test\nrules:\n  TIM-01:\n    maintenance_minimum: 96h\n  CI-05:\n    lookback: 12h\n")
    sited = load(ROOT / "rules", site)
    for rule_id in ("TIM-01", "CI-05"):
        found = rulepage.find(sited.packset, rule_id)
        assert found is not None
        page = rulepage.build(sited.packset, sited.runtimes, *found, shipped=sited.shipped)
        assert page.cases and all(c.status != "FAIL" for c in page.cases), [c for c in page.cases if c.status == "FAIL"]
        assert "pack's own values" in rulepage.to_markdown(page)
    # Without a site the rule set is its own shipped one and the page says nothing about it.
    plain = load(ROOT / "rules")
    assert plain.shipped[0] is plain.packset


def test_serve_reports_a_bad_site_file_once_with_positions_and_no_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from protocol_engine.cli import main

    monkeypatch.setenv("PROTOCOL_ENGINE_SITE", str(_site(tmp_path, "rules:\n  CI-05:\n    lookback: 96h\n")))
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "site.yaml:3:15: error[setting-out-of-range]" in result.output
    assert "in the site file" in result.output
