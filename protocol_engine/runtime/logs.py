"""Logging that never carries a JWT or an access token, whatever a caller puts in a message."""

from __future__ import annotations

import logging
import re
import sys

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+|access_token[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+")


class RedactingFilter(logging.Filter):
    """Defence in depth: the code never logs tokens, and this scrubs anything that looks like one."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _BEARER.sub(r"\1[redacted]", _JWT.sub("[jwt redacted]", message))
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if any(getattr(h, "_protocol_engine", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler._protocol_engine = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    for name in ("httpx", "httpcore", "durable", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
