"""Marks and ids a team uses internally, which a clinician reading a card (or a reviewer reading a rule page)
does not know: evidence grades ([D], [U], [S], [V]), seed quotes (Seed Q12), global-semantics numbers (G5), and
the pack's own source ids (protocol.yaml `internal_labels`, e.g. a catalogue's "SP-PDR")."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

# (Q28.2 and G93.6 are ICD-10 codes from the chart, not seed quotes or global-semantics numbers.)
# "per G8." and "(G12)" are marks too: only a digit after the dot makes an ICD-10 code.
INTERNAL = re.compile(r"\[(?:D|U|S|V)(?:[ ,][^\]]*)?\]|\bSeed\b|\bS00\d\b|\b[QG]\d{1,2}\b(?!\.?\d)")
# A rule id as a pack's files are named ("DQ-06-draft-order-not-readable.rule.yaml" -> DQ-06).
RULE_FILE_ID = re.compile(r"^([A-Z]{2,4}-\d{2}[a-z]?)-")


@lru_cache(maxsize=16)
def _pattern(labels: tuple[str, ...]) -> re.Pattern[str]:
    if not labels:
        return INTERNAL
    ids = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    # (ids also as typed in prose: "see CI-05", "per DOS-01.")
    return re.compile(INTERNAL.pattern + rf"|(?<![\w-])(?:{ids})(?![\w-])")


def pattern(labels: Iterable[str] = (), rule_ids: Iterable[str] = ()) -> re.Pattern[str]:
    """The generic marks, and the pack's own ids as whole words ("SP-PDR", not "SP-PDRX"); with `rule_ids`, the
    pack's rule ids too: a clinician does not know what "see CI-05" is (name the check in words)."""
    return _pattern(tuple(sorted(set(labels) | set(rule_ids))))
