"""The exception tree and compiler-style diagnostics; each HTTP-facing error carries its status."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ProtocolEngineError(Exception):
    status = 500
    code = "exception"


class BadRequest(ProtocolEngineError):
    """The request breaks the CDS Hooks contract; `field` names the offending member."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownService(ProtocolEngineError):
    status = 404
    code = "not-found"


class PrefetchUnavailable(ProtocolEngineError):
    """Data the service needs is neither prefetched nor obtainable (CDS Hooks 412)."""

    status = 412
    code = "processing"

    def __init__(self, keys: list[str], reason: str, detail: str = "") -> None:
        super().__init__(f"prefetch unavailable for {', '.join(keys)}: {reason}")
        self.keys = keys
        self.reason = reason
        # What the FHIR server did (status, timeout, size): logged only, so a caller cannot use the answer
        # to probe which hosts and ports the service can reach.
        self.detail = detail


@dataclass(frozen=True)
class Diagnostic:
    path: str
    line: int
    col: int
    code: str
    message: str
    hint: str | None = None
    severity: str = "error"
    length: int = 1

    def render(self, source: str | None = None) -> str:
        head = f"{self.path}:{self.line}:{self.col}: {self.severity}[{self.code}]: {self.message}"
        if source is None:
            try:
                source = Path(self.path).read_text(encoding="utf-8")
            except OSError:
                source = ""
        lines = source.splitlines()
        out = [head]
        if 1 <= self.line <= len(lines):
            text = lines[self.line - 1]
            gutter = f"{self.line:>4} | "
            out.append(gutter + text)
            caret = " " * (len(gutter) - 2) + "| " + " " * max(self.col - 1, 0) + "^" * max(self.length, 1)
            out.append(caret + (f" {self.hint}" if self.hint else ""))
        elif self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


class PackSetError(ProtocolEngineError):
    """A rule set failed validation; the service keeps the previous rule set."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__(f"{len(diagnostics)} error(s) in rule files")
        self.diagnostics = diagnostics
