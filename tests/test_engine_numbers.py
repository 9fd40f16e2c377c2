"""Numbers reach durable_rules' C parser as the numbers they are.

Its grammar needs a fraction before an exponent: `1e-05` (how Python writes 0.00001) is refused, and inside
a batch the refusal silently dropped the fact and the ones after it; the next engine call crashed the worker
(SIGSEGV). Found by the issue-20 probe with a body weight of 0.00001 kg.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any

import durable_rules_engine as durable
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol_engine.core import engine

CAPTURED = Path(__file__).parent / "data"


def _fires(value: float, threshold: float) -> bool:
    """Whether durable's own engine, given both numbers as engine._encode writes them, finds value > threshold."""
    handle = durable.create_ruleset(f"numbers{next(_SID)}",
                                    engine._encode({"r_0": {"all": [{"m": {"$gt": {"v": threshold}}}]}}))
    code, state = durable.assert_facts(handle, "[" + engine._encode({"v": value, "sid": "1"}) + "]")
    assert (code, state) != (0, 0), f"durable could not read {value!r}"
    return durable.start_action_for_state(handle, state) is not None


_SID = iter(range(10**9))


@pytest.mark.parametrize("value", [1e-05, 1e-9, 5e-324, 2.5e-7, -1e-05, 1e16 + 2.0, 1.5e300, 0.0001, 123.25])
def test_exponent_floats_are_written_so_durable_reads_them(value: float) -> None:
    back = json.loads(engine._encode({"t": "x", "v": value, "nested": [value, {"v": value}]}))
    assert back["v"] == value and back["nested"] == [value, {"v": value}]
    assert _fires(value, value / 2 if value > 0 else value * 2)
    assert not _fires(value, value * 2 if value > 0 else value / 2)


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.floats(allow_nan=False, allow_infinity=False))
def test_durable_compares_every_encoded_float_as_python_does(value: float, threshold: float) -> None:
    assert json.loads(engine._encode({"v": value})) == {"v": value}
    assert _fires(value, threshold) == (value > threshold)


def test_common_facts_keep_the_fast_encoding() -> None:
    fact = {"t": "measurement", "measure": "sbp", "value": 182, "taken_ago": 2.5, "code": "8480-6"}
    assert engine._encode(fact) == json.dumps(fact, ensure_ascii=False)


def test_non_finite_floats_are_null() -> None:
    assert json.loads(engine._encode({"v": math.inf, "w": [math.nan]})) == {"v": None, "w": [None]}


WRITTEN = dt.datetime(2026, 11, 30, 15, 43, 35, tzinfo=dt.UTC)  # when the probe wrote the request
_INSTANT = re.compile(r'"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00)"')


def _probe_request(weight_literal: str) -> str:
    """The issue-20 probe's own order-sign (not our builder), its times moved to now, the weights rewritten."""
    raw = (CAPTURED / "probe20-order-sign-tiny-weight.json").read_text()
    shift = dt.datetime.now(dt.UTC).replace(microsecond=0) - WRITTEN
    raw = _INSTANT.sub(lambda m: '"' + (dt.datetime.fromisoformat(m.group(1)) + shift).isoformat() + '"', raw)
    assert raw.count('"value": 0.00001,') == 2
    return raw.replace('"value": 0.00001,', f'"value": {weight_literal},')


@pytest.mark.parametrize("weight", ["0.00001", "1e-9", "1E-7", "2.5e-6"])
def test_a_tiny_body_weight_is_answered_not_crashed(client: Any, weight: str) -> None:
    answer = client.post("/cds-services/ketamine-order-sign", data=_probe_request(weight),
                         headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    rules = {card["extension"]["protocol-engine"]["rule"] for card in answer.get_json()["cards"]}
    # the other rules still ran on the same chart: the ones a 70 kg weight gives, the dose check aside
    normal = client.post("/cds-services/ketamine-order-sign", data=_probe_request("70"),
                         headers={"Content-Type": "application/json"})
    others = {card["extension"]["protocol-engine"]["rule"] for card in normal.get_json()["cards"]}
    assert others - {"DOS-01"} <= rules
