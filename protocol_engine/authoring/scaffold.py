"""`protocol-engine new`: a rule file and its test file, valid from the start."""

from __future__ import annotations

import re
from pathlib import Path

from ..core.model import CATEGORIES
from ..pack.packset import pack_roots

RULE = """rule: {rule_id}
version: 0.1.0
status: draft
category: {category}
title: {title}
hooks: [order-sign]
plain:
  when: "Describe, in plain words, when this rule fires; print thresholds as settings ({{{{ lookback|duration }}}})."
  then: Describe the card the clinician sees.
settings:
  lookback: 24h
when:
  all:
    - fact: measurement
      as: reading
      measure: {measure}
      taken_ago: {{within: $lookback}}
card:
  indicator: info
  summary: "{title}: {{{{ reading.describe }}}}"
  detail: |
    Explain the finding and the action, naming the source.
citation:  # a list when there are several; the first is the card's source. Every source needs a url to go active.
  label: "Cite the source of this rule as a clinician knows it (label and section)"
notes: Draft scaffold; replace every placeholder before setting status to active.
"""

TEST = """rule: {rule_id}
now: "2026-01-01T10:00:00Z"
defaults:
  hook: order-sign
  patient: {{birthDate: -40y, gender: female}}
cases:
  - name: fires when a reading exists (replace with a real vignette)
    given:
      - {{observation: "LOINC#0000-0", at: -1h, value: "1 {{score}}"}}
    expect: {{fires: [{rule_id}]}}
  - name: silent without a reading
    expect: {{silent: [{rule_id}]}}
"""


def scaffold(rule_id: str, category: str, title: str, pack: Path | None, root: Path) -> list[Path]:
    if category not in CATEGORIES:
        raise SystemExit(f"category must be one of {', '.join(CATEGORIES)}")
    if not re.match(r"^[A-Z]{2,4}-\d{2}[a-z]?$", rule_id):
        raise SystemExit("rule id looks like CI-05, MON-12 or CI-18b")
    if pack is None:
        packs = pack_roots(root)
        if len(packs) != 1:
            raise SystemExit("several packs; choose one with --pack")
        pack = packs[0]
    from ..pack.protocol import load_protocol

    protocol, _ = load_protocol(pack / "protocol.yaml")
    measure = next(iter(protocol.measures)) if protocol and protocol.measures else "measure-name"
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]
    folder = pack / {"contraindication": "contraindications", "precaution": "contraindications",
                     "interaction": "interactions"}.get(category, category)
    folder.mkdir(parents=True, exist_ok=True)
    rule_path = folder / f"{rule_id}-{slug}.rule.yaml"
    test_path = folder / f"{rule_id}-{slug}.test.yaml"
    if rule_path.exists() or test_path.exists():
        raise SystemExit(f"{rule_path} already exists")
    rule_path.write_text(RULE.format(rule_id=rule_id, category=category, title=title, measure=measure),
                         encoding="utf-8")
    test_path.write_text(TEST.format(rule_id=rule_id), encoding="utf-8")
    return [rule_path, test_path]
