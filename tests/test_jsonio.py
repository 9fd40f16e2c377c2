"""http/jsonio.py (orjson) reads and writes what the standard library reads and writes, on data we did not write."""

from __future__ import annotations

import codecs
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol_engine.http import jsonio

ROOT = Path(__file__).resolve().parent
SHARED = Path("/work/shared/cds-hooks/captured")


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (1 is not 1.0 here, NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return bool(a == b)


def _outcome(parse: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(raw)
    except (ValueError, RecursionError) as exc:  # what http/common.body turns into a 400
        return "refused", type(exc)


def _check(raw: bytes) -> None:
    mine, reference = _outcome(jsonio.loads, raw), _outcome(json.loads, raw)
    assert mine[0] == reference[0], (raw[:80], mine, reference)
    assert _same(mine[1], reference[1]) if mine[0] == "ok" else mine[1] is reference[1] or issubclass(
        mine[1], ValueError) == issubclass(reference[1], ValueError), raw[:80]


def _published() -> list[Path]:
    found = sorted((ROOT / "corpus" / "hl7-r4").glob("*.json")) + sorted((ROOT / "data").glob("captured-*.json"))
    return found + (sorted(SHARED.glob("*.json")) if SHARED.is_dir() else [])


@pytest.mark.parametrize("path", _published(), ids=lambda p: p.name)
def test_published_examples_and_captured_requests_parse_the_same(path: Path) -> None:
    _check(path.read_bytes())


@pytest.mark.parametrize("raw", [
    b'{"valueQuantity": {"value": 123456789012345678901234567890}}',  # orjson alone: a float, rounded
    b'[-9223372036854775809, 18446744073709551616, 9223372036854775807]',
    b'{"value": 1e400}', b'{"value": NaN}', b'[Infinity, -Infinity]', b'"\\ud800"', b'"\\udc00x"',
    b'{"a": 1, "a": 2}', b'[0.1, 1E5, -0.0, 5e-324, 1.7976931348623157e308, 2.5e-310]',
    codecs.BOM_UTF8 + b'{"resourceType": "Patient"}', '{"name": "Zoë"}'.encode("utf-16"),
    '{"name": "Zoë"}'.encode("utf-32"), b'{"name": "Zo\xeb"}', b'[' * 1100 + b']' * 1100, b'[' * 100_000,
    b'', b' ', b'{"a": 1} x', b'{"a": 1,}', b"{'a': 1}", b'"\x00"', b'"\\u0000"', b'{"identifier": "12345678901234567890"}',
])
def test_edge_bodies_are_read_or_refused_as_before(raw: bytes) -> None:
    _check(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_any_json_the_standard_library_writes_is_read_back_the_same(value: Any, ascii_only: bool) -> None:
    _check(json.dumps(value, ensure_ascii=ascii_only).encode())


class _App:  # what DefaultJSONProvider keeps of the app: nothing the dumps path reads
    pass


def _provider() -> jsonio.Provider:
    provider = jsonio.Provider(_App())  # type: ignore[arg-type]
    provider.sort_keys, provider.ensure_ascii = False, False  # as server.create_app sets them
    return provider


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_responses_encode_to_the_same_json(value: Any) -> None:
    import orjson

    written = _provider().dumps(value)
    try:
        orjson.dumps(value)
    except TypeError:  # orjson refuses (an integer beyond 64 bits): the standard library writes it, NaN as null
        assert written == json.dumps(_finite(value), ensure_ascii=False, sort_keys=False)
        return
    # NaN and infinities are not JSON: the standard library writes NaN, orjson null (on purpose)
    reference = json.dumps(_finite(value), ensure_ascii=False, sort_keys=False)
    assert _same(json.loads(written), json.loads(reference))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def test_what_orjson_does_not_encode_as_flask_does_goes_through_flask() -> None:
    import datetime as dt
    import decimal
    import enum
    import uuid

    class Kind(enum.StrEnum):
        card = "card"

    provider = _provider()
    odd = {"when": dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC), "day": dt.date(2026, 11, 30),
           "amount": decimal.Decimal("1.50"), "id": uuid.UUID(int=7), "kind": Kind.card, 3: "int key",
           "big": 2**70}
    reference = json.dumps(odd, default=provider.default, ensure_ascii=False)
    assert json.loads(provider.dumps(odd)) == json.loads(reference)
