"""Frozen value-set expansions and a membership index built once at load time."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

SYSTEMS = {
    "LOINC": "http://loinc.org",
    "SNOMED": "http://snomed.info/sct",
    "ICD10": "http://hl7.org/fhir/sid/icd-10-cm",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "ROUTE": "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration",
    "OBSINT": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
    "LOCAL": "urn:protocol-engine:local",
}
_ICD = SYSTEMS["ICD10"]
_CODE_RE = re.compile(r"^\s*([A-Za-z0-9]+|[a-z]+:[^#\s]+)#(\S+)(?:\s+(.*))?$")


def normalise_code(system: str, code: str) -> str:
    """ICD-10-CM compares without dots and upper-cased (protocol G6); other systems compare exactly."""
    code = code.strip()
    if system == _ICD:
        return code.replace(".", "").upper()
    return code


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

    def code_count(self) -> int:
        return len(self.codes)


class ValueSetIndex:
    """Answers 'which value sets hold this code?' in O(code length)."""

    def __init__(self, valuesets: Iterable[ValueSet]) -> None:
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
        if not system or not code:
            return set()
        norm = normalise_code(system, code)
        found = self._lookup(self._exact, self._prefix, system, norm)
        if found:
            found -= self._lookup(self._exclude_exact, self._exclude_prefix, system, norm)
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
            found |= self.members_of_code(system, code)
        for text in texts:
            found |= self.members_of_text(text)
        return found

    def codes_of(self, name: str, system: str) -> list[str]:
        vs = self.valuesets.get(name)
        return [c for s, c in vs.codes if s == system and not c.endswith("*")] if vs else []
