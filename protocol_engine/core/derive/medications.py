"""Medicines and the chart's clinical lists: a medication's protocol drug and route, and the `condition`,
`medication` and `allergy` facts (G6-G8, G11). Matched by code (and a medicine's text), never by free-text diagnoses.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..model import Fact
from ..records import Chart, Concept, DataIssue, MedicationRecord
from ..valuesets import ValueSetIndex
from .common import Semantics, elapsed_range, hours_since

if TYPE_CHECKING:
    from ...pack.protocol import Protocol


def name_of(concept: Concept, index: ValueSetIndex) -> str:
    """The medicine's name without its code: the first display, else the text, else the value set's name for its
    code, else the code with its system's name ('RxNorm 308048'), never a bare number."""
    for _system, _code, shown in concept.codings:
        if shown:
            return shown
    if concept.text:
        return concept.text
    for system, code, _ in concept.codings:
        named = index.display_of(system, code)
        if named:
            return named
    return index.label(concept)


class Medicines:
    """Which protocol drug and route a medicine is, and the chart's conditions, medicines and allergies as facts."""

    def __init__(self, protocol: Protocol, index: ValueSetIndex, semantics: Semantics) -> None:
        self.p = protocol
        self.index = index
        self.sem = semantics

    def drug_of(self, concept: Concept) -> str | None:
        """The protocol drug of a medication: by product code, else by ingredient code, else by text."""
        for codes, texts in concept.tiers():
            members = self.index.members(codes, texts)
            for drug, vs in self.p.drugs.items():
                if vs in members:
                    return drug
        return None

    def route_label(self, route: str) -> str:
        """The route as clinicians write it ("IV", "intranasal"): the pack's `routes.<name>.label`."""
        if route == "unspecified":
            return "(route not stated)"
        if route == "other":
            return "(route not in the protocol)"
        return self.p.route_labels.get(route, route)

    def route_of(self, concept: Concept | None) -> str:
        if concept is None:
            return "unspecified"
        members = self.index.members(concept.pairs(), concept.texts())
        for route, vs in self.p.routes.items():
            if vs in members:
                return route
        return "other"

    def conditions(self, chart: Chart, now: dt.datetime) -> Iterable[Fact]:
        for c in chart.conditions:
            if c.verification_status in self.sem.cond_excluded:
                continue
            if c.onset is not None and c.onset > now + dt.timedelta(hours=self.sem.future_tol_h):
                continue  # G6: onset in the future is ignored
            active = c.clinical_status is None or c.clinical_status in self.sem.cond_active
            for vs in sorted(self.index.members(c.code.pairs(), ())):
                fact: Fact = {"t": "condition", "valueset": vs, "active": active,
                              "clinical_status": c.clinical_status or "unspecified", "refs": [c.ref],
                              "code": self.index.label(c.code),
                              "describe": f"{self.index.label(c.code)} ({c.clinical_status or 'status not recorded'}), "
                                          f"{c.ref}"}
                if c.onset is not None:
                    fact["onset_ago"] = hours_since(now, c.onset)
                    elapsed_range(fact, "onset_ago", now, c.onset, c.onset_latest)
                yield fact

    def medications(self, chart: Chart) -> Iterable[Fact]:
        """G8 medicines: active, on hold (rules give the info-level variant), and at order hooks the other
        unsigned draft orders of the order session (`draft`): signed with the protocol order, they become
        active at the same moment, so they are interaction context (see README, order-select)."""
        meds: list[tuple[MedicationRecord, str]] = []
        for med in chart.medications:
            if med.status in self.sem.med_active.get(med.kind, set()):
                meds.append((med, "active"))
            elif med.status in self.sem.med_on_hold:  # a request or statement on hold: not taken now (G8)
                meds.append((med, "on-hold"))
        meds += [(order, "draft") for order, _ in chart.draft_orders if self.drug_of(order.medication) is None]
        for med, status in meds:
            label = "draft, unsigned" if status == "draft" else status
            for vs in sorted(self.index.members(med.medication.pairs(), med.medication.texts())):
                yield {"t": "medication", "valueset": vs, "status": status, "refs": [med.ref],
                       "name": name_of(med.medication, self.index),  # what a clinician calls it, for card text
                       "describe": f"{name_of(med.medication, self.index)} ({label}), {med.ref}"}

    def allergies(self, chart: Chart) -> Iterable[Fact]:
        for a in chart.allergies:
            if a.verification_status in self.sem.cond_excluded:
                continue
            if a.clinical_status is not None and a.clinical_status not in self.sem.allergy_active:
                continue
            found: set[str] = set()
            for s in a.substances:
                found |= self.index.members(s.pairs(), s.texts())
            for vs in sorted(found):
                label = self.index.label(a.substances[0]) if a.substances else "substance"
                yield {"t": "allergy", "valueset": vs, "refs": [a.ref],
                       "describe": f"Allergy/intolerance to {label}, {a.ref}"}

    def uncoded_conditions(self, chart: Chart) -> list[DataIssue]:
        """Conditions with no code that would count (active, not refuted): said, never matched by their text."""
        issues = []
        for c in chart.conditions:
            if not any(code for _, code in c.code.pairs()) and c.verification_status not in self.sem.cond_excluded \
                    and (c.clinical_status is None or c.clinical_status in self.sem.cond_active):
                # Diagnoses are matched by code only (matching free text is unsafe); the text is not copied into
                # the trace, the record is named.
                issues.append(DataIssue(c.ref, "the Condition has no code (text only), so it could not be checked "
                                               "against the protocol's contraindications; code it, or review it"))
        return issues
