"""Every pack default is declared in protocol.yaml (issue 18): the loader refuses a missing or unreadable one with a
compiler-style error, and the engine uses exactly what is written (`future_tolerance: 0m` is zero, never 5 minutes).
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import pytest

from protocol_engine.core.anchors import Anchor
from protocol_engine.core.records import Chart, Concept, LazyObservation, ObservationRecord, Quantity
from protocol_engine.core.valuesets import SYSTEMS
from protocol_engine.pack.packset import load_pack

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)
LOINC = SYSTEMS["LOINC"]
TOLERANCE = "future_tolerance: {value: 5m,"


def pack_with(tmp_path: Path, old: str, new: str) -> Path:
    pack = tmp_path / "ketamine"
    shutil.copytree(ROOT / "rules" / "ketamine", pack)
    protocol = pack / "protocol.yaml"
    assert old in protocol.read_text(), old
    protocol.write_text(protocol.read_text().replace(old, new, 1))
    return pack


def heart_rate(minutes_after_now: float) -> LazyObservation:
    """A heart rate (LOINC 8867-4) dated a little after the call's `now` (a clock ahead of ours)."""
    at = NOW + dt.timedelta(minutes=minutes_after_now)
    record = ObservationRecord("Observation/hr", Concept(((LOINC, "8867-4", "Heart rate"),)), "final", at,
                               Quantity(72, "/min"))
    return LazyObservation("Observation/hr", "final", at, ((LOINC, "8867-4"),), lambda: record)


def kinds(pack_root: Path, minutes_after_now: float) -> set[str]:
    pack, diags, _ = load_pack(pack_root)
    assert pack is not None, diags
    found = pack.deriver.facts(Chart(observations=[heart_rate(minutes_after_now)]), NOW, "patient-view",
                               Anchor("now", NOW))
    return {f["t"] for f in found if f.get("measure") == "heart-rate"}


def test_future_tolerance_zero_means_zero(tmp_path: Path) -> None:
    """0m was read as 5 minutes (`parse_hours(...) or 5 / 60`): a reading 2 minutes ahead counted as taken."""
    pack = pack_with(tmp_path, TOLERANCE, "future_tolerance: {value: 0m,")
    assert load_pack(pack)[0].deriver.semantics.future_tol_h == 0.0  # type: ignore[union-attr]
    assert kinds(pack, 2) == {"future"}
    assert kinds(pack, 0) == {"measurement"}


def test_the_shipped_tolerance_is_the_declared_five_minutes(tmp_path: Path) -> None:
    assert kinds(ROOT / "rules" / "ketamine", 2) == {"measurement"}
    assert kinds(ROOT / "rules" / "ketamine", 6) == {"future"}


@pytest.mark.parametrize(("old", "new", "message"), [
    ("  future_tolerance: {value: 5m, default: true, min: 0m, max: 60m, source: \"pack semantics future-dated: "
     "tolerance for clock differences\"}\n", "", "semantics needs 'future_tolerance' (the engine assumes no default)"),
    ("  allergy_active_status: [active]", "  allergy_active_status: active",
     "semantics.allergy_active_status is a list of statuses"),
    ("  allergy_active_status: [active]", "  allergy_active_status: [active]\n  allergy_status: [active]",
     "semantics: 'allergy_status' is not one of"),
    ("  baseline_window: 30d\n", "", "scores needs 'baseline_window', a duration (like 30d)"),
    ("weight: {measure: weight, within: 30d}", "weight: {measure: weight, within: a month}",
     "order.weight.within: 'a month' is not a duration"),
    ("weight: {measure: weight, within: 30d}", "weight: {measure: weight}", "order.weight needs 'within'"),
    ("  Observation: 400d\n", "  Observation: 400 days\n", "fetch.Observation: '400 days' is not a duration"),
    ("    pairing: {value: 2m, default: true, min: 0m, max: 10m, source: \"pack semantics blood-pressure-sources: "
     "systolic and diastolic taken this close together are one reading\"}\n", "",
     "measures.blood-pressure needs 'pairing'"),
])
def test_a_missing_or_unreadable_default_is_a_positioned_load_error(tmp_path: Path, old: str, new: str,
                                                                     message: str) -> None:
    pack, diags, _ = load_pack(pack_with(tmp_path, old, new))
    assert pack is None
    text = [d.render() for d in diags]
    assert any(message in t for t in text), text
    assert all(re.match(r".*protocol\.yaml:\d+:\d+: error\[", t) for t in text if message in t)


def test_a_pack_without_semantics_is_told_what_to_write(tmp_path: Path) -> None:
    pack = tmp_path / "lithium"
    shutil.copytree(ROOT / "tests" / "packs" / "lithium", pack)
    protocol = pack / "protocol.yaml"
    protocol.write_text(re.sub(r"semantics:.*?\n(?=drugs:)", "", protocol.read_text(), flags=re.S))
    _, diags, _ = load_pack(pack)
    [missing] = [d for d in diags if "semantics" in d.message]
    assert "needs a 'semantics' mapping" in missing.message
    assert missing.hint is not None and "future_tolerance: 5m" in missing.hint \
        and "observation_valid_status: [final, amended, corrected]" in missing.hint


def test_a_template_reading_a_renamed_field_is_told_the_new_name(tmp_path: Path) -> None:
    """`{{ bp.age }}` (a reading's hours, not the patient's years) is refused at load with the new name."""
    pack = tmp_path / "ketamine"
    shutil.copytree(ROOT / "rules" / "ketamine", pack)
    rule = pack / "contraindications" / "CI-05-severe-hypertension.rule.yaml"
    assert "bp.taken_ago|span" in rule.read_text()
    rule.write_text(rule.read_text().replace("bp.taken_ago|span", "bp.age|span"))
    _, diags, _ = load_pack(pack)
    [renamed] = [d for d in diags if d.code == "renamed-field"]
    assert "'bp.age'" in renamed.message and "'taken_ago'" in renamed.message and renamed.hint == "write `bp.taken_ago`"
    assert renamed.path.endswith("CI-05-severe-hypertension.rule.yaml")
