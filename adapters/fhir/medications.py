"""One medication resolver for MedicationRequest, MedicationStatement, MedicationAdministration and draft orders.

The drug of a resource is its `medicationCodeableConcept`, or the Medication its `medicationReference` points
to: a contained one (`#id`), one elsewhere in the request's Bundles (by `Medication/id`, by absolute fullUrl or
by `urn:uuid` fullUrl; searchset entries with `search.mode: include` included), or one read from `fhirServer`
by the caller (see `fetchable`). The Medication's concept keeps product code, ingredients and text apart so the
engine can identify the drug by product code, then ingredient, then text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from protocol_engine.core.records import Concept

_HISTORY = re.compile(r"/_history/[^/]+$")
_RELATIVE = re.compile(r"^Medication/[A-Za-z0-9\-.]{1,64}$")


def raw_concept(cc: Any) -> Concept:
    """A CodeableConcept read from JSON without validation (ill-typed codings are skipped, not guessed)."""
    if not isinstance(cc, dict):
        return Concept()
    codings = []
    for c in cc.get("coding") or ():
        if not isinstance(c, dict):
            continue
        system, code, display = c.get("system"), c.get("code"), c.get("display")
        codings.append((system if isinstance(system, str) else None, code if isinstance(code, str) else None,
                        display if isinstance(display, str) else None))
    text = cc.get("text")
    return Concept(tuple(codings), text if isinstance(text, str) else None)


@dataclass(frozen=True)
class Resolution:
    concept: Concept | None  # None: nothing of the drug could be read
    unresolved: str | None = None  # the reference that could not be resolved, if any
    medication: dict[str, Any] | None = None  # the Medication resolved to (its ingredient strengths, for doses)


class MedicationIndex:
    """Medication resources of one request, by every name a reference may use for them."""

    def __init__(self, fhir_server: str | None = None) -> None:
        self._by: dict[str, dict[str, Any]] = {}
        self._base = fhir_server.rstrip("/") + "/" if fhir_server else None

    def add(self, resource: Any, full_url: Any = None) -> None:
        if not isinstance(resource, dict) or resource.get("resourceType") != "Medication":
            return
        if isinstance(full_url, str) and full_url:
            self._by.setdefault(full_url, resource)
        rid = resource.get("id")
        if isinstance(rid, str) and rid:
            self._by.setdefault(f"Medication/{rid}", resource)

    def add_payloads(self, payloads: Iterable[Any]) -> None:
        """Every Medication in these resources/Bundles (match and include entries alike)."""
        for payload in payloads:
            if not isinstance(payload, dict):
                continue
            if payload.get("resourceType") != "Bundle":
                self.add(payload)
                continue
            for entry in payload.get("entry") or ():
                if isinstance(entry, dict):
                    self.add(entry.get("resource"), entry.get("fullUrl"))

    def _local(self, ref: str) -> str | None:
        """`Medication/x` for a reference into fhirServer (relative, or absolute on that server)."""
        ref = _HISTORY.sub("", ref)
        if self._base and ref.startswith(self._base):
            ref = ref[len(self._base):]
        return ref if _RELATIVE.match(ref) else None

    def lookup(self, ref: str) -> dict[str, Any] | None:
        if ref in self._by:
            return self._by[ref]
        local = self._local(ref)
        return self._by.get(local) if local else None

    def fetchable(self, ref: str) -> str | None:
        """The relative reference to read from fhirServer, or None (`urn:uuid`, contained, another server)."""
        if ref.startswith(("#", "urn:")) or self.lookup(ref) is not None:
            return None
        return self._local(ref)

    def resolve(self, holder: dict[str, Any]) -> Resolution:
        """The drug of a MedicationRequest/Statement/Administration (raw JSON)."""
        cc = holder.get("medicationCodeableConcept")
        if isinstance(cc, dict):
            return Resolution(raw_concept(cc))
        reference = holder.get("medicationReference")
        if not isinstance(reference, dict):
            return Resolution(None, None)
        ref = reference.get("reference")
        display = reference.get("display") if isinstance(reference.get("display"), str) else None
        medication = self._find(ref, holder) if isinstance(ref, str) else None
        if medication is None:
            # What the EHR displays is kept so that the order can still be named; the caller reports it.
            return Resolution(Concept((), display) if display else None, ref if isinstance(ref, str) else "(none)")
        return Resolution(self.concept_of(medication, holder, display), medication=medication)

    def _find(self, ref: str, holder: dict[str, Any],
              kinds: tuple[str, ...] = ("Medication",)) -> dict[str, Any] | None:
        if ref.startswith("#"):
            for contained in holder.get("contained") or ():
                if (isinstance(contained, dict) and contained.get("id") == ref[1:]
                        and contained.get("resourceType") in kinds):
                    return contained
            return None
        return self.lookup(ref)

    def concept_of(self, medication: dict[str, Any], holder: dict[str, Any], display: str | None = None,
                   depth: int = 0) -> Concept:
        """Product code and text of a Medication, with its ingredients (itemCodeableConcept / itemReference)."""
        code = raw_concept(medication.get("code"))
        ingredients: list[Concept] = []
        for ingredient in medication.get("ingredient") or ():
            if not isinstance(ingredient, dict):
                continue
            if isinstance(ingredient.get("itemCodeableConcept"), dict):
                ingredients.append(raw_concept(ingredient["itemCodeableConcept"]))
                continue
            item = ingredient.get("itemReference")
            if not isinstance(item, dict):
                continue
            target = None
            if isinstance(item.get("reference"), str) and depth < 1:
                kinds = ("Medication", "Substance")
                ref = item["reference"]
                target = self._find(ref, medication, kinds) or self._find(ref, holder, kinds)
            if target is not None:
                ingredients.append(self.concept_of(target, holder, None, depth + 1))
            elif isinstance(item.get("display"), str):
                ingredients.append(Concept((), item["display"]))
        return Concept(code.codings, code.text or display, tuple(ingredients))
