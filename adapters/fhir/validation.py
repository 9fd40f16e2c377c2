"""fhir.resources validation in which the same JSON is validated once per worker, not once per occurrence.

fhir.resources validates an Observation as a tree of models (Observation, CodeableConcept, Coding,
Quantity, ...), each through pydantic-core plus fhir_core's Python validators; 33 resources made 155
model validations per 20-Observation call, half of the call. Most of those subtrees are the same bytes
again and again: the LOINC code of every vital sign, `mm[Hg]` quantities with the same value, the
ketamine concept of twenty administrations, the subject reference of every resource in a chart.

`validate(model, data)` validates every complex element (a JSON object under a model-typed field) once,
keeps the resulting model instance, and hands later occurrences of the same JSON value (same model
class) to fhir.resources as that already-validated instance, which pydantic accepts without validating
again. The resource itself is then validated by fhir.resources as before: its primitives, the choice
([x]) and required-element checks, and the null-in-list check over its children. Nothing is validated
less: an element is only reused for a JSON value identical (types included) to one that passed the same model's
validation. Any failure is re-validated from the raw JSON, so the error (and its location) is exactly
the library's own.

The memory holds patient data (values, times, references, free text), so it is kept like any patient
data held in memory: per worker process, never written anywhere, bounded in entries and in the size of
an entry, each entry forgotten after `max_age_s`, and cleared on every rule-set reload (`clear()`).
"""

from __future__ import annotations

import marshal
import os
import threading
import time
import typing
from collections import OrderedDict
from typing import Any

from fhir_core.types import FhirBase, FhirElementOrResourceBase
from pydantic import BaseModel, ValidationError

# PROTOCOL_ENGINE_VALIDATION_MEMORY=0 turns the memory off (every element validated every time).
MAX_ENTRIES = int(os.environ.get("PROTOCOL_ENGINE_VALIDATION_MEMORY", "20000"))
MAX_AGE_S = float(os.environ.get("PROTOCOL_ENGINE_VALIDATION_MEMORY_AGE", "300"))
MAX_TEXT = 16_384  # larger elements (bytes of their key) are validated every time rather than held
# The memory's key for a JSON element: marshal format 2 writes a value's type and content and nothing
# else (formats 3+ add back-references that depend on reference counts, so equal values could differ),
# twice as fast as re-encoding JSON; equal keys decode to equal values.
_FORMAT = 2


class _Memory:
    """A least-recently-used map of (model class, key of the JSON value) -> validated instance, with an age limit."""

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple[type, bytes], tuple[float, Any]] = OrderedDict()
        self.lock = threading.Lock()
        self.max_entries = MAX_ENTRIES
        self.max_age_s = MAX_AGE_S
        self.hits = self.misses = 0

    def get(self, key: tuple[type, bytes]) -> Any | None:
        with self.lock:
            found = self.entries.get(key)
            if found is None:
                self.misses += 1
                return None
            if found[0] < time.monotonic():
                del self.entries[key]
                self.misses += 1
                return None
            self.entries.move_to_end(key)
            self.hits += 1
            return found[1]

    def put(self, key: tuple[type, bytes], value: Any) -> None:
        with self.lock:
            self.entries[key] = (time.monotonic() + self.max_age_s, value)
            self.entries.move_to_end(key)
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


MEMORY = _Memory()
_FIELDS: dict[type, dict[str, tuple[type, bool]]] = {}


def clear() -> None:
    """Forget every validated element (on rule-set reload, and whenever patient data must not linger)."""
    MEMORY.clear()


def configure(max_entries: int, max_age_s: float) -> None:
    """Bound the memory (0 entries turns it off)."""
    MEMORY.max_entries, MEMORY.max_age_s = max(0, max_entries), max(0.0, max_age_s)
    clear()


def _element_fields(model: type) -> dict[str, tuple[type, bool]]:
    """JSON name -> (model class of the element, is a list) for each field typed as one FHIR model.

    Fields typed as `Resource` (contained resources) pick their class from the JSON and stay with
    fhir.resources, as do primitives and anything not typed as a single model class.
    """
    known = _FIELDS.get(model)
    if known is not None:
        return known
    fields: dict[str, tuple[type, bool]] = {}
    for name, info in getattr(model, "model_fields", {}).items():
        kind, is_list = _model_type(info.annotation)
        if kind is not None:
            fields[info.alias or name] = (kind, is_list)
    _FIELDS[model] = fields
    return fields


def _model_type(annotation: Any) -> tuple[type | None, bool]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return _model_type(args[0]) if len(args) == 1 else (None, False)
    if typing.get_origin(annotation) is list:
        inner, nested = _model_type(args[0]) if len(args) == 1 else (None, False)
        return (inner, True) if inner is not None and not nested else (None, False)
    if isinstance(annotation, type) and issubclass(annotation, FhirBase) \
            and not issubclass(annotation, FhirElementOrResourceBase):
        kind = annotation.get_model_klass()
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind, False
    return None, False


def _with_elements(model: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` with each complex element replaced by its validated instance (raises if one is invalid)."""
    fields = _element_fields(model)
    out: dict[str, Any] | None = None
    for key, value in data.items():
        spec = fields.get(key)
        if spec is None:
            continue
        kind, is_list = spec
        if is_list:
            if not isinstance(value, list) or not any(isinstance(v, dict) for v in value):
                continue
            new: Any = [_element(kind, v) if isinstance(v, dict) else v for v in value]
        elif isinstance(value, dict):
            new = _element(kind, value)
        else:
            continue
        if out is None:
            out = dict(data)
        out[key] = new
    return data if out is None else out


def _element(kind: type, value: dict[str, Any]) -> Any:
    text = marshal.dumps(value, _FORMAT)
    if len(text) > MAX_TEXT or MEMORY.max_entries == 0:
        return kind.model_validate(_with_elements(kind, value))  # type: ignore[attr-defined]
    key = (kind, text)
    found = MEMORY.get(key)
    if found is None:
        found = kind.model_validate(_with_elements(kind, value))  # type: ignore[attr-defined]
        MEMORY.put(key, found)
    return found


def validate(model: type, data: dict[str, Any]) -> Any:
    """`model.model_validate(data)`, with every complex element validated once per worker (see above)."""
    try:
        return _element(model, data)
    except (ValidationError, ValueError, TypeError):
        # The library's own error, located in the raw JSON as the caller reports it.
        return model.model_validate(data)  # type: ignore[attr-defined]
