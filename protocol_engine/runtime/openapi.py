"""The OpenAPI 3.1 description of the HTTP surface, served at /openapi.json and checked by tests."""

from __future__ import annotations

from typing import Any

HOOKS = ["patient-view", "order-select", "order-sign", "appointment-book", "encounter-start"]


def _outcome_ref() -> dict[str, Any]:
    return {"content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}}


def openapi_document(service_ids: list[str]) -> dict[str, Any]:
    errors = {code: {"description": text, **_outcome_ref()} for code, text in (
        ("400", "Malformed request, wrong hook, missing or mistyped context"),
        ("404", "Unknown service id"),
        ("412", "Required data neither prefetched nor obtainable from fhirServer"),
        ("413", "Body over the configured limit"),
        ("415", "Content type is not JSON"),
    )}
    unauthorized = {"401": {"description": "Missing or invalid CDS client JWT (no detail)"}}
    service_param = {"name": "service_id", "in": "path", "required": True,
                     "schema": {"type": "string", "enum": service_ids}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "protocol-engine CDS Hooks service", "version": "1.0.0",
                 "description": "CDS Hooks 2.0.1 services generated from declarative rule packs. This software "
                                "supports clinical decisions; it does not replace clinical judgement."},
        "paths": {
            "/cds-services": {"get": {"summary": "Discovery", "operationId": "discovery",
                                      "responses": {"200": {"description": "Services", "content": {
                                          "application/json": {"schema": {"$ref": "#/components/schemas/Discovery"}}}},
                                          **unauthorized}}},
            "/cds-services/{service_id}": {"post": {
                "summary": "Invoke a service", "operationId": "invoke", "parameters": [service_param],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/HookRequest"}}}},
                "responses": {"200": {"description": "Cards (possibly none)", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/CardList"}}}}, **errors, **unauthorized}}},
            "/cds-services/{service_id}/feedback": {"post": {
                "summary": "Card feedback", "operationId": "feedback", "parameters": [service_param],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/FeedbackList"}}}},
                "responses": {"200": {"description": "Stored (idempotent)", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["stored", "received"], "properties": {
                        "stored": {"type": "integer"}, "received": {"type": "integer"}}}}}},
                    "400": errors["400"], "404": errors["404"], "415": errors["415"],
                    "503": {"description": "Store unavailable; retry", **_outcome_ref()}, **unauthorized}}},
            "/analytics/data": {"get": {
                "summary": "Override analytics: per rule cards shown, accepted, overridden, reasons, rate over time",
                "operationId": "analytics",
                "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": "string"},
                                "description": d} for n, d in (
                    ("since", "first day (2026-11-01) or ISO time; default 30 days before until"),
                    ("until", "last day, included, or ISO time (excluded); default now"),
                    ("bucket", "day or week"))],
                "responses": {"200": {"description": "Figures", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["buckets", "rules"]}}}},
                    "400": errors["400"],
                    "401": {"description": "Operator token missing or wrong (authentication on)", **_outcome_ref()},
                    "403": {"description": "No operator token configured (authentication on)", **_outcome_ref()},
                    "503": {"description": "Store unavailable; retry", **_outcome_ref()}}}},
            "/healthz": {"get": {"summary": "Liveness", "operationId": "healthz", "responses": {
                "200": {"description": "Alive", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/readyz": {"get": {"summary": "Readiness", "operationId": "readyz", "responses": {
                "200": {"description": "Ready", "content": {"application/json": {"schema": {"type": "object"}}}},
                "503": {"description": "Not ready", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics", "responses": {
                "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": {
            "OperationOutcome": {"type": "object", "required": ["resourceType", "issue"], "properties": {
                "resourceType": {"const": "OperationOutcome"},
                "issue": {"type": "array", "minItems": 1, "items": {"type": "object",
                                                                    "required": ["severity", "code"]}}}},
            "Discovery": {"type": "object", "required": ["services"], "properties": {"services": {
                "type": "array", "items": {"type": "object", "required": ["hook", "description", "id"],
                                           "properties": {"hook": {"type": "string"}, "id": {"type": "string"},
                                                          "title": {"type": "string"},
                                                          "description": {"type": "string"},
                                                          "prefetch": {"type": "object"}}}}}},
            "HookRequest": {"type": "object", "required": ["hook", "hookInstance", "context"], "properties": {
                "hook": {"type": "string", "enum": HOOKS}, "hookInstance": {"type": "string"},
                "fhirServer": {"type": "string", "format": "uri"},
                "fhirAuthorization": {"type": "object", "required": ["access_token", "token_type"]},
                "context": {"type": "object"}, "prefetch": {"type": "object"}}},
            "CardList": {"type": "object", "required": ["cards"], "properties": {"cards": {
                "type": "array", "items": {"$ref": "#/components/schemas/Card"}}}},
            "Card": {"type": "object", "required": ["uuid", "summary", "indicator", "source", "extension"],
                     "properties": {
                         "uuid": {"type": "string"}, "summary": {"type": "string", "maxLength": 139},
                         "detail": {"type": "string"},
                         "indicator": {"type": "string", "enum": ["info", "warning", "critical"]},
                         "source": {"type": "object", "required": ["label"]},
                         "overrideReasons": {"type": "array", "items": {"type": "object",
                                                                        "required": ["code", "system", "display"]}},
                         "suggestions": {"type": "array"},
                         "selectionBehavior": {"type": "string", "enum": ["at-most-one", "any"]},
                         "extension": {"type": "object", "required": ["protocol-engine"]}}},
            "FeedbackList": {"type": "object", "required": ["feedback"], "properties": {"feedback": {
                "type": "array", "minItems": 1, "items": {"type": "object",
                                                          "required": ["card", "outcome", "outcomeTimestamp"],
                                                          "properties": {
                                                              "card": {"type": "string"},
                                                              "outcome": {"enum": ["accepted", "overridden"]},
                                                              "outcomeTimestamp": {"type": "string"},
                                                              "acceptedSuggestions": {"type": "array"},
                                                              "overrideReason": {"type": "object"}}}}}},
        }},
    }
