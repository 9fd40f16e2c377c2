"""CDS Hooks feedback bodies -> validated rows (cds-fb-1..3); never keeps free-text comments."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from ..core.errors import BadRequest

OUTCOMES = ("accepted", "overridden")


def parse_timestamp(value: Any, where: str) -> dt.datetime:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be an RFC 3339 timestamp", where)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"{where} must be an RFC 3339 timestamp", where) from exc
    if parsed.tzinfo is None:
        raise BadRequest(f"{where} needs a time zone (UTC)", where)
    return parsed.astimezone(dt.UTC)


class TooManyItems(BadRequest):
    status = 413
    code = "too-costly"


def card_uuid(value: Any, where: str) -> str:
    """The card's uuid in the form this service issues (lower-case, hyphenated)."""
    try:
        if not isinstance(value, str) or len(value) > 45:
            raise ValueError(value)
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequest(f"{where}.card must be the uuid of a card this service returned", f"{where}.card") from None


def parse_feedback(body: Any, service: str, max_items: int = 100) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list) or not body["feedback"]:
        raise BadRequest("body must be {\"feedback\": [ ... ]} with at least one item", "feedback")
    if len(body["feedback"]) > max_items:
        raise TooManyItems(f"at most {max_items} feedback items per request; send the rest in further requests",
                           "feedback")
    items = []
    for i, item in enumerate(body["feedback"]):
        where = f"feedback[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object", where)
        card = card_uuid(item.get("card"), where)
        outcome = item.get("outcome")
        if outcome not in OUTCOMES:
            raise BadRequest(f"{where}.outcome must be accepted or overridden", f"{where}.outcome")
        stamp = parse_timestamp(item.get("outcomeTimestamp"), f"{where}.outcomeTimestamp")
        accepted = item.get("acceptedSuggestions")
        ids: list[str] = []
        if outcome == "accepted" and (not isinstance(accepted, list) or not accepted):
            raise BadRequest(f"{where}.acceptedSuggestions is required when the outcome is accepted",
                             f"{where}.acceptedSuggestions")
        if accepted is not None:
            if not isinstance(accepted, list) or not all(isinstance(a, dict) and isinstance(a.get("id"), str)
                                                         for a in accepted):
                raise BadRequest(f"{where}.acceptedSuggestions must be a list of {{\"id\": ...}}",
                                 f"{where}.acceptedSuggestions")
            ids = [a["id"] for a in accepted]
        row: dict[str, Any] = {"card_uuid": card, "service": service, "outcome": outcome,
                               "outcome_timestamp": stamp, "accepted_suggestions": ids, "has_comment": False}
        reason = item.get("overrideReason")
        if reason is not None:
            if outcome != "overridden":
                raise BadRequest(f"{where}.overrideReason belongs to an overridden outcome", f"{where}.overrideReason")
            if not isinstance(reason, dict) or not (reason.get("reason") or reason.get("userComment")):
                raise BadRequest(f"{where}.overrideReason needs a reason or a userComment (cds-fb-3)",
                                 f"{where}.overrideReason")
            coding = reason.get("reason")
            if coding is not None:
                if not isinstance(coding, dict) or not isinstance(coding.get("code"), str):
                    raise BadRequest(f"{where}.overrideReason.reason must be a Coding with a code",
                                     f"{where}.overrideReason.reason")
                row["override_code"] = coding["code"][:100]
                row["override_system"] = str(coding.get("system", ""))[:200] or None
                row["override_display"] = str(coding.get("display", ""))[:200] or None
            # The comment is free text and may hold PHI: only the fact that one was given is kept.
            row["has_comment"] = bool(reason.get("userComment"))
        items.append(row)
    return items
