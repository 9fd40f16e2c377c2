"""UCUM unit conversion through ucumvert (pint); conversion factors are cached per unit pair."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

_REGISTRY: Any = None


def _registry() -> Any:
    global _REGISTRY
    if _REGISTRY is None:
        from ucumvert import PintUcumRegistry

        _REGISTRY = PintUcumRegistry()
    return _REGISTRY


@lru_cache(maxsize=512)
def factor(unit: str, target: str) -> float | None:
    """Multiplier from `unit` to `target`, or None when the unit is not UCUM or not commensurable."""
    if unit == target:
        return 1.0
    try:
        reg = _registry()
        return float((1 * reg.from_ucum(unit)).to(reg.from_ucum(target)).magnitude)
    except Exception:
        return None


def is_ucum(unit: str) -> bool:
    try:
        _registry().from_ucum(unit)
        return True
    except Exception:
        return False


def warm(pairs: list[tuple[str, str]]) -> None:
    """Fill the cache at load time so no request pays for pint's parser."""
    for unit, target in pairs:
        factor(unit, target)
