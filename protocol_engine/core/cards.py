"""Finding -> CDS Hooks card: sandboxed templates, evidence named, one card per rule."""

from __future__ import annotations

import datetime as dt
import html
import logging
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from jinja2 import Template
from jinja2.exceptions import TemplateError

from . import display
from .model import Citation, Finding, Rule
from .templates import NOW_KEY, UNITS_KEY, ZONE_KEY, environment

if TYPE_CHECKING:
    from ..pack.site import Site

log = logging.getLogger(__name__)

SUMMARY_MAX = 139
TOPIC_SYSTEM = "urn:protocol-engine:category"
OVERRIDE_SYSTEM = "urn:protocol-engine:override-reason"
RANK = {"critical": 0, "warning": 1, "info": 2}


def settle(findings: list[Finding], now: dt.datetime | None = None) -> list[Finding]:
    """Drop findings whose rule is superseded by another rule that also held (e.g. TIM-02 over TIM-01).

    Only a live rule (one that gives a card) suppresses a live one: a draft rule, or one before its `effective`
    date, must never silence the card below it (CI-05 in shadow would otherwise hide CI-06 for 184/106).
    Shadow findings are settled against every rule that held, so the trace shows what they would do.
    """
    held = {f.rule.id for f in findings}
    held_live = {f.rule.id for f in findings if f.rule.live(now)}
    return [f for f in findings
            if not (set(f.rule.suppressed_by) & (held_live if f.rule.live(now) else held))]


def _context(finding: Finding, patient_id: str | None, now: dt.datetime | None = None,
             zone: ZoneInfo = display.UTC) -> dict[str, Any]:
    first = finding.matches[0] if finding.matches else {}
    ctx: dict[str, Any] = {name: _escaped(fact) for name, fact in first.items() if not name.startswith("_")}
    for match in finding.matches[1:]:  # a name bound only by another way the rule held is still shown
        for name, fact in match.items():
            if not name.startswith("_"):
                ctx.setdefault(name, _escaped(fact))
    ctx.setdefault("order", _escaped(first.get("_scope", {})))
    # One entry per distinct set of facts: a rule with no drug scope holds once per order in scope (`_scope`),
    # and its matches differ only there (DQ-06 listed one unreadable order once per draft order).
    distinct: dict[tuple[tuple[str, int], ...], dict[str, Any]] = {}
    for m in finding.matches:
        named = {k: v for k, v in m.items() if not k.startswith("_")}
        distinct.setdefault(tuple(sorted((k, id(v)) for k, v in named.items())), named)
    ctx["matches"] = [{k: _escaped(v) for k, v in m.items()} for m in distinct.values()]
    ctx["evidence"] = finding.evidence
    ctx["patient_id"] = patient_id or ""
    ctx["indicator"] = finding.indicator
    ctx["variant"] = finding.variant is not None  # e.g. G8: every matched medicine is on hold
    # Which named `any` alternatives held (in the first match, then the others): `{% if 'reading' in held %}`.
    ctx["held"] = list(dict.fromkeys(n for names in finding.held for n in names))
    settings = display.with_units(finding.rule.settings, finding.rule.setting_units)
    ctx["settings"] = settings
    ctx.update(settings)
    ctx["protocol"] = finding.rule.protocol_values
    ctx[UNITS_KEY] = finding.rule.display_units
    ctx[NOW_KEY] = now
    ctx[ZONE_KEY] = zone
    return ctx


def _escaped(fact: dict[str, Any]) -> dict[str, Any]:
    """Text from the chart is data, not markup: no raw HTML may reach a card."""
    return {k: html.escape(v, quote=False) if isinstance(v, str) else v for k, v in fact.items()}


@lru_cache(maxsize=4096)
def _compiled(template: str) -> Template:
    compiled = environment().from_string(template)
    # Jinja holds a template's globals as a ChainMap over the environment's and copies that key by key on
    # every render; a plain dict of the same entries (nothing changes them after the environment is built)
    # renders the same at about half the cost of a short template (a card renders 2-3).
    compiled.globals = dict(compiled.globals)
    return compiled


_BLANK_RUNS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def _render(template: str, ctx: dict[str, Any]) -> str:
    # Block tags on lines of their own leave blank lines behind: fold runs of them into one paragraph break.
    return _BLANK_RUNS.sub("\n\n", _compiled(template).render(ctx)).strip()


def _render_value(value: Any, ctx: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return _render(value, ctx) if "{{" in value or "{%" in value else value
    if isinstance(value, dict):
        return {k: _render_value(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_value(v, ctx) for v in value]
    return value


def evidence_lines(finding: Finding) -> list[str]:
    lines: list[str] = []
    for match in finding.matches:
        for name, fact in match.items():
            if name.startswith("_"):
                continue
            text = fact.get("describe")
            if text:
                line = html.escape(str(text), quote=False)
                if line not in lines:
                    lines.append(line)
    return lines


def card_drug(finding: Finding) -> str | None:
    """The drug the card is about: the order in scope, else an order or course the rule matched."""
    for match in finding.matches:
        scope = match.get("_scope") or {}
        if scope.get("drug"):
            return str(scope["drug"])
    for match in finding.matches:
        for fact in match.values():
            if fact.get("t") in ("order", "course") and fact.get("drug"):
                return str(fact["drug"])
    return None


def _link(c: Citation) -> str:
    label = html.escape(c.label, quote=False).replace("[", "\\[").replace("]", "\\]")
    return f"[{label}]({c.url})" if c.url else label


def render(finding: Finding, revision: str, patient_id: str | None, site: Site | None = None,
           pack: str = "", now: dt.datetime | None = None, zone: ZoneInfo = display.UTC) -> dict[str, Any]:
    rule: Rule = finding.rule
    tpl = rule.card
    ctx = _context(finding, patient_id, now, zone)
    try:
        summary = _render(tpl.summary, ctx)
        detail = _render(tpl.detail, ctx)
    except TemplateError as exc:
        # A template that fails on real data must still warn: fall back to the rule's plain words.
        log.error("card template failed", extra={"rule": rule.id, "error": type(exc).__name__})
        summary, detail = rule.title, rule.then_text
    summary = " ".join(summary.split())
    if len(summary) > SUMMARY_MAX:
        summary = summary[: SUMMARY_MAX - 1].rstrip() + "…"
    lines = evidence_lines(finding)
    if lines:
        detail += "\n\n**Evidence**\n\n" + "\n".join(f"- {line}" for line in lines)
    drug = card_drug(finding)
    lead, *further = rule.sources_for(drug)  # the first is the card's `source`
    # A drug's REMS programme binds that product only: not listed on another drug's card (no SPRAVATO REMS on an
    # IV ketamine card). Other sources about the other drug stay as further reading (the evidence is shared).
    further = [c for c in further if not (c.drugs and drug and drug not in c.drugs and "REMS" in c.label)]
    if further:
        detail += "\n\n**Further sources**\n\n" + "\n".join(f"- {_link(c)}" for c in further)
    detail += f"\n\n_Rule {rule.id} v{rule.version} ({rule.title})._"
    source: dict[str, Any] = {"label": lead.label,
                              "topic": {"system": TOPIC_SYSTEM, "code": rule.category,
                                        "display": rule.category.replace("-", " ")}}
    if lead.url:
        source["url"] = lead.url
    indicator = finding.indicator
    card: dict[str, Any] = {"uuid": str(uuid.uuid4()), "summary": summary, "detail": detail,
                            "indicator": indicator, "source": source}
    if indicator in ("warning", "critical") and tpl.override_reasons:
        card["overrideReasons"] = [{"system": OVERRIDE_SYSTEM, "code": code, "display": shown}
                                   for code, shown in tpl.override_reasons]
    suggestions = []
    for s in tpl.suggestions:
        actions = []
        for a in s.actions:
            action: dict[str, Any] = {"type": a.type, "description": _render_value(a.description, ctx)}
            if a.resource is not None:
                action["resource"] = _render_value(a.resource, ctx)
            if a.resource_id:
                action["resourceId"] = _render_value(a.resource_id, ctx)
            if a.type == "delete" and not action.get("resourceId"):
                continue
            actions.append(action)
        if actions:
            suggestion: dict[str, Any] = {"label": s.label, "uuid": str(uuid.uuid4()), "actions": actions}
            if s.recommended:
                suggestion["isRecommended"] = True
            suggestions.append(suggestion)
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = tpl.selection_behavior
    card["extension"] = {"protocol-engine": {"rule": rule.id, "ruleVersion": rule.version,
                                             "category": rule.category, "evidence": finding.evidence,
                                             "ruleset": revision}}
    if site is not None:  # which site settings were in force, and those that bear on this rule
        card["extension"]["protocol-engine"]["site"] = site.for_rule(rule.id, pack)
    return card


@dataclass
class Issued:
    """A card as sent (`json`, the CDS Hooks card) with the rule it speaks for and the findings it says.

    Callers read `rule` and `findings` here; they never dig the rule id back out of the card's JSON.
    """

    json: dict[str, Any]
    rule: Rule
    findings: list[Finding] = field(default_factory=list)


def render_all(settled: list[Finding], revision: str, patient_id: str | None, site: Site | None = None,
               pack: str = "", now: dt.datetime | None = None, zone: ZoneInfo = display.UTC) -> list[Issued]:
    """Cards for the live rules of settled findings, critical first; draft rules, and rules before their
    `effective` date, run in shadow and give no card."""
    live = [f for f in settled if f.rule.live(now)]
    live.sort(key=lambda f: (RANK[f.indicator], f.rule.id))
    return [Issued(render(f, revision, patient_id, site, pack, now, zone), f.rule, [f]) for f in live]
