"""A page per rule for clinical reviewers, generated from the rule files (never written by hand).

Each page says, the way the CDC opioid CDS content presents a recommendation: when the rule fires and what the
card says (the rule's plain words), its settings with their provenance and whether a site may change them,
the codes of every value set it reads, every citation with its link, and the rule's own test cases as a table
with the card each case produces. `protocol-engine docs` writes them as Markdown; the service serves them as
HTML at `/rules/<id>`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import display
from ..core.durations import parse_hours
from ..core.model import Citation, Rule
from ..hooks.pipeline import ServiceRuntime
from ..pack import yamlsource
from ..pack.packset import RULE_SUFFIX, TEST_SUFFIX, Pack, PackSet
from ..pack.zone import deployment_zone
from .testing import run_file

SAFETY = ("This page supports clinical review; it does not replace clinical judgement. The deploying organisation "
          "must review every rule, threshold and value set before use.")


@dataclass
class SettingRow:
    name: str
    value: str
    site_changeable: bool
    range: str
    source: str


@dataclass
class CaseRow:
    name: str
    hook: str
    given: str
    expected: str
    card: str
    status: str


@dataclass
class RulePage:
    rule: Rule
    protocol: str
    when: str
    then: str
    settings: list[SettingRow] = field(default_factory=list)
    valuesets: list[tuple[str, str, list[str]]] = field(default_factory=list)  # name, title, codes
    cases: list[CaseRow] = field(default_factory=list)
    cases_note: str = ""  # said when a site changed a value: the cases ran with the pack's own values


def _shown(value: Any, unit: str | None, table: dict[str, str]) -> str:
    if isinstance(value, str) and parse_hours(value) is not None:
        return display.duration(value)
    if isinstance(value, list):
        return ", ".join(_shown(v, unit, table) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return display.quantity(value, unit, table)
    return str(value)


def _settings(raw: dict[str, Any], table: dict[str, str]) -> list[SettingRow]:
    rows = []
    for name, spec in (raw.get("settings") or {}).items():
        spec = spec if isinstance(spec, dict) else {"value": spec}
        unit = spec.get("unit")
        lo, hi = spec.get("min"), spec.get("max")
        rng = " to ".join(_shown(v, unit, table) for v in (lo, hi) if v is not None) if lo is not None or (
            hi is not None) else ""
        rows.append(SettingRow(str(name), _shown(spec.get("value"), unit, table),
                               bool(spec.get("default") or spec.get("site")), rng,
                               str(spec.get("source") or spec.get("provenance") or "")))
    return rows


def _in_force(rows: list[SettingRow], rule: Rule, table: dict[str, str]) -> list[SettingRow]:
    """The rule file's rows with the value in force: a site's value, marked, with the shipped one beside it."""
    specs = {s.name: s for s in rule.setting_specs if s.overridden}
    for row in rows:
        spec = specs.get(row.name)
        if spec is not None:
            row.value = (f"{_shown(spec.value, spec.unit, table)} (site; shipped "
                         f"{_shown(spec.shipped, spec.unit, table)})")
    return rows


def _valuesets(pack: Pack, rule: Rule) -> list[tuple[str, str, list[str]]]:
    names: list[str] = []
    for conj in rule.conjuncts:
        for p in (*conj.positives, *conj.negatives):
            for t in p.tests:
                values = t.value if isinstance(t.value, list) else [t.value]
                if t.field == "valueset":
                    names += [str(v) for v in values]
                elif t.field == "measure":
                    m = pack.protocol.measures.get(str(t.value))
                    if m:
                        names += [n for n in (m.valueset, m.panel, *(x[1] for x in (m.first, m.second) if x)) if n]
    out = []
    for name in dict.fromkeys(names):
        path = pack.root / "valuesets" / f"{name}.yaml"
        data, _ = yamlsource.load(path) if path.exists() else (None, [])
        raw = yamlsource.plain(data) if isinstance(data, dict) else {}
        if not raw:  # the file name need not be the value set's name
            vs = pack.index.valuesets.get(name)
            out.append((name, vs.title if vs else "", [f"{s}#{c}" for s, c in (vs.codes if vs else [])]))
            continue
        out.append((name, str(raw.get("title", "")), [str(c) for c in raw.get("expansion") or []]))
    return out


def _given(items: list[Any]) -> str:
    parts = []
    for item in items or []:
        if not isinstance(item, dict):
            continue
        kind = next((k for k in ("observation", "condition", "medication", "administration", "allergy", "resource",
                                 "fixture")
                     if k in item), "?")
        what = item.get(kind) if kind != "resource" else (item["resource"] or {}).get("resourceType", "resource")
        extra = []
        if "value" in item:
            extra.append(str(item["value"]))
        if "components" in item:
            extra.append("/".join(str(v).split()[0] for v in item["components"].values()))
        for key in ("at", "status", "onset", "dose", "route", "verification"):
            if key in item:
                extra.append(f"{key} {item[key]}")
        parts.append(f"{kind} {what}" + (f" ({', '.join(extra)})" if extra else ""))
    return "; ".join(parts) or "nothing charted"


def _expected(expect: dict[str, Any]) -> str:
    parts = []
    for c in expect.get("cards") or []:
        parts.append(f"card {c.get('rule', '')} {c.get('indicator', '')}".strip())
    if expect.get("fires"):
        parts.append("fires " + ", ".join(expect["fires"]))
    if expect.get("silent"):
        parts.append("silent " + ", ".join(expect["silent"]))
    if expect.get("no_cards") or expect.get("cards") == []:
        parts.append("no cards")
    return "; ".join(parts)


def build(packset: PackSet, runtimes: dict[str, ServiceRuntime], pack: Pack, rule: Rule,
          shipped: tuple[PackSet, dict[str, ServiceRuntime]] | None = None) -> RulePage:
    """The page with the values in force; its test cases run on `shipped` (the pack's own values), because the
    cases beside a rule are written for those: a valid site setting must not show them as failing."""
    data, _ = yamlsource.load(Path(rule.path))
    raw = yamlsource.plain(data) if isinstance(data, dict) else {}
    page = RulePage(rule, pack.protocol.title, rule.when_text, rule.then_text,
                    _in_force(_settings(raw, pack.protocol.display_units), rule, pack.protocol.display_units),
                    _valuesets(pack, rule))
    test = Path(rule.path).with_name(Path(rule.path).name[: -len(RULE_SUFFIX)] + TEST_SUFFIX)
    if not test.exists():
        return page
    tdata, _ = yamlsource.load(test)
    traw = yamlsource.plain(tdata) if isinstance(tdata, dict) else {}
    results, _ = run_file(test, *(shipped or (packset, runtimes)))
    if shipped is not None and shipped[0] is not packset:
        page.cases_note = ("Site settings are in force; these cases are written for the pack's own values and ran "
                           "with them.")
    by_name = {r.name: r for r in results}
    defaults = traw.get("defaults") or {}
    for i, case in enumerate(traw.get("cases") or []):
        name = str(case.get("name") or case.get("todo") or f"case {i + 1}")
        result = by_name.get(name)
        card = next((c.json for c in (result.issued if result else []) if c.rule.id == rule.id), None)
        page.cases.append(CaseRow(
            name, str(case.get("hook", defaults.get("hook", "order-sign"))),
            _given(list(defaults.get("given") or []) + list(case.get("given") or [])),
            _expected(case.get("expect") or {}) if "todo" not in case else "to do",
            f"{card['indicator']}: {card['summary']}" if card else "no card from this rule",
            result.status if result else "SKIP"))
    return page


def pages(packset: PackSet, runtimes: dict[str, ServiceRuntime],
          shipped: tuple[PackSet, dict[str, ServiceRuntime]] | None = None) -> list[RulePage]:
    return [build(packset, runtimes, pack, rule, shipped) for pack in packset.packs for rule in pack.rules]


def find(packset: PackSet, rule_id: str) -> tuple[Pack, Rule] | None:
    for pack in packset.packs:
        for rule in pack.rules:
            if rule.id == rule_id:
                return pack, rule
    return None


# -- Markdown ------------------------------------------------------------------------------------
def _codes(n: int) -> str:
    return f"{n} code{'' if n == 1 else 's'}"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _link(label: str, url: str | None) -> str:
    return f"[{label}]({url})" if url else label


def to_markdown(page: RulePage) -> str:
    r = page.rule
    out = [f"# {r.id} {r.title}", "",
           f"{page.protocol} · version {r.version} · {r.status}"
           + (f" · effective {display.when(r.effective, zone=deployment_zone())}" if r.effective else "")
           + f" · {r.category} · **{r.card.indicator}** card · hooks: {', '.join(r.hooks)}"
           + (f" · drugs: {', '.join(r.drugs)}" if r.drugs else " · any order"), "",
           f"> {SAFETY}", "", "## When", "", page.when, "", "## Then", "", page.then, ""]
    if r.suppressed_by:
        out += [f"No card when {', '.join(r.suppressed_by)} also holds.", ""]
    out += ["## Settings", ""]
    if page.settings:
        out += ["| setting | value | a site may change it | allowed range | source |", "|---|---|---|---|---|"]
        out += [f"| `{s.name}` | {_cell(s.value)} | {'yes' if s.site_changeable else 'no'} | {_cell(s.range)} | "
                f"{_cell(s.source)} |" for s in page.settings]
    else:
        out.append("None: the rule has no thresholds.")
    out += ["", "## Value sets", ""]
    for name, title, codes in page.valuesets:
        out += [f"**{name}**" + (f": {title}" if title else "") + f" ({_codes(len(codes))})", "",
                ", ".join(f"`{c}`" for c in codes) or "(none)", ""]
    if not page.valuesets:
        out += ["None.", ""]
    out += ["## Sources", ""]
    out += [f"{i}. {_link(c.label, c.url)}{_leads(r, c)}" for i, c in enumerate(r.citations or (r.citation,), 1)]
    if r.notes:
        out += ["", "## Notes for reviewers", "", r.notes]
    out += ["", "## Test cases", *(["", page.cases_note] if page.cases_note else []), "",
            "| case | hook | chart | expected | card shown | result |",
            "|---|---|---|---|---|---|"]
    out += [f"| {_cell(c.name)} | {c.hook} | {_cell(c.given)} | {_cell(c.expected)} | {_cell(c.card)} | {c.status} |"
            for c in page.cases]
    out += ["", f"_Generated from `{Path(r.path).name}` by `protocol-engine docs`._", ""]
    return "\n".join(out)


def index_markdown(all_pages: list[RulePage]) -> str:
    out = ["# Rule pages", "", f"> {SAFETY}", "", "| rule | card | title | when |", "|---|---|---|---|"]
    out += [f"| [{p.rule.id}]({p.rule.id}.md) | {p.rule.card.indicator} | {_cell(p.rule.title)} | {_cell(p.when)} |"
            for p in all_pages]
    return "\n".join(out) + "\n"


# -- HTML ----------------------------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text))


def to_html(page: RulePage) -> str:
    r = page.rule
    rows = "".join(f"<tr><td><code>{_e(s.name)}</code></td><td>{_e(s.value)}</td>"
                   f"<td>{'yes' if s.site_changeable else 'no'}</td><td>{_e(s.range)}</td><td>{_e(s.source)}</td></tr>"
                   for s in page.settings) or '<tr><td colspan="5">None: the rule has no thresholds.</td></tr>'
    vsets = "".join(f"<h3>{_e(n)}{(': ' + _e(t)) if t else ''} <small>({_codes(len(c))})</small></h3>"
                    f"<p class=codes>{', '.join('<code>' + _e(x) + '</code>' for x in c)}</p>"
                    for n, t, c in page.valuesets) or "<p>None.</p>"
    sources = "".join(f'<li><a href="{_e(c.url)}" rel="noopener noreferrer">{_e(c.label)}</a>{_e(_leads(r, c))}</li>'
                      if c.url else f"<li>{_e(c.label)}{_e(_leads(r, c))}</li>" for c in (r.citations or (r.citation,)))
    cases = "".join(f"<tr><td>{_e(c.name)}</td><td>{_e(c.hook)}</td><td>{_e(c.given)}</td><td>{_e(c.expected)}</td>"
                    f"<td>{_e(c.card)}</td><td class={_e(c.status.lower())}>{_e(c.status)}</td></tr>"
                    for c in page.cases)
    note = f"<p>{_e(page.cases_note)}</p>" if page.cases_note else ""
    meta = (f"{_e(page.protocol)} · version {_e(r.version)} · {_e(r.status)}"
            + (f" · effective {_e(display.when(r.effective, zone=deployment_zone()))}" if r.effective else "")
            + f" · {_e(r.category)} · <b>{_e(r.card.indicator)}</b> card · hooks: {_e(', '.join(r.hooks))}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(r.id)} {_e(r.title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:1.5rem auto;padding:0 1rem;color:#1b1f24}}
table{{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}}td,th{{border:1px solid #d0d7de;padding:.3rem .5rem;
text-align:left;vertical-align:top}}th{{background:#f6f8fa}}.codes{{font-size:13px}}.safety{{background:#fff8c5;
padding:.5rem .75rem;border-left:4px solid #d4a72c}}.fail{{color:#b00020;font-weight:bold}}</style></head><body>
<p><a href="/">protocol-engine</a> · <a href="/rules">all rules (JSON)</a></p>
<h1>{_e(r.id)} {_e(r.title)}</h1><p>{meta}</p><p class=safety>{_e(SAFETY)}</p>
<h2>When</h2><p>{_e(page.when)}</p><h2>Then</h2><p>{_e(page.then)}</p>
{f'<p>No card when {_e(", ".join(r.suppressed_by))} also holds.</p>' if r.suppressed_by else ''}
<h2>Settings</h2><table><tr><th>setting</th><th>value</th><th>a site may change it</th><th>allowed range</th>
<th>source</th></tr>{rows}</table>
<h2>Value sets</h2>{vsets}<h2>Sources</h2><ol>{sources}</ol>
{f'<h2>Notes for reviewers</h2><p>{_e(r.notes)}</p>' if r.notes else ''}
<h2>Test cases</h2>{note}<table><tr><th>case</th><th>hook</th><th>chart</th><th>expected</th><th>card shown</th>
<th>result</th></tr>{cases}</table></body></html>
"""


def _leads(rule: Rule, citation: Citation) -> str:
    """Which drug's cards show this source first (a reviewer sees why a ketamine card cites what it cites)."""
    drugs = [d for d in (rule.drugs or ()) if rule.sources_for(d)[0] is citation]
    return f" (the source of {' and '.join(drugs)} cards)" if drugs else ""

