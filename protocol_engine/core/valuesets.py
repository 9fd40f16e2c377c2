"""Frozen value-set expansions and a membership index built once at load time."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SYSTEMS = {
    "LOINC": "http://loinc.org",
    "SNOMED": "http://snomed.info/sct",
    "ICD10": "http://hl7.org/fhir/sid/icd-10-cm",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "ROUTE": "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration",
    "OBSINT": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
    "LOCAL": "urn:protocol-engine:local",
    "NDC": "http://hl7.org/fhir/sid/ndc",
}
_ICD = SYSTEMS["ICD10"]
# One code system, several names: the HL7 canonical URI and the HL7 v3 OID (with or without `urn:oid:`,
# as CDA-derived and older FHIR interfaces send it). Every coding is looked up under the canonical URI.
# WHO ICD-10 shares its codes with ICD-10-CM (the clinical modification extends it), so a WHO code is
# looked up as the ICD-10-CM code it is; codes only ICD-10-CM defines are never matched from WHO data.
SYSTEM_ALIASES = {
    "2.16.840.1.113883.6.88": SYSTEMS["RXNORM"],
    "2.16.840.1.113883.6.1": SYSTEMS["LOINC"],
    "2.16.840.1.113883.6.96": SYSTEMS["SNOMED"],
    "2.16.840.1.113883.6.90": _ICD,
    "2.16.840.1.113883.6.3": _ICD,
    "http://hl7.org/fhir/sid/icd-10": _ICD,
    "2.16.840.1.113883.6.69": "http://hl7.org/fhir/sid/ndc",
    "2.16.840.1.113883.6.8": "http://unitsofmeasure.org",
    "2.16.840.1.113883.5.112": SYSTEMS["ROUTE"],
    "2.16.840.1.113883.5.83": SYSTEMS["OBSINT"],
}


def canonical_system(system: str) -> str:
    """The canonical URI of a code system written as URI, `urn:oid:` OID or bare OID (trailing `/` ignored)."""
    key = system.strip()
    if key.startswith("urn:oid:"):
        key = key[8:]
    return SYSTEM_ALIASES.get(key) or SYSTEM_ALIASES.get(key.rstrip("/")) or (
        key.rstrip("/") if key.endswith("/") and "://" in key else system)
_CODE_RE = re.compile(r"^\s*([A-Za-z0-9]+|[a-z]+:[^#\s]+)#(\S+)(?:\s+(.*))?$")


_NDC = "http://hl7.org/fhir/sid/ndc"


def normalise_code(system: str, code: str) -> str:
    """ICD-10-CM compares without dots and upper-cased (protocol G6); NDCs as 11 digits (5-4-2, the HIPAA form
    EHRs send, from any hyphenated 10-digit layout: 4-4-2, 5-3-2, 5-4-1); other systems compare exactly."""
    code = code.strip()
    if system == _ICD:
        return code.replace(".", "").upper()
    if system == _NDC and code.count("-") == 2:
        labeler, product, package = code.split("-")
        if labeler.isdigit() and product.isdigit() and package.isdigit():
            return labeler.zfill(5) + product.zfill(4) + package.zfill(2)
    return code


# Names people read for code systems a card may show a bare code of.
SYSTEM_NAMES = {SYSTEMS["LOINC"]: "LOINC", SYSTEMS["SNOMED"]: "SNOMED CT", SYSTEMS["ICD10"]: "ICD-10-CM",
                SYSTEMS["RXNORM"]: "RxNorm", SYSTEMS["NDC"]: "NDC", SYSTEMS["ROUTE"]: "HL7 route"}
# The catalogue's source marks at the end of a value-set entry ("[V VSAC 2.16...]", "[U]", "[V HL7, V openFDA]"),
# which are provenance for authors, not part of the name a clinician reads; brand brackets ("[Xanax]") stay.
_SOURCE_MARK = re.compile(r"(\s*\[(?:[VUSD](?:\s[^\]]*)?|[VUSD],[^\]]*)\])+\s*$")


def system_name(system: str | None) -> str:
    if not system:
        return "code"
    canonical = canonical_system(system)
    return SYSTEM_NAMES.get(canonical, canonical)


def parse_code(text: str) -> tuple[str, str, str | None] | None:
    """`LOINC#8480-6 Systolic blood pressure` -> (system url, code, display)."""
    found = _CODE_RE.match(text)
    if not found:
        return None
    short, code, display = found.groups()
    system = SYSTEMS.get(short.upper(), short)
    if "://" not in system and not system.startswith("urn:"):
        return None
    return system, code, display


@dataclass
class ValueSet:
    name: str
    version: str
    title: str
    codes: list[tuple[str, str]] = field(default_factory=list)  # (system, normalised code or prefix*)
    excludes: list[tuple[str, str]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    displays: dict[tuple[str, str], str] = field(default_factory=dict)  # as written, source marks removed on read


# Distinct (system, code) answers remembered per index (so per rule-set load): a 20-Observation call
# asked the same few codes 158 times. Codes, not patients: a code says nothing about whose chart it
# came from. The bound only stops a stream of made-up codes from growing a worker without limit.
CODE_MEMO_MAX = 50_000


class ValueSetIndex:
    """Answers 'which value sets hold this code?' in O(code length), then from memory."""

    def __init__(self, valuesets: Iterable[ValueSet]) -> None:
        self._code_memo: dict[tuple[str, str], frozenset[str]] = {}
        self.valuesets = {vs.name: vs for vs in valuesets}
        self._exact: dict[tuple[str, str], set[str]] = {}
        self._prefix: dict[tuple[str, str], set[str]] = {}
        self._exclude_exact: dict[tuple[str, str], set[str]] = {}
        self._exclude_prefix: dict[tuple[str, str], set[str]] = {}
        terms: dict[str, set[str]] = {}
        for vs in self.valuesets.values():
            for target, excl, entries in (
                ((self._exact, self._prefix), False, vs.codes),
                ((self._exclude_exact, self._exclude_prefix), True, vs.excludes),
            ):
                del excl
                for system, code in entries:
                    if code.endswith("*"):
                        target[1].setdefault((system, code[:-1]), set()).add(vs.name)
                    else:
                        target[0].setdefault((system, code), set()).add(vs.name)
            for term in vs.text:
                terms.setdefault(term.lower(), set()).add(vs.name)
        self._terms = terms
        # One alternation for every text term: a single scan per text, longest terms first.
        alternation = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
        self._text_re = re.compile(rf"\b(?:{alternation})\b", re.IGNORECASE) if terms else None

    def _lookup(self, exact: dict[tuple[str, str], set[str]], prefix: dict[tuple[str, str], set[str]],
                system: str, code: str) -> set[str]:
        found = set(exact.get((system, code), ()))
        if prefix:
            for end in range(1, len(code) + 1):
                found |= prefix.get((system, code[:end]), set())
        return found

    def members_of_code(self, system: str | None, code: str | None) -> set[str]:
        return set(self._code_members(system, code))

    def _code_members(self, system: str | None, code: str | None) -> frozenset[str]:
        if not system or not code or not isinstance(system, str) or not isinstance(code, str):
            return frozenset()
        key = (system, code)
        found = self._code_memo.get(key)
        if found is None:
            canonical = canonical_system(system)
            norm = normalise_code(canonical, code)
            members = self._lookup(self._exact, self._prefix, canonical, norm)
            if members:
                members -= self._lookup(self._exclude_exact, self._exclude_prefix, canonical, norm)
            found = frozenset(members)
            if len(self._code_memo) >= CODE_MEMO_MAX:
                self._code_memo.clear()
            self._code_memo[key] = found
        return found

    def members_of_text(self, text: str | None) -> set[str]:
        if not text or self._text_re is None:
            return set()
        found: set[str] = set()
        for match in self._text_re.finditer(text):
            found |= self._terms[match.group(0).lower()]
        return found

    def has_any(self, codings: Iterable[tuple[str | None, str | None]], texts: Iterable[str | None]) -> bool:
        """Whether a concept belongs to any value set (cheap pre-check before validating a resource)."""
        return bool(self.members(codings, texts))

    def members(self, codings: Iterable[tuple[str | None, str | None]], texts: Iterable[str | None]) -> set[str]:
        """Value sets a concept belongs to: by any coding, else by the text fallback of those sets."""
        found: set[str] = set()
        for system, code in codings:
            found |= self._code_members(system, code)
        for text in texts:
            found |= self.members_of_text(text)
        return found

    def display_of(self, system: str | None, code: str | None) -> str | None:
        """The name a value set gives a code (first set that names it), its source marks removed."""
        if not system or not code:
            return None
        canonical = canonical_system(system)
        key = (canonical, normalise_code(canonical, code))
        for vs in self.valuesets.values():
            shown = vs.displays.get(key)
            if shown:
                return _SOURCE_MARK.sub("", shown).strip() or None
        return None

    def label(self, concept: Any) -> str:
        """A concept as a card shows it: 'code display' as sent; a code sent without a display gets the value
        set's name for it, else its system's name ('RxNorm 308048'), never a bare number."""
        for system, code, shown in concept.codings:
            if code:
                if shown:
                    return f"{code} {shown}"
                named = self.display_of(system, code)
                return f"{code} {named}" if named else f"{system_name(system)} {code}"
        return str(concept.label())

    def codes_of(self, name: str, system: str) -> list[str]:
        vs = self.valuesets.get(name)
        return [c for s, c in vs.codes if s == system and not c.endswith("*")] if vs else []
