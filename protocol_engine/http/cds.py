"""The CDS Hooks endpoints: discovery, a service call (one Decision), feedback on its cards."""

from __future__ import annotations

import time

from flask import Blueprint, Response, g, jsonify, request

from ..core.engine import EngineError
from ..core.errors import BadRequest, PrefetchUnavailable
from ..hooks.evaluate import evaluate
from ..hooks.gather import gather
from ..hooks.pipeline import discovery
from ..hooks.prepare import prepare
from ..runtime import metrics
from ..runtime.deadline import Bounded
from ..runtime.feedback import parse_feedback
from .common import Unsupported, audit, body, current, fhir_client, log, outcome, registry, settings, store

cds = Blueprint("cds", __name__)
# A stalled database answers feedback 503 within this, as a refused one does (runtime/deadline.py).
FEEDBACK_DB = Bounded("feedback", 5.0)


@cds.get("/cds-services")
def discover() -> Response:
    return jsonify(discovery(current().runtimes))


@cds.post("/cds-services/<service_id>")
def invoke(service_id: str) -> Response:
    loaded, config = current(), settings()
    if service_id not in loaded.runtimes:
        return outcome(404, "not-found", f"no CDS service with id '{service_id[:64]}'")
    try:
        # The three stages of hooks/, one way; the only I/O is gather()'s, through this call's allow-listed
        # client and within this call's deadline.
        prepared = prepare(loaded.runtimes[service_id], body())
        gathered = gather(prepared, fhir_client(), g.now, config.fhir_timeout,
                          time.monotonic() + config.request_deadline)
        decision = evaluate(prepared, gathered, g.now, loaded.packset.revision)
    except Unsupported:
        return outcome(415, "not-supported", "send the request as application/json")
    except PrefetchUnavailable as exc:
        metrics.FETCH_ERRORS.labels(service_id).inc()
        log.warning("412 %s: %s%s", service_id, exc, f" ({exc.detail})" if exc.detail else "")
        return outcome(412, "processing", f"required data unavailable for prefetch key(s) "
                                          f"{', '.join(exc.keys)}: {exc.reason}", exc.keys[0])
    except BadRequest as exc:
        return outcome(400, "invalid", str(exc), exc.field)
    except EngineError:
        log.exception("rule evaluation failed for service %s", service_id)
        return outcome(500, "exception", "rule evaluation failed; the error has been logged")
    trace = decision.trace()
    total = time.perf_counter() - g.started
    metrics.LATENCY.labels(service_id).observe(total)
    for stage, ms in decision.timings.items():
        if stage != "total_ms":
            metrics.STAGE.labels(service_id, stage.removesuffix("_ms")).observe(ms / 1000)
    for card in decision.issued:
        metrics.CARDS.labels(card.rule.id, card.json["indicator"]).inc()
    if decision.skipped is None:
        audit().record(trace, f"Patient/{decision.patient_id}", g.now)
    response = jsonify({"cards": decision.cards})
    if request.args.get("trace") == "1" and config.extra.get("expose_trace", config.auth == "disabled"):
        response = jsonify({"cards": decision.cards, "extension": {"protocol-engine-trace": trace}})
    return response


@cds.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    if service_id not in registry().current.runtimes:
        return outcome(404, "not-found", f"no CDS service with id '{service_id[:64]}'")
    try:
        items = parse_feedback(body(), service_id, settings().max_feedback_items)
    except Unsupported:
        return outcome(415, "not-supported", "send the feedback as application/json")
    except BadRequest as exc:
        return outcome(exc.status, exc.code, str(exc), exc.field)
    uuids = [i["card_uuid"] for i in items]
    try:
        # Feedback for a card not (yet) on record is stored all the same: its trace may still be in another
        # worker's write batch, or the database was away when it was served. The report joins feedback to
        # cards by uuid, so it is reconciled as soon as the card's row lands; an EHR is never told "never".
        the_store, now = store(), g.now

        def save() -> tuple[int, int]:
            return len(set(uuids) - the_store.known_cards(uuids)), the_store.add_feedback(items, now)

        unmatched, added = FEEDBACK_DB.call(save)
    except Exception as exc:
        metrics.DB_ERRORS.labels("feedback").inc()
        log.error("feedback not stored: %s", type(exc).__name__)
        response = outcome(503, "transient", "feedback could not be stored; retry later")
        response.headers["Retry-After"] = "5"
        return response
    if unmatched:
        metrics.FEEDBACK_UNMATCHED.inc(unmatched)
    return jsonify({"stored": added, "received": len(items)})
