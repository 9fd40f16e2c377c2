"""The services a pack set compiles to, and one hook call offline; the stages of a call, one way:

    prepare.py   body -> Prepared               the request checked; draft orders / proposed sessions read (no I/O)
    gather.py    Prepared -> Gathered | None    prefetch resolved, missing data fetched through the caller's client
                                                within the caller's deadline, FHIR JSON -> Chart (adapters/fhir)
    evaluate.py  Gathered -> Decision           facts, findings, cards and the trace (pure)

The HTTP view (http/cds.py) calls the three itself with its FHIR client; `run` below calls them with none.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from adapters.fhir import hook_request, prefetch

from ..core import engine
from ..core.errors import PackSetError, UnknownService
from ..core.facts import SOURCES
from ..core.model import Rule
from ..core.valuesets import SYSTEMS
from ..pack.packset import Pack, PackSet
from ..pack.protocol import Service
from ..pack.site import Site
from .evaluate import Decision, evaluate
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


def build_runtime(packset: PackSet) -> dict[str, ServiceRuntime]:
    """Compile every service once per rule-set load; refuse templates that break the spec."""
    runtimes: dict[str, ServiceRuntime] = {}
    for service_id, (service, pack) in packset.services.items():
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

                raise PackSetError([Diagnostic(pack.protocol.path, 1, 1, "bad-prefetch-template",
                                               f"{service_id} prefetch '{key}': {'; '.join(problems)}")])
        runtimes[service_id] = ServiceRuntime(service, pack, rules, engine.compile_service(rules), templates,
                                              packset.site)
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


def run(runtimes: dict[str, ServiceRuntime], revision: str, service_id: str, body: Any,
        now: dt.datetime) -> Decision:
    """One CDS Hooks call offline: prepare -> gather (the prefetch alone, no client: no I/O) -> evaluate.

    What the rule-case runner, the CLI (`explain`, `impact`) and the tests call. The HTTP view (http/cds.py) calls
    the same three stages itself, giving gather() its FHIR client and deadline. Raises BadRequest / UnknownService
    / PrefetchUnavailable.
    """
    rt = runtimes.get(service_id)
    if rt is None:
        raise UnknownService(f"no service '{service_id[:64]}'")
    prepared = prepare(rt, body)
    return evaluate(prepared, gather(prepared, None, now), now, revision)
