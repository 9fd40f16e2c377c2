"""`protocol-engine fmt`: one canonical key order and indentation for rule files, comments kept."""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml.comments import CommentedMap

from . import yamlsource

ORDER = ("rule", "version", "status", "effective", "category", "title", "hooks", "drugs", "plain", "settings",
         "suppressed_by", "when", "card", "citation", "notes")
CARD_ORDER = ("indicator", "summary", "detail", "override_reasons", "suggestions", "selection_behavior")


def format_file(path: Path) -> str | None:
    """The canonical text of a rule file, or None when it does not parse."""
    data, diags = yamlsource.load(path)
    if diags or not isinstance(data, CommentedMap):
        return None
    for key in [k for k in ORDER if k in data] + [k for k in data if k not in ORDER]:
        data.move_to_end(key)
    card = data.get("card")
    if isinstance(card, CommentedMap):
        for key in [k for k in CARD_ORDER if k in card] + [k for k in card if k not in CARD_ORDER]:
            card.move_to_end(key)
    text = yamlsource.dump(data)
    return text if text.endswith("\n") else text + "\n"
