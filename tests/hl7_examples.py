"""HL7's published FHIR R4 examples (tests/corpus/hl7-r4, see PROVENANCE.md) as the derive unit tests read them:
through the FHIR adapter (adapters/fhir/normalise.add_resource) into core records, dates moved to the test's clock
where a check needs a recent record. The files are never edited."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

from adapters.fhir.normalise import add_resource
from protocol_engine.core.records import Chart

HL7 = Path(__file__).parent / "corpus" / "hl7-r4"
NOW = dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)


def example(name: str, taken: dt.datetime | None = None) -> dict[str, Any]:
    """One example resource (`observation-example-bloodpressure`), its effective time moved to `taken`."""
    resource: dict[str, Any] = json.loads((HL7 / f"{name}.json").read_text(encoding="utf-8"))
    if taken is not None:
        resource["effectiveDateTime"] = taken.isoformat()
    return copy.deepcopy(resource)


def chart_of(*resources: dict[str, Any]) -> Chart:
    """A chart holding the resources as the FHIR adapter files them (validated, typed, data issues kept)."""
    chart = Chart()
    for resource in resources:
        add_resource(chart, resource)
    return chart


def deriver(loaded: Any) -> Any:
    """The bundled ketamine pack's Deriver (its measures, value sets and semantics)."""
    return loaded.packset.packs[0].deriver
