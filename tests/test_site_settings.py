"""Site settings: the machine-readable [D] marking in rule files and protocol.yaml, and site overlays."""

from __future__ import annotations

import re
from pathlib import Path

from protocol_engine.ruleset import load_ruleset

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = Path("/work/shared/clinical/ketamine-protocol.md")


def test_every_service_default_is_marked_and_has_a_range() -> None:
    ruleset, diags = load_ruleset(ROOT / "rules")
    assert ruleset is not None, diags
    adjustable = [(r.id, s) for r in ruleset.all_rules() for s in r.setting_specs if s.adjustable]
    assert len(adjustable) >= 30
    for rule_id, s in adjustable:
        assert s.minimum is not None and s.maximum is not None, (rule_id, s.name)
    # The [D] comment of the old format is gone from every settings block: the marking is data now.
    for path in (ROOT / "rules").rglob("*.rule.yaml"):
        block = re.search(r"^settings:\n((?:  .*\n)+)", path.read_text(), re.M)
        assert block is None or "[D]" not in block.group(1), path
    protocol = ruleset.packs[0].protocol
    assert {"course.gap", "course.induction.ketamine.doses", "measures.blood-pressure.pairing",
            "semantics.future_tolerance", "measures.hcg.positive_at"} <= set(protocol.settings)
    # Unwrapped for the code that reads them: the same shapes as before the marking.
    assert protocol.course.gap_h == 60 * 24 and protocol.course.induction["ketamine"].doses == 6
    assert protocol.measures["hcg"].positive_at == (25.0, "[IU]/L")
    assert protocol.measures["blood-pressure"].worse == "higher"


def test_fixed_settings_keep_their_provenance_and_are_not_adjustable() -> None:
    ruleset, _ = load_ruleset(ROOT / "rules")
    assert ruleset is not None
    ci05 = next(r for r in ruleset.all_rules() if r.id == "CI-05")
    specs = {s.name: s for s in ci05.setting_specs}
    assert specs["lookback"].adjustable and specs["lookback"].value == "24h"
    assert not specs["systolic_limit"].adjustable and specs["systolic_limit"].unit == "mm[Hg]"
    assert "KET-CH" in specs["systolic_limit"].source
    assert ci05.settings == {"lookback": "24h", "systolic_limit": 180, "diastolic_limit": 100}
    from protocol_engine.catalogue import catalogue

    entry = next(r for r in catalogue(ruleset)["rules"] if r["id"] == "CI-05")
    assert entry["setting_specs"][0] == {"name": "lookback", "value": "24h", "adjustable": True, "min": "1h",
                                         "max": "72h", "source": specs["lookback"].source}
