"""Typed clinical records: the contract between the FHIR adapter and the rule engine.

Records carry what FHIR said (codes, statuses, times, quantities) without clinical judgement;
the protocol's declared semantics (valid statuses, windows, units) are applied by the engine.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

Coding = tuple[str | None, str | None, str | None]  # system, code, display


@dataclass(frozen=True)
class Concept:
    codings: tuple[Coding, ...] = ()
    text: str | None = None
    # A Medication's ingredients (Medication.ingredient.item[x]); empty for every other concept.
    ingredients: tuple[Concept, ...] = ()

    def pairs(self) -> list[tuple[str | None, str | None]]:
        """Every coding, the ingredients' included: value-set membership reads them all."""
        return [(s, c) for s, c, _ in self.codings] + [p for i in self.ingredients for p in i.pairs()]

    def texts(self) -> list[str | None]:
        return [self.text, *(d for _, _, d in self.codings)] + [t for i in self.ingredients for t in i.texts()]

    def tiers(self) -> list[tuple[list[tuple[str | None, str | None]], list[str | None]]]:
        """Identification order for a medication: product code, then ingredient codes, then text."""
        return [([(s, c) for s, c, _ in self.codings], []),
                ([p for i in self.ingredients for p in i.pairs()], []),
                ([], self.texts())]

    def label(self) -> str:
        for _system, code, display in self.codings:
            if code:
                return f"{code} {display}".strip() if display else code
        if self.text:
            return self.text
        if self.ingredients:
            return " + ".join(i.label() for i in self.ingredients)
        return "uncoded"


@dataclass(frozen=True)
class Quantity:
    value: float | None
    unit: str | None  # the UCUM code when the system is UCUM, else the human unit string
    text: str | None = None  # a non-numeric value (valueString / valueCodeableConcept)
    coded: Concept | None = None
    absent: str | None = None  # dataAbsentReason (code or text) when the value is absent
    problem: str | None = None  # why a value that was sent cannot be read (a number sent as a JSON string)


@dataclass(frozen=True)
class ObservationRecord:
    ref: str
    code: Concept
    status: str | None
    time: dt.datetime | None
    value: Quantity
    components: tuple[tuple[Concept, Quantity], ...] = ()
    interpretation: Concept | None = None
    reference_high: Quantity | None = None
    time_latest: dt.datetime | None = None  # reduced-precision effective time: `time` is the earliest instant


class LazyObservation:
    """An Observation whose cheap fields are read up front and whose full validation waits until a rule needs it.

    A 500-Observation chart mostly holds readings older than the governing one; validating those with
    fhir.resources would cost more than everything else in the request.
    """

    __slots__ = ("ref", "status", "time", "codes", "_load", "_value", "time_latest", "relaxed")

    def __init__(self, ref: str, status: str | None, time: dt.datetime | None,
                 codes: tuple[tuple[str | None, str | None], ...],
                 load: Callable[[], ObservationRecord | DataIssue],
                 time_latest: dt.datetime | None = None,
                 relaxed: Callable[[], ObservationRecord | DataIssue] | None = None) -> None:
        self.ref, self.status, self.time, self.codes = ref, status, time, codes
        # The record read with an invalid status replaced, only to quote its value on a data-quality card.
        self.relaxed = relaxed
        # Reduced precision (`2026-11-29`): `time` is the earliest instant it covers, this the latest.
        self.time_latest = time_latest if time_latest is not None else time
        self._load = load
        self._value: ObservationRecord | DataIssue | None = None

    def record(self) -> ObservationRecord | DataIssue:
        if self._value is None:
            self._value = self._load()
        return self._value


@dataclass(frozen=True)
class ConditionRecord:
    ref: str
    code: Concept
    clinical_status: str | None
    verification_status: str | None
    onset: dt.datetime | None  # earliest instant of a reduced-precision onset (`2026-08`)
    onset_latest: dt.datetime | None = None


@dataclass(frozen=True)
class MedicationRecord:
    """A MedicationRequest (kind=request, also draft orders) or MedicationStatement (kind=statement)."""

    ref: str
    kind: str
    medication: Concept
    status: str | None
    route: Concept | None = None
    dose: Quantity | None = None
    duration_h: float | None = None
    rate: Quantity | None = None
    authored: dt.datetime | None = None
    dose_low: Quantity | None = None  # doseRange.low; `dose` then holds doseRange.high (the bound judged)
    concentration: Quantity | None = None  # amount per volume of the product (Medication.ingredient.strength)
    authored_day_only: bool = False  # authoredOn is a date without a time: show the day, never "00:00"


@dataclass(frozen=True)
class AdministrationRecord:
    ref: str
    medication: Concept
    status: str | None
    start: dt.datetime | None
    route: Concept | None = None  # dosage.route: the route of the course outside order hooks
    start_latest: dt.datetime | None = None  # a date without a time (`2026-11-29`): `start` is that day's start


@dataclass(frozen=True)
class AllergyRecord:
    ref: str
    substances: tuple[Concept, ...]
    clinical_status: str | None
    verification_status: str | None


@dataclass(frozen=True)
class PatientRecord:
    ref: str
    birth_date: dt.date | None  # earliest day of a reduced-precision birthDate (`2009`, `2009-05`)
    gender: str | None
    birth_latest: dt.date | None = None
    birth_text: str | None = None  # as written, for the card


@dataclass(frozen=True)
class AppointmentRecord:
    """A proposed Appointment of appointment-book: when, and what kind of visit (no free text is kept)."""

    ref: str
    status: str | None
    start: dt.datetime | None
    end: dt.datetime | None
    kinds: tuple[Concept, ...]  # appointmentType, serviceType and reasonCode: how a protocol session is recognised


@dataclass(frozen=True)
class EncounterRecord:
    ref: str
    status: str | None
    start: dt.datetime | None  # period.start


@dataclass(frozen=True)
class DataIssue:
    """Data that could not be read; reported to the engine rather than raised."""

    ref: str
    problem: str
    set_aside: str = ""  # a measure's reading not used for its status (G1), not unreadable: the measure's name


@dataclass(frozen=True)
class OrderIssue:
    """A draft order in scope that could not be fully read: named on a card, never dropped silently.

    `medication` is what could still be read of its drug (None when nothing could); `identified` means it
    was read from the order's own medication element or a resolved Medication, not only from a display text;
    `foreign` means the order is for another patient: named, but no check on this patient is run for it.
    """

    ref: str
    problem: str
    medication: Concept | None = None
    identified: bool = False
    foreign: bool = False


@dataclass
class Chart:
    patient: PatientRecord | None = None
    observations: list[LazyObservation] = field(default_factory=list)
    conditions: list[ConditionRecord] = field(default_factory=list)
    medications: list[MedicationRecord] = field(default_factory=list)
    administrations: list[AdministrationRecord] = field(default_factory=list)
    allergies: list[AllergyRecord] = field(default_factory=list)
    draft_orders: list[tuple[MedicationRecord, bool]] = field(default_factory=list)  # (order, selected)
    encounters: list[EncounterRecord] = field(default_factory=list)
    issues: list[DataIssue] = field(default_factory=list)
    foreign: list[DataIssue] = field(default_factory=list)  # resources of another patient, never used
    order_issues: list[OrderIssue] = field(default_factory=list)  # draft orders in scope not fully read
