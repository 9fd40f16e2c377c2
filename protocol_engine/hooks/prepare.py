"""Stage 1 of a hook call: the request body -> Prepared, read once, before anything is fetched (no I/O).

The body is checked against the hook's contract (400 on any breach). Order hooks read their draft orders here,
so a request whose every draft order is identified as no drug of the protocol is answered `[]` without a fetch;
appointment-book reads its proposed sessions here, and answers `[]` when none is a session of the protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adapters.fhir import hook_request, normalise
from adapters.fhir.hook_request import HookRequest
from adapters.fhir.medications import MedicationIndex

from ..core.anchors import Anchor
from ..core.records import Chart, DataIssue
from .sessions import proposed_sessions

if TYPE_CHECKING:
    from .pipeline import ServiceRuntime

ORDER_HOOKS = ("order-select", "order-sign")


@dataclass
class Prepared:
    """A checked request of one service, with what could be read from it alone."""

    runtime: ServiceRuntime
    request: HookRequest
    started: float  # perf_counter() when the call began: the trace's total_ms counts from here
    draft: Any = None  # context.draftOrders (order hooks)
    selections: Any = None  # context.selections (order-select)
    orders: Chart | None = None  # the draft orders, read without the prefetch (order hooks)
    sessions: list[Anchor] = field(default_factory=list)  # appointment-book: proposed protocol sessions
    booking_issues: list[DataIssue] = field(default_factory=list)
    booking_foreign: list[DataIssue] = field(default_factory=list)  # another patient's proposed Appointments
    unrecognised: list[DataIssue] = field(default_factory=list)  # proposed, but not a session (DQ-07)
    meds: MedicationIndex | None = None  # the draft orders' Medications, built once; gather() adds the prefetch's
    skipped: str | None = None  # why nothing needs evaluating: the answer is [] without a fetch
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def patient_id(self) -> str:
        return self.request.patient_id


def prepare(runtime: ServiceRuntime, body: Any) -> Prepared:
    """Check the body for this service's hook and read what the request itself says. Raises BadRequest."""
    started = time.perf_counter()
    service, pack = runtime.service, runtime.pack
    request = hook_request.parse(body, service.hook)
    prepared = Prepared(runtime, request, started)
    if service.hook in ORDER_HOOKS:
        prepared.draft = request.context.get("draftOrders")
        if service.hook == "order-select":
            prepared.selections = request.context.get("selections")
        prepared.meds = normalise.medication_index([], prepared.draft, request.fhir_server)
        prepared.orders = normalise.to_chart([], prepared.draft, prepared.selections, patient_id=request.patient_id,
                                             meds=prepared.meds)
        # Answer [] early only when every draft order in scope was identified as not a protocol drug.
        if not pack.deriver.order_in_scope(prepared.orders):
            prepared.skipped = "every draft order in scope identified; none is of this protocol's drugs"
    if service.anchor == "appointment" and prepared.skipped is None:
        prepared.sessions = proposed_sessions(service, pack, request.context.get("appointments"),
                                              prepared.booking_issues, request.patient_id, prepared.booking_foreign,
                                              prepared.unrecognised)
        if not (prepared.sessions or prepared.booking_issues or prepared.booking_foreign or prepared.unrecognised):
            prepared.skipped = "no proposed appointment is a session of this protocol"
    return prepared
