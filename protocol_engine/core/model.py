"""Frozen value types shared by the loader, compiler, engine and card renderer."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

Fact = dict[str, Any]

CATEGORIES = (
    "contraindication",
    "precaution",
    "monitoring",
    "dosing",
    "timing",
    "response",
    "interaction",
    "data-quality",
)
INDICATORS = ("info", "warning", "critical")
STATUSES = ("draft", "active", "retired")
HOOKS = ("order-select", "order-sign", "patient-view", "appointment-book", "encounter-start")


@dataclass(frozen=True)
class Location:
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class FieldTest:
    """One comparison on one fact field; `value` is already resolved from settings and units."""

    field: str
    op: str  # eq | ne | lt | lte | gt | gte | in
    value: Any
    loc: Location


@dataclass(frozen=True)
class Pattern:
    fact: str
    bind: str | None
    tests: tuple[FieldTest, ...]
    loc: Location


@dataclass(frozen=True)
class Conjunct:
    """One way for a rule to hold: every positive pattern matches and no negative pattern does.

    `names` are the names of the `any` alternatives this way goes through (templates receive them as `held`)."""

    positives: tuple[Pattern, ...]
    negatives: tuple[Pattern, ...]
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Action:
    type: str
    description: str
    resource: Any = None
    resource_id: str | None = None


@dataclass(frozen=True)
class Suggestion:
    label: str
    actions: tuple[Action, ...]
    recommended: bool = False


@dataclass(frozen=True)
class Variant:
    """Another indicator for the card when, in every way the rule held, fact `bind` has these field values."""

    bind: str
    values: tuple[tuple[str, Any], ...]
    indicator: str


@dataclass(frozen=True)
class CardTemplate:
    indicator: str
    summary: str
    detail: str
    override_reasons: tuple[tuple[str, str], ...]
    suggestions: tuple[Suggestion, ...]
    selection_behavior: str = "at-most-one"
    variants: tuple[Variant, ...] = ()


@dataclass(frozen=True)
class Citation:
    label: str
    url: str | None
    drugs: tuple[str, ...] = ()  # the drugs the source is about; () = any (a spec, a guideline on both)


@dataclass(frozen=True)
class Setting:
    """A named value a rule or protocol.yaml reads. `adjustable` ([D], `default: true`) means a site may override
    it within [minimum, maximum]; `shipped` keeps the pack's value when a site did (`site_source` says why)."""

    name: str
    value: Any
    unit: str | None = None
    adjustable: bool = False
    minimum: Any = None
    maximum: Any = None
    choices: tuple[Any, ...] = ()
    source: str = ""
    loc: Location | None = None
    overridden: bool = False
    shipped: Any = None
    site_source: str = ""

    def describe(self) -> dict[str, Any]:
        """JSON for catalogues, rule pages and traces."""
        out: dict[str, Any] = {"name": self.name, "value": self.value, "adjustable": self.adjustable}
        for key, value in (("unit", self.unit), ("min", self.minimum), ("max", self.maximum),
                           ("source", self.source or None)):
            if value is not None:
                out[key] = value
        if self.choices:
            out["choices"] = list(self.choices)
        if self.overridden:
            out["site"] = {"shipped": self.shipped, **({"source": self.site_source} if self.site_source else {})}
        return out


@dataclass(frozen=True)
class Rule:
    id: str
    version: str
    status: str
    category: str
    title: str
    hooks: tuple[str, ...]
    drugs: tuple[str, ...]
    when_text: str
    then_text: str
    settings: dict[str, Any]
    conjuncts: tuple[Conjunct, ...]
    card: CardTemplate
    citation: Citation
    suppressed_by: tuple[str, ...]
    path: str
    notes: str = ""
    facts_read: frozenset[str] = field(default_factory=frozenset)
    setting_specs: tuple[Setting, ...] = ()
    citations: tuple[Citation, ...] = ()  # all of them; `citation` is the first (the card's source)
    effective: dt.datetime | None = None  # before this instant the rule runs in shadow (traced, no card)
    setting_units: dict[str, str] = field(default_factory=dict)
    display_units: dict[str, str] = field(default_factory=dict)  # the pack's table (UCUM -> conventional)
    protocol_values: dict[str, Any] = field(default_factory=dict)  # templates' `protocol` (course, scores, order)

    def sources_for(self, drug: str | None) -> tuple[Citation, ...]:
        """The citations in the order a card about `drug` shows them: first a source about that drug (a
        ketamine IV card leads with a ketamine source, an esketamine card with the SPRAVATO label), else
        the first about no drug in particular; the others follow in the rule's order."""
        cites = self.citations or (self.citation,)
        lead = (next((c for c in cites if drug and drug in c.drugs), None)
                or next((c for c in cites if not c.drugs), None) or cites[0])
        return (lead, *(c for c in cites if c is not lead))

    def live(self, now: dt.datetime | None) -> bool:
        """Gives cards: active, and effective (when it says from when) at `now`."""
        if self.status != "active":
            return False
        return self.effective is None or now is None or now >= self.effective


@dataclass(frozen=True)
class Finding:
    """A rule that held, with every way it held (bindings of pattern names to facts)."""

    rule: Rule
    matches: tuple[dict[str, Fact], ...]
    held: tuple[tuple[str, ...], ...] = ()  # per match: the named `any` alternatives it went through

    @property
    def variant(self) -> Variant | None:
        """The first card variant that holds in every way the rule held."""
        for variant in self.rule.card.variants:
            if self.matches and all(variant.bind in m and all(m[variant.bind].get(f) == v for f, v in variant.values)
                                    for m in self.matches):
                return variant
        return None

    @property
    def indicator(self) -> str:
        variant = self.variant
        return variant.indicator if variant is not None else self.rule.card.indicator

    @property
    def evidence(self) -> list[str]:
        refs: list[str] = []
        scope: list[str] = []
        for match in self.matches:
            for name, fact in sorted(match.items()):
                target = scope if name.startswith("_") else refs
                for ref in fact.get("refs", ()):
                    if ref not in target:
                        target.append(ref)
        # A rule that fires on an absence (no BP in 24 h) is evidenced by the order it checked.
        return refs or scope
