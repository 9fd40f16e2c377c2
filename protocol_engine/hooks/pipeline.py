"""One hook call end to end, without HTTP, in one direction; and the services a rule set compiles to.

    prepare.py   body -> Prepared       the request checked; draft orders / proposed sessions read (no I/O)
    gather.py    Prepared -> Gathered   prefetch resolved, missing data fetched through the caller's client,
                                        FHIR JSON -> Chart (adapters/fhir)
    evaluate.py  Chart -> Decision      facts, findings, cards and the trace (pure)
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from adapters.fhir import hook_request, prefetch
from adapters.fhir.client import FhirClient

from ..core import engine
from ..core.errors import RuleSetError, UnknownService
from ..core.facts import SOURCES
from ..core.model import Rule
from ..core.valuesets import SYSTEMS
from ..pack.protocol import Service
from ..pack.ruleset import Pack, RuleSet
from ..pack.site import Site
from .evaluate import Decision, decision_for, evaluate
from .gather import gather
from .prepare import ORDER_HOOKS, prepare


@dataclass
class ServiceRuntime:
    service: Service
    pack: Pack
    rules: list[Rule]
    compiled: engine.CompiledRules
    templates: dict[str, str]
    site: Site | None = None  # the site settings overlay the rules were loaded with

    def resource_types(self) -> dict[str, str]:
        """Each prefetch key of the service -> the resource type its template asks for."""
        return {key: prefetch.TYPE_OF_KEY[key] for key in self.templates}


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
        client: FhirClient | None, fhir_timeout: float = 2.0, deadline_s: float = 3.0) -> Decision:
    """Evaluate one CDS Hooks call: prepare -> gather -> evaluate, one way.

    Raises BadRequest / UnknownService / PrefetchUnavailable.
    """
    rt = runtimes.get(service_id)
    if rt is None:
        raise UnknownService(f"no service '{service_id[:64]}'")
    prepared = prepare(rt, body)
    decision = decision_for(prepared, service_id, revision, now)
    if prepared.skipped is None:
        gathered = gather(prepared, client, now, fhir_timeout, deadline_s)
        decision.sources, decision.medications = gathered.sources, gathered.medications
        evaluate(prepared, gathered.chart, now, decision)
    decision.timings["total_ms"] = round((time.perf_counter() - prepared.started) * 1000, 3)
    return decision
