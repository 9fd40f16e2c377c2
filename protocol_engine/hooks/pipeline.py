"""One hook call end to end, without HTTP: request -> prefetch -> facts -> findings -> cards."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from adapters.fhir import hook_request, normalise, prefetch
from adapters.fhir.client import FhirClient

from ..core import anchors, engine, ranges
from ..core import cards as card_renderer
from ..core.anchors import Anchor
from ..core.errors import RuleSetError, UnknownService
from ..core.facts import SOURCES
from ..core.model import Finding, Rule
from ..core.records import DataIssue
from ..core.valuesets import SYSTEMS
from ..pack.protocol import Service
from ..pack.ruleset import Pack, RuleSet
from ..pack.site import Site
from .sessions import proposed_sessions

ORDER_HOOKS = ("order-select", "order-sign")


@dataclass
class ServiceRuntime:
    service: Service
    pack: Pack
    rules: list[Rule]
    compiled: engine.CompiledRules
    templates: dict[str, str]
    site: Site | None = None  # the site settings overlay the rules were loaded with


@dataclass
class Outcome:
    cards: list[dict[str, Any]]
    trace: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)


def _observation_codes(pack: Pack) -> list[str]:
    codes: set[str] = set()
    for name in pack.protocol.valuesets_used():
        for code in pack.index.codes_of(name, SYSTEMS["LOINC"]):
            codes.add(f"{SYSTEMS['LOINC']}|{code}")
    return sorted(codes)


def build_runtime(ruleset: RuleSet) -> dict[str, ServiceRuntime]:
    """Compile every service once per rule-set load; refuse templates that break the spec."""
    runtimes: dict[str, ServiceRuntime] = {}
    for service_id, (service, pack) in ruleset.services.items():
        rules = pack.rules_for(service.hook)
        needed: set[str] = set()
        for rule in rules:
            for fact in rule.facts_read:
                needed |= set(SOURCES.get(fact, ()))
        needed.add("Patient")
        if service.hook not in ORDER_HOOKS:
            needed |= {"MedicationRequest", "MedicationAdministration"}  # the course gives drug and route
        if service.anchor == "encounter":
            needed.add("Encounter")
        templates = prefetch.templates_for(needed, {"Observation": _observation_codes(pack)})
        tokens = {name for name, _, kind in hook_request.CONTEXT[service.hook] if kind in ("id", "ref")}
        for key, template in templates.items():
            problems = prefetch.template_problems(template, tokens)
            if problems:
                from ..core.errors import Diagnostic

                raise RuleSetError([Diagnostic(pack.protocol.path, 1, 1, "bad-prefetch-template",
                                               f"{service_id} prefetch '{key}': {'; '.join(problems)}")])
        runtimes[service_id] = ServiceRuntime(service, pack, rules, engine.compile_service(rules), templates,
                                              ruleset.site)
    return runtimes


def discovery(runtimes: dict[str, ServiceRuntime]) -> dict[str, Any]:
    services = []
    for sid, rt in sorted(runtimes.items()):
        ids = ", ".join(r.id for r in rt.rules if r.status == "active")
        services.append({
            "hook": rt.service.hook, "id": sid, "title": rt.service.title,
            "description": rt.service.description,
            "prefetch": rt.templates,
            "usageRequirements": f"Evaluates rules {ids} of the {rt.pack.protocol.title} protocol "
                                 f"v{rt.pack.protocol.version}." + (f" {rt.site.summary()}" if rt.site else ""),
        })
    return {"services": services}


def run(runtimes: dict[str, ServiceRuntime], revision: str, service_id: str, body: Any, now: dt.datetime,
        client: FhirClient | None, fhir_timeout: float = 2.0, deadline_s: float = 3.0) -> Outcome:
    """Evaluate one CDS Hooks call. Raises BadRequest / UnknownService / PrefetchUnavailable."""
    t0 = time.perf_counter()
    rt = runtimes.get(service_id)
    if rt is None:
        raise UnknownService(f"no service '{service_id[:64]}'")
    request = hook_request.parse(body, rt.service.hook)
    timings: dict[str, float] = {}
    trace: dict[str, Any] = {"service": service_id, "hook": rt.service.hook, "hookInstance": request.hook_instance,
                             "ruleset": revision, "now": now.isoformat(), "sources": {}, "timings": timings,
                             "rules": [r.id for r in rt.rules], "fired": [], "cards": [], "shadow": []}
    if rt.site is not None:
        trace["site"] = rt.site.describe()
    pack = rt.pack
    service = rt.service
    draft = request.context.get("draftOrders")
    selections = request.context.get("selections") if rt.service.hook == "order-select" else None
    orders = None
    if service.hook in ORDER_HOOKS:
        orders = normalise.to_chart([], draft, selections, patient_id=request.patient_id,
                                    meds=normalise.medication_index([], draft, request.fhir_server))
        # Answer [] early only when every draft order in scope was identified as not a protocol drug.
        if not pack.deriver.order_in_scope(orders):
            timings["total_ms"] = _ms(t0)
            trace["skipped"] = "every draft order in scope identified; none is of this protocol's drugs"
            return Outcome([], trace)
    booking_issues: list[DataIssue] = []
    booking_foreign: list[DataIssue] = []
    unrecognised: list[DataIssue] = []
    sessions: list[Anchor] = []
    if service.anchor == "appointment":
        sessions = proposed_sessions(service, pack, request.context.get("appointments"), booking_issues,
                                     request.patient_id, booking_foreign, unrecognised)
        if not sessions and not booking_issues and not booking_foreign and not unrecognised:
            timings["total_ms"] = _ms(t0)
            trace["skipped"] = "no proposed appointment is a session of this protocol"
            return Outcome([], trace)
    t = time.perf_counter()
    resolved = prefetch.resolve(request, rt.templates, client, now, pack.protocol.fetch, fhir_timeout, deadline_s)
    trace["sources"] = resolved.sources
    timings["prefetch_ms"] = _ms(t)
    t = time.perf_counter()
    payloads = list(resolved.payloads.values())
    meds = normalise.medication_index(payloads, draft, request.fhir_server)
    wanted = normalise.references_to_fetch(payloads, draft, meds)
    if wanted:  # Medications no Bundle of the request holds: read from fhirServer, within the same deadline
        fetched = prefetch.read_all(wanted, request, client, fhir_timeout, resolved.deadline)
        meds.add_payloads(fetched)
        trace["medications"] = {"wanted": len(wanted), "fetched": len(fetched)}
        timings["medication_fetch_ms"] = _ms(t)
    if orders is not None and not orders.order_issues and not wanted:
        # The draft orders were read once already, for the quick drug check, and nothing changed since.
        chart = normalise.to_chart(payloads, None, None, pack.index.has_any, request.patient_id, meds)
        chart.draft_orders, chart.foreign = orders.draft_orders, orders.foreign + chart.foreign
    else:
        chart = normalise.to_chart(payloads, draft, selections, pack.index.has_any, request.patient_id, meds)
    chart.issues = booking_issues + chart.issues
    chart.foreign = booking_foreign + chart.foreign
    timings["parse_ms"] = _ms(t)
    if service.anchor == "appointment":
        # One evaluation per proposed session; with none readable, only the data-quality rules speak.
        evaluations = [(a, False) for a in anchors.series(sessions)] or [(Anchor("now", now), True)]
    elif service.anchor == "encounter":
        evaluations = [(anchors.encounter(chart, request.context.get("encounterId"), now), False)]
    else:
        evaluations = [(Anchor(service.anchor, now), False)]
    trace["anchors"] = [{"kind": a.kind, "at": a.time.isoformat(), **({"ref": a.ref} if a.ref else {})}
                        for a, _ in evaluations]
    facts: list[dict[str, Any]] = []
    findings: list[Finding] = []
    cards: list[dict[str, Any]] = []
    timings["derive_ms"] = timings["evaluate_ms"] = timings["cards_ms"] = 0.0
    for i, (anchor, data_quality_only) in enumerate(evaluations):
        t = time.perf_counter()
        anchor_facts = pack.deriver.facts(chart, now, service.hook, request.patient_id, anchor)
        if i == 0:  # proposed appointments not recognised as sessions: said once (DQ-07, scoped to a course)
            anchor_facts += [{"t": "unrecognised-session", "refs": [u.ref], "problem": u.problem,
                              "describe": f"{u.ref}: {u.problem}", "n": len(anchor_facts) + k}
                             for k, u in enumerate(unrecognised)]
        _name_blocked_checks(anchor_facts, rt.rules)
        timings["derive_ms"] += _ms(t)
        t = time.perf_counter()
        anchor_findings = ranges.evaluate(rt.compiled, anchor_facts)
        if data_quality_only:
            anchor_findings = [f for f in anchor_findings if f.rule.category == "data-quality"]
        timings["evaluate_ms"] += _ms(t)
        t = time.perf_counter()
        anchor_cards = card_renderer.render_all(anchor_findings, revision, request.patient_id, rt.site,
                                                 pack.protocol.name, now)
        if anchor.kind == "appointment":
            anchor_cards = [anchors.name_session(card, anchor) for card in anchor_cards]
        cards = anchors.merge(cards, anchor_cards)
        timings["cards_ms"] += _ms(t)
        for f in card_renderer.settle(anchor_findings, now):
            entry = {"rule": f.rule.id, "version": f.rule.version, "evidence": f.evidence}
            if anchor.ref:
                entry["anchor"] = anchor.ref
            (trace["fired"] if f.rule.live(now) else trace["shadow"]).append(entry)
        facts += anchor_facts
        findings += anchor_findings
    if len(evaluations) > 1:  # cards of several sessions: critical first, as render_all orders one evaluation
        cards.sort(key=lambda c: card_renderer.RANK[c["indicator"]])
    timings["total_ms"] = _ms(t0)
    trace["cards"] = [{"uuid": c["uuid"], "rule": c["extension"]["protocol-engine"]["rule"],
                       "version": c["extension"]["protocol-engine"]["ruleVersion"],
                       "indicator": c["indicator"]} for c in cards]
    return Outcome(cards, trace, findings, facts)


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
        blocked = [r.id for r in checks if fact.get("drug") in r.drugs and any(
            p.fact == "order" and any(t.field in unread for t in p.tests)
            for conj in r.conjuncts for p in (*conj.positives, *conj.negatives))]
        fact["checks"] = ", ".join(blocked) if blocked else "none of this hook's checks read them"


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)

