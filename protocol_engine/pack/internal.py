"""Marks and ids a team uses internally, which a clinician reading a card (or a reviewer reading a rule page)
does not know: evidence grades ([D], [U], [S], [V]), seed quotes (Seed Q12), global-semantics numbers (G5), and
the pack's own source ids (protocol.yaml `internal_labels`, e.g. a catalogue's "SP-PDR")."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

# (Q28.2 and G93.6 are ICD-10 codes from the chart, not seed quotes or global-semantics numbers.)
INTERNAL = re.compile(r"\[(?:D|U|S|V)(?:[ ,][^\]]*)?\]|\bSeed\b|\bS00\d\b|\b[QG]\d{1,2}\b(?![.\d])")


@lru_cache(maxsize=16)
def _pattern(labels: tuple[str, ...]) -> re.Pattern[str]:
    if not labels:
        return INTERNAL
    ids = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    return re.compile(INTERNAL.pattern + rf"|(?<![\w-])(?:{ids})(?![\w-])")


def pattern(labels: Iterable[str] = ()) -> re.Pattern[str]:
    """The generic marks, and the pack's own ids as whole words ("SP-PDR", not "SP-PDRX")."""
    return _pattern(tuple(sorted(set(labels))))
