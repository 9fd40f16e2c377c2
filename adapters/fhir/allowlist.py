"""Which FHIR servers this service may contact: origin plus path-segment prefix, never a string prefix.

An entry is a base URL (`https://ehr.example.org/fhir/R4`). A URL is within it when scheme, host and port are
equal and the entry's path segments begin the URL's path segments, so `http://host:1842` never admits
`http://host:18421` and `/fhir` never admits `/fhir-admin`. An entry without a scheme means https; plain http
is allowed only for an entry that says `http://`. Host names are compared as written (lower-cased): a decimal
or shortened IP is a different host, so it is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class Base:
    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]

    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


def parse(url: str, default_scheme: str | None = None) -> Base | None:
    """The parts of an absolute http(s) URL, or None for anything we will not contact."""
    if not isinstance(url, str) or any(c in url for c in "\\\t\r\n ") or any(ord(c) < 32 for c in url):
        return None
    if default_scheme and "://" not in url:
        url = f"{default_scheme}://{url}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None or parts.password is not None:
        return None
    segments = tuple(s for s in parts.path.split("/") if s)
    for segment in segments:
        plain = unquote(segment)
        if plain in (".", "..") or "/" in plain or "\\" in plain:
            return None
    return Base(scheme, parts.hostname.lower().rstrip("."), port or DEFAULT_PORTS[scheme], segments)


def within(url: str, base: Base) -> bool:
    target = parse(url)
    return (target is not None and target.origin() == base.origin()
            and target.segments[:len(base.segments)] == base.segments)


class AllowList:
    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(entries)
        self.bases: list[Base] = []
        for entry in self.entries:
            base = parse(entry.strip().rstrip("/"), default_scheme="https")
            if base is None:
                raise ValueError(f"FHIR server allow-list entry {entry!r} is not an http(s) base URL")
            self.bases.append(base)

    def permits(self, url: str) -> bool:
        return any(within(url, base) for base in self.bases)

    def __bool__(self) -> bool:
        return bool(self.bases)
