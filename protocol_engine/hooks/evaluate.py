"""Stage 3 of a hook call, pure: a prepared request and its chart -> Decision (no I/O, no FHIR JSON).

Per anchor (what the call evaluates against: core/anchors.py): chart -> facts (derive), facts -> findings (the
compiled rules), findings settled once (a rule superseded by another that held is dropped), then the live ones
rendered as cards and the shadow ones kept for the trace.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core import anchors, ranges
from ..core import cards as card_renderer
from ..core.anchors import Anchor
from ..core.cards import Issued
from ..core.model import Finding, Rule
from ..core.records import Chart

if TYPE_CHECKING:
    from .gather import Gathered
    from .prepare import Prepared


@dataclass
class Decision:
    """What one hook call decided, and how: the cards as sent with what each says, the rules that fired (live)
    and would have fired (shadow), the facts they saw and the time each stage took. `trace()` is the record."""

    service: str
    hook: str
    hook_instance: str
    patient_id: str
    revision: str
    now: dt.datetime
    rules: list[str]  # every rule of the service, evaluated or not
    issued: list[Issued] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)
    fired: list[dict[str, Any]] = field(default_factory=list)  # live rules that held: rule, version, evidence
    shadow: list[dict[str, Any]] = field(default_factory=list)  # draft or not-yet-effective rules that held
    anchors: list[Anchor] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    site: dict[str, Any] | None = None
    skipped: str | None = None  # why nothing was evaluated (the answer is [])
    medications: dict[str, int] | None = None

    @property
    def cards(self) -> list[dict[str, Any]]:
        """The CDS Hooks cards, in the order they are sent."""
        return [c.json for c in self.issued]

    def trace(self) -> dict[str, Any]:
        """The decision trace (stored by the audit, shown by `?trace=1`): JSON-able, names no free text."""
        trace: dict[str, Any] = {
            "service": self.service, "hook": self.hook, "hookInstance": self.hook_instance,
            "ruleset": self.revision, "now": self.now.isoformat(), "sources": self.sources, "timings": self.timings,
            "rules": self.rules, "fired": self.fired,
            "cards": [{"uuid": c.json["uuid"], "rule": c.rule.id, "version": c.rule.version,
                       "indicator": c.json["indicator"]} for c in self.issued],
            "shadow": self.shadow}
        if self.site is not None:
            trace["site"] = self.site
        if self.skipped is not None:
            trace["skipped"] = self.skipped
        if self.medications is not None:
            trace["medications"] = self.medications
        if self.skipped is None:
            trace["anchors"] = [{"kind": a.kind, "at": a.time.isoformat(), **({"ref": a.ref} if a.ref else {})}
                                for a in self.anchors]
        return trace


def evaluate(prepared: Prepared, gathered: Gathered | None, now: dt.datetime, revision: str) -> Decision:
    """The decision of one call: every anchor of it evaluated against the gathered chart.

    With nothing gathered (prepare() found nothing to evaluate) the decision is the empty answer, saying why.
    Sets `total_ms`, counted from when prepare() began: this is the last stage.
    """
    rt, request = prepared.runtime, prepared.request
    decision = Decision(rt.service.id, rt.service.hook, request.hook_instance, request.patient_id, revision, now,
                        [r.id for r in rt.rules], site=rt.site.describe() if rt.site is not None else None,
                        skipped=prepared.skipped, timings=prepared.timings)
    if gathered is not None:
        decision.sources, decision.medications = gathered.sources, gathered.medications
        _evaluate_anchors(prepared, gathered.chart, now, decision)
    decision.timings["total_ms"] = _ms(prepared.started)
    return decision


def _evaluate_anchors(prepared: Prepared, chart: Chart, now: dt.datetime, decision: Decision) -> None:
    """Evaluate every anchor of the call against the chart, filling `decision`."""
    rt, request = prepared.runtime, prepared.request
    service, pack, timings = rt.service, rt.pack, decision.timings
    if service.anchor == "appointment":
        # One evaluation per proposed session; with none readable, only the data-quality rules speak.
        evaluations = [(a, False) for a in anchors.series(prepared.sessions)] or [(Anchor("now", now), True)]
    elif service.anchor == "encounter":
        evaluations = [(anchors.encounter(chart, request.context.get("encounterId"), now), False)]
    else:
        evaluations = [(Anchor(service.anchor, now), False)]
    decision.anchors = [a for a, _ in evaluations]
    issued: list[Issued] = []
    timings["derive_ms"] = timings["evaluate_ms"] = timings["cards_ms"] = 0.0
    for i, (anchor, data_quality_only) in enumerate(evaluations):
        t = time.perf_counter()
        anchor_facts = pack.deriver.facts(chart, now, service.hook, anchor)
        if i == 0:  # proposed appointments not recognised as sessions: said once (DQ-07, scoped to a course)
            anchor_facts += [{"t": "unrecognised-session", "refs": [u.ref], "problem": u.problem,
                              "describe": f"{u.ref}: {u.problem}", "n": len(anchor_facts) + k}
                             for k, u in enumerate(prepared.unrecognised)]
        _name_blocked_checks(anchor_facts, rt.rules)
        timings["derive_ms"] += _ms(t)
        t = time.perf_counter()
        anchor_findings = ranges.evaluate(rt.compiled, anchor_facts)
        if data_quality_only:
            anchor_findings = [f for f in anchor_findings if f.rule.category == "data-quality"]
        timings["evaluate_ms"] += _ms(t)
        t = time.perf_counter()
        settled = card_renderer.settle(anchor_findings, now)
        anchor_cards = card_renderer.render_all(settled, decision.revision, request.patient_id, rt.site,
                                                pack.protocol.name, now, pack.deriver.zone)
        if anchor.kind == "appointment":
            anchor_cards = [anchors.name_session(card, anchor, now, pack.deriver.zone) for card in anchor_cards]
        issued = anchors.merge(issued, anchor_cards)
        timings["cards_ms"] += _ms(t)
        for f in settled:
            entry = {"rule": f.rule.id, "version": f.rule.version, "evidence": f.evidence}
            if anchor.ref:
                entry["anchor"] = anchor.ref
            (decision.fired if f.rule.live(now) else decision.shadow).append(entry)
        decision.facts += anchor_facts
        decision.findings += anchor_findings
    if len(evaluations) > 1:  # cards of several sessions: critical first, as render_all orders one evaluation
        issued.sort(key=lambda c: card_renderer.RANK[c.json["indicator"]])
    decision.issued = issued


def _name_blocked_checks(facts: list[dict[str, Any]], rules: list[Rule]) -> None:
    """Fill each order-issue fact with the checks that could not run on that order (never-silent contract)."""
    for fact in facts:
        if fact.get("t") != "order-issue":
            continue
        checks = [r for r in rules if r.status == "active" and r.drugs and r.category != "data-quality"]
        if fact.get("drug") == "unidentified":
            why = "the order is not for this patient" if fact.get("foreign") else "the drug is not known"
            fact["checks"] = f"all {len(checks)} checks of this hook ({why})"
            continue
        unread = set(fact.get("unread") or ())
        if "dose" in unread:
            unread |= {"dose_per_kg", "infusion_time"}
        # Named by title: a clinician reads "Ketamine dose above the weight-based limit", not "DOS-01".
        blocked = [r.title for r in checks if fact.get("drug") in r.drugs and any(
            p.fact == "order" and any(t.field in unread for t in p.tests)
            for conj in r.conjuncts for p in (*conj.positives, *conj.negatives))]
        fact["checks"] = "; ".join(dict.fromkeys(blocked)) if blocked else "none of this hook's checks read them"


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
