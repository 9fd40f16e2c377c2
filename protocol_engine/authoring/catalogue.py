"""The rule catalogue as data: for `protocol-engine list`, `GET /rules` and the web page."""

from __future__ import annotations

from typing import Any

from ..pack.packset import PackSet


def catalogue(packset: PackSet) -> dict[str, Any]:
    rules = []
    for pack in packset.packs:
        for r in sorted(pack.rules, key=lambda r: _sort_key(r.id)):
            rules.append({
                "id": r.id, "version": r.version, "status": r.status, "category": r.category, "title": r.title,
                "hooks": list(r.hooks), "drugs": list(r.drugs), "indicator": r.card.indicator,
                "when": r.when_text, "then": r.then_text, "settings": r.settings,
                "setting_specs": [s.describe() for s in r.setting_specs],
                "citation": {"label": r.citation.label, **({"url": r.citation.url} if r.citation.url else {})},
                "citations": [{"label": c.label, **({"url": c.url} if c.url else {})} for c in r.citations],
                "effective": r.effective.isoformat() if r.effective else None, "page": f"/rules/{r.id}",
                "notes": r.notes, "protocol": pack.protocol.name, "path": r.path,
            })
    return {"ruleset": packset.revision, "rules": rules,
            # protocol.yaml's own settings (course gap, induction, ...) and the site settings in force, for the
            # rule pages: value, range, source, and the shipped value where a site changed it
            "protocol_settings": {p.protocol.name: [s.describe() for s in p.protocol.settings.values()]
                                  for p in packset.packs},
            "site": packset.site.describe() if packset.site else None}


def _sort_key(rule_id: str) -> tuple[str, int, str]:
    prefix, _, rest = rule_id.partition("-")
    digits = "".join(ch for ch in rest if ch.isdigit())
    return prefix, int(digits or 0), rest
