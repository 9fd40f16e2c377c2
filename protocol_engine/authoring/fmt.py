"""`protocol-engine fmt`: one canonical key order and indentation for rule files, comments kept."""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml.comments import CommentedMap

from ..pack import yamlsource

ORDER = ("rule", "version", "status", "effective", "category", "title", "hooks", "drugs", "plain", "settings",
         "suppressed_by", "when", "card", "citation", "notes")
CARD_ORDER = ("indicator", "variants", "summary", "detail", "override_reasons", "suggestions", "selection_behavior")
SETTING_ORDER = ("value", "unit", "default", "min", "max", "choices", "source")  # settingspec.SETTING_KEYS


def format_file(path: Path) -> str | None:
    """The canonical text of a rule file, or None when it does not parse."""
    data, diags = yamlsource.load(path)
    if diags or not isinstance(data, CommentedMap):
        return None
    for key in [k for k in ORDER if k in data] + [k for k in data if k not in ORDER]:
        data.move_to_end(key)
    card = data.get("card")
    if isinstance(card, CommentedMap):
        _order(card, CARD_ORDER)
    settings = data.get("settings")
    if isinstance(settings, CommentedMap):
        for spec in settings.values():
            if isinstance(spec, CommentedMap):
                _order(spec, SETTING_ORDER)
    text = yamlsource.dump(data)
    return text if text.endswith("\n") else text + "\n"


def _order(node: CommentedMap, order: tuple[str, ...]) -> None:
    for key in [k for k in order if k in node] + [k for k in node if k not in order]:
        node.move_to_end(key)
