"""Bundled sample patients (FHIR R4 collection Bundles), re-dated so their relative timing holds today.

Each file is a plain FHIR Bundle: the Patient, the chart, and one draft MedicationRequest. Dates were
written against an anchor (meta.tag 'anchor'); `sample()` shifts every date by (now - anchor).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parent.parent / "samples"
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)$")
TIME_KEYS = {"effectiveDateTime", "authoredOn", "onsetDateTime", "issued", "recordedDate"}


@lru_cache(maxsize=32)
def _raw(name: str) -> dict[str, Any] | None:
    path = FOLDER / f"{name}.json"
    if not re.match(r"^[a-z0-9-]+$", name) or not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _anchor(bundle: dict[str, Any]) -> dt.datetime:
    tag = next(t for t in bundle["meta"]["tag"] if t["code"] == "anchor")
    return dt.datetime.fromisoformat(tag["display"])


def _shift(node: Any, delta: dt.timedelta) -> Any:
    if isinstance(node, dict):
        return {k: (_shift_time(v, delta) if k in TIME_KEYS and isinstance(v, str) else _shift(v, delta))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_shift(v, delta) for v in node]
    return node


def _shift_time(value: str, delta: dt.timedelta) -> str:
    if not _DATETIME.match(value):
        return value
    return (dt.datetime.fromisoformat(value.replace("Z", "+00:00")) + delta).isoformat()


def sample(name: str, now: dt.datetime | None = None) -> dict[str, Any] | None:
    bundle = _raw(name)
    if bundle is None:
        return None
    now = now or dt.datetime.now(dt.UTC)
    return dict(_shift(bundle, now - _anchor(bundle)))


def sample_index() -> list[dict[str, str]]:
    out = []
    for path in sorted(FOLDER.glob("*.json")):
        bundle = _raw(path.stem)
        if bundle:
            text = bundle["extension"][0]["valueString"]
            title, _, description = text.partition(": ")
            out.append({"name": path.stem, "title": title, "description": description})
    return out


def sample_request(name: str, hook: str, now: dt.datetime | None = None,
                   prefetch_keys: dict[str, str] | None = None) -> dict[str, Any] | None:
    """A complete CDS Hooks request for a sample patient (None for no such sample): see bundle_request."""
    bundle = sample(name, now)
    if bundle is None:
        return None
    return bundle_request(bundle, name, hook, now, prefetch_keys)


def bundle_request(bundle: dict[str, Any], name: str, hook: str, now: dt.datetime | None = None,
                   prefetch_keys: dict[str, str] | None = None) -> dict[str, Any] | None:
    """A CDS Hooks request from a chart Bundle (a Patient, its records and, for order hooks, a draft
    MedicationRequest), built by vignette.request_body; None when the Bundle has no Patient, or no draft order for
    an order hook. Prefetch keys (key -> resource type) are filled by resource type."""
    resources = [e["resource"] for e in bundle.get("entry") or [] if isinstance(e, dict) and
                 isinstance(e.get("resource"), dict)]
    patient = next((r for r in resources if r.get("resourceType") == "Patient" and r.get("id")), None)
    draft = next((r for r in resources if r.get("resourceType") == "MedicationRequest" and r.get("status") == "draft"),
                 None)
    if patient is None or (draft is None and hook in ("order-select", "order-sign")):
        return None
    chart = [r for r in resources if r is not draft and r.get("resourceType") != "Patient"]
    from .vignette import DEFAULT_SESSION, request_body

    return request_body(hook, f"demo-{name}-{hook}", patient["id"], patient, [draft] if draft else [], chart,
                        prefetch_keys or {}, now, "demo",
                        appointments=[{**DEFAULT_SESSION, "start": "+7d"}] if hook == "appointment-book" else None)
