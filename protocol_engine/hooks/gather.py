"""Stage 2 of a hook call: the request's prefetch resolved, what is missing fetched, and FHIR JSON -> Chart.

The only stage that may do network I/O, and only through the FhirClient and within the deadline its caller
passes: the HTTP view (http/cds.py) builds the client for the request's allow-listed fhirServer and sets the
deadline; the offline callers (hooks/pipeline.run: the rule-case runner, the CLI, `explain`, `impact`) pass no
client and so read the prefetch alone.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass
from typing import Any

from adapters.fhir import normalise, prefetch
from adapters.fhir.client import FhirClient

from ..core.records import Chart
from .prepare import Prepared


@dataclass
class Gathered:
    chart: Chart
    sources: dict[str, Any]  # per prefetch key: where its data came from (trace)
    medications: dict[str, int] | None = None  # Medications read from fhirServer: wanted and fetched (trace)


def gather(prepared: Prepared, client: FhirClient | None, now: dt.datetime, fhir_timeout: float = 2.0,
           deadline: float = math.inf) -> Gathered | None:
    """The patient's chart for this call; None when prepare() found nothing to evaluate (then nothing is read).

    `deadline` (time.monotonic()) bounds every read of the call; without a client nothing is read, so the
    offline callers leave it unbounded. Raises PrefetchUnavailable when a key can be neither read nor fetched.
    """
    if prepared.skipped is not None:
        return None
    if client is not None and math.isinf(deadline):
        raise ValueError("gather() with a FHIR client needs the call's deadline")  # a fetch is never unbounded
    rt, request, timings = prepared.runtime, prepared.request, prepared.timings
    pack = rt.pack
    t = time.perf_counter()
    resolved = prefetch.resolve(request, rt.templates, client, now, pack.protocol.fetch, fhir_timeout, deadline)
    timings["prefetch_ms"] = _ms(t)
    t = time.perf_counter()
    payloads = list(resolved.payloads.values())
    draft, orders = prepared.draft, prepared.orders
    meds = prepared.meds  # built once by prepare() from the draft orders (order hooks); the prefetch's added here
    if meds is None:
        meds = normalise.medication_index([], draft, request.fhir_server)
    meds.add_payloads(payloads)  # after the draft orders', as medication_index(payloads, draft) adds them
    wanted = normalise.references_to_fetch(payloads, draft, meds)
    medications = None
    if wanted:  # Medications no Bundle of the request holds: read from fhirServer, within the same deadline
        fetched = prefetch.read_all(wanted, request, client, fhir_timeout, deadline)
        meds.add_payloads(fetched)
        medications = {"wanted": len(wanted), "fetched": len(fetched)}
        timings["medication_fetch_ms"] = _ms(t)
    if orders is not None and not orders.order_issues and not wanted:
        # The draft orders were read once already, by prepare(), and nothing changed since.
        chart = normalise.to_chart(payloads, None, None, pack.index.has_any, request.patient_id, meds)
        chart.draft_orders, chart.foreign = orders.draft_orders, orders.foreign + chart.foreign
    else:  # a Medication fetched since, or an order prepare() could not read: read them again with the chart
        chart = normalise.to_chart(payloads, draft, prepared.selections, pack.index.has_any, request.patient_id,
                                   meds)
    chart.issues = prepared.booking_issues + chart.issues
    chart.foreign = prepared.booking_foreign + chart.foreign
    timings["parse_ms"] = _ms(t)
    return Gathered(chart, resolved.sources, medications)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
