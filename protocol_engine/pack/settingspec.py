"""The setting format shared by rule files' `settings:` blocks and protocol.yaml.

A setting is a plain value (fixed by the protocol) or a mapping:

    lookback: {value: 24h, default: true, min: 1h, max: 72h, source: "the label says 'prior to dosing'"}

`default: true` marks a service default ([D] in the clinical catalogue) that a site may override within the
range the rule declares (`min`/`max`, in the setting's own unit; durations as durations); `choices` lists the
only values allowed; `source` says where the value comes from. Anything without `default: true` cannot be
overridden by a site.
"""

from __future__ import annotations

import re
from typing import Any

from ..core.durations import parse_hours
from ..core.errors import Diagnostic
from ..core.model import Location, Setting
from . import yamlsource

SETTING_KEYS = ("value", "unit", "default", "min", "max", "choices", "source")


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    if parse_hours(value) is not None:
        return "duration"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return "text"


def magnitude(value: Any) -> float | None:
    """Numbers as they are, durations in hours; None for anything that has no order."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return parse_hours(value)


def show(value: Any, unit: str | None = None) -> str:
    text = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
    return f"{text} {unit}" if unit else text


def problem(setting: Setting, value: Any) -> tuple[str, str] | None:
    """(code, message) when `value` cannot stand for `setting`: a different kind, outside the range, not a choice."""
    want, got = kind_of(setting.value), kind_of(value)
    if want != got:
        return "setting-type", f"'{setting.name}' is a {want} (shipped {show(setting.value, setting.unit)}); got {got}"
    if want == "list" and setting.value and value:
        inner = {kind_of(v) for v in setting.value}
        if {kind_of(v) for v in value} - inner:
            return "setting-type", f"'{setting.name}' is a list of {'/'.join(sorted(inner))} values"
    if setting.choices and value not in setting.choices:
        return "setting-choice", (f"'{setting.name}' is one of {', '.join(str(c) for c in setting.choices)}; "
                                  f"got {value}")
    size = magnitude(value)
    low, high = magnitude(setting.minimum), magnitude(setting.maximum)
    if size is not None and ((low is not None and size < low) or (high is not None and size > high)):
        bounds = " to ".join(show(b, setting.unit) for b in (setting.minimum, setting.maximum) if b is not None)
        if setting.minimum is None:
            bounds = f"at most {show(setting.maximum, setting.unit)}"
        elif setting.maximum is None:
            bounds = f"at least {show(setting.minimum, setting.unit)}"
        return "setting-out-of-range", (f"{show(value, setting.unit)} is outside the range the rule declares for "
                                        f"'{setting.name}' ({bounds})")
    return None


def is_spec(node: Any) -> bool:
    """In protocol.yaml a mapping is a setting when it says `default:` and holds a `value` (nothing else)."""
    return isinstance(node, dict) and "value" in node and "default" in node and all(k in SETTING_KEYS for k in node)


def parse(where: str, parent: Any, name: str, internal: re.Pattern[str] | None = None,
          ) -> tuple[Setting | None, list[Diagnostic]]:
    """One entry of a `settings:` block (or one marked protocol.yaml value), with positioned diagnostics.
    `internal`: marks a `source` may not show (rule pages print it for clinical reviewers)."""
    node = parent[name]
    pos = yamlsource.key_pos(parent, name)
    loc = Location(where, *pos)
    if not isinstance(node, dict):
        return Setting(str(name), yamlsource.plain(node), loc=loc), []
    diags: list[Diagnostic] = []

    def err(at: tuple[int, int], code: str, message: str, hint: str | None = None, length: int = 1) -> None:
        diags.append(Diagnostic(where, at[0], at[1], code, message, hint, length=length))

    from .shape import did_you_mean

    for key in node:
        if key not in SETTING_KEYS:
            err(yamlsource.key_pos(node, key), "unknown-key", f"setting '{name}': unknown key '{key}'",
                did_you_mean(str(key), list(SETTING_KEYS)), len(str(key)))
    if "value" not in node:
        err(pos, "schema", f"setting '{name}' needs 'value'", length=len(str(name)))
        return None, diags
    value = yamlsource.plain(node["value"])
    adjustable = node.get("default", False)
    if not isinstance(adjustable, bool):
        err(yamlsource.value_pos(node, "default"), "schema",
            f"setting '{name}': 'default' is true (a service default a site may change) or false")
        adjustable = False
    unit = node.get("unit")
    if unit is not None and not isinstance(unit, str):
        err(yamlsource.value_pos(node, "unit"), "schema", f"setting '{name}': 'unit' is a UCUM unit string")
        unit = None
    source = node.get("source", "")
    if not isinstance(source, str):
        err(yamlsource.value_pos(node, "source"), "schema", f"setting '{name}': 'source' is text")
        source = ""
    mark = internal.search(source) if internal is not None and source else None
    if mark:
        err(yamlsource.value_pos(node, "source"), "internal-label",
            f"setting '{name}': the source shows '{mark.group(0)}', an internal mark a reviewer does not know",
            "write the source as published (as the citation labels do: author, title, journal, year, or the "
            "label's name and section) and the pack's semantics by name", len(source) + 2)
    bounds: dict[str, Any] = {}
    for key in ("min", "max"):
        if key not in node:
            continue
        bound = yamlsource.plain(node[key])
        if magnitude(value) is None or kind_of(bound) != kind_of(value):
            err(yamlsource.value_pos(node, key), "setting-range",
                f"setting '{name}': '{key}' must be a {kind_of(value)} like its value, and only numbers and "
                f"durations have a range")
            continue
        bounds[key] = bound
    choices = yamlsource.plain(node.get("choices") or [])
    if not isinstance(choices, list):
        err(yamlsource.value_pos(node, "choices"), "schema", f"setting '{name}': 'choices' is a list")
        choices = []
    setting = Setting(str(name), value, unit, adjustable, bounds.get("min"), bounds.get("max"), tuple(choices),
                      " ".join(source.split()), loc)
    if "min" in bounds and "max" in bounds and (magnitude(bounds["min"]) or 0) > (magnitude(bounds["max"]) or 0):
        err(yamlsource.value_pos(node, "min"), "setting-range", f"setting '{name}': min is above max")
    elif not diags:
        found = problem(setting, value)
        if found:
            err(yamlsource.value_pos(node, "value"), found[0], f"the shipped value: {found[1]}")
    if (bounds or choices) and not adjustable:
        err(pos, "setting-range", f"setting '{name}' declares a range or choices but is not 'default: true'",
            "only site-adjustable defaults need a range", len(str(name)))
    return setting, diags  # with its problems: no cascading unknown-setting error where it is read


def overridden(setting: Setting, value: Any, note: str) -> Setting:
    """The setting as a site has it: same declaration, the site's value, the pack's value kept beside it."""
    from dataclasses import replace

    return replace(setting, value=value, overridden=True, shipped=setting.value, site_source=note)
