"""gunicorn's own refusals (request line too long, header too large, malformed HTTP) as FHIR OperationOutcomes.

gunicorn answers requests it cannot parse itself, before the app sees them, with an HTML page
(`gunicorn.util.write_error`). Every other answer of this service is JSON (contract: an OperationOutcome for
every non-200), so an EHR parsing our errors would choke on exactly these. The worker installs `write_error`
below in its own process (BalancedThreadWorker.init_process); the texts are fixed per status and never echo
the refused request (gunicorn's messages quote it, and it may hold a token).
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn import util

from .outcome import operation_outcome

# status -> (OperationOutcome issue code, what the caller is told)
ANSWERS: dict[int, tuple[str, str]] = {
    400: ("invalid", "the request is not well-formed HTTP/1.1"),
    403: ("forbidden", "the request is refused"),
    414: ("too-costly", "the request line (method, path and query) is longer than this service accepts"),
    417: ("not-supported", "the Expect header is not supported"),
    431: ("too-costly", "a request header is larger than this service accepts, or there are too many"),
    501: ("not-supported", "the transfer coding is not supported"),
}
FALLBACK = ("exception", "internal error; it has been logged")


def write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for gunicorn.util.write_error: the same status line, an OperationOutcome body."""
    code, message = ANSWERS.get(status_int, FALLBACK if status_int >= 500 else ("invalid", reason))
    body = json.dumps(operation_outcome(code, message)).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/fhir+json\r\n"
            f"Cache-Control: no-store\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    """Make this (worker) process answer gunicorn's refusals with write_error."""
    util.write_error = write_error
