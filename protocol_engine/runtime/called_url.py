"""The URL a CDS client called, as its JWT's `aud` must name it, when no public URL is configured.

Only what the connection itself proves is used: the scheme of the connection (or of the configured reverse
proxies' X-Forwarded-Proto, through werkzeug's ProxyFix with PROTOCOL_ENGINE_PROXY_HOPS, default none), a Host
name from PROTOCOL_ENGINE_TRUSTED_HOSTS and the port the server listens on. Scheme, host and port are compared
exactly: `Host: localhost:9999` on a service listening on 8080 names another service, whose tokens must not be
accepted here, and so does `X-Forwarded-Proto: https` sent by a client rather than by our proxy.
(gunicorn bound to a unix socket derives SERVER_PORT from the Host header, so there the port check holds
nothing: deployments on a unix socket set PROTOCOL_ENGINE_PUBLIC_URL, as every proxied deployment should.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PORT = {"http": 80, "https": 443}
FORWARDED = ("HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT")


class UntrustedUrl(Exception):
    """Why the URL called cannot be the `aud`; logged, never sent."""


def host_and_port(scheme: str, host: str) -> tuple[str, int]:
    """`localhost:8080` -> ("localhost", 8080); `[::1]` -> ("::1", 80 for http). Raises UntrustedUrl."""
    try:
        parts = urlsplit(f"{scheme}://{host}")
        port = parts.port
    except ValueError as exc:
        raise UntrustedUrl(f"Host {host[:100]!r} is not host[:port]") from exc
    name = (parts.hostname or "").rstrip(".")
    if not name or parts.netloc != host or "@" in host:
        raise UntrustedUrl(f"Host {host[:100]!r} is not host[:port]")
    return name, port if port is not None else DEFAULT_PORT.get(scheme, 0)


def _entry(entry: str) -> tuple[str, int | None]:
    """A trusted-hosts entry: `name`, `name:port`, `::1` (a bare IPv6 address) or `[::1]:8080`."""
    entry = entry.strip().lower()
    if entry.count(":") > 1 and not entry.startswith("["):
        return entry, None
    parts = urlsplit(f"//{entry}")
    return (parts.hostname or entry).rstrip("."), parts.port


def trusted(name: str, port: int, entries: Iterable[str]) -> bool:
    """Whether `name` is a trusted host (exact, or under a `.domain` entry), on the entry's port if it has one."""
    name = name.lower()
    for entry in entries:
        host, pinned = _entry(entry)
        same = name == host or (host.startswith(".") and (name == host[1:] or name.endswith(host)))
        if same and (pinned is None or pinned == port):
            return True
    return False


def served_port(environ: Mapping[str, Any], scheme: str) -> int | None:
    """The port the caller reached: the listening socket's, or as our configured proxy restated the URL."""
    original = environ.get("werkzeug.proxy_fix.orig")
    proxied = isinstance(original, Mapping) and any(
        environ.get(key) != original.get(key) for key in ("wsgi.url_scheme", "HTTP_HOST", "SERVER_PORT"))
    if proxied and not environ.get("HTTP_X_FORWARDED_PORT") and ":" not in str(
            environ.get("HTTP_X_FORWARDED_HOST", "")).rsplit("]", 1)[-1]:
        return DEFAULT_PORT.get(scheme)  # the proxy named scheme (and host) but no port: the scheme's own
    port = str(environ.get("SERVER_PORT", ""))
    return int(port) if port.isdigit() else None


def _local_ip(environ: Mapping[str, Any]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address the connection reached (gunicorn hands its socket over), or None where unknown."""
    sock = environ.get("gunicorn.socket")
    try:
        here = ipaddress.ip_address(str(sock.getsockname()[0]).split("%")[0]) if sock is not None else None
    except (OSError, AttributeError, IndexError, TypeError, ValueError):
        return None
    if isinstance(here, ipaddress.IPv6Address) and here.ipv4_mapped is not None:
        return here.ipv4_mapped
    return here


def check(scheme: str, host: str, environ: Mapping[str, Any], trusted_hosts: Iterable[str]) -> None:
    """Raise UntrustedUrl unless scheme://host is this server as reached, under a trusted host name."""
    name, port = host_and_port(scheme, host)
    try:
        literal = ipaddress.ip_address(name)
    except ValueError:
        literal = None
    here = _local_ip(environ) if literal is not None and not environ.get("werkzeug.proxy_fix.orig") else None
    if literal is not None and here is not None and literal != here:  # `Host: [::1]` on a 127.0.0.1 listener
        raise UntrustedUrl(f"Host {host[:100]!r} names address {literal}, the call came in on {here}")
    listening = served_port(environ, scheme)
    if listening is not None and port != listening:
        raise UntrustedUrl(f"Host {host[:100]!r} names port {port}, the call came in on {listening}")
    if not trusted(name, port, trusted_hosts):
        raise UntrustedUrl(f"Host {host[:100]!r} is not trusted and no PROTOCOL_ENGINE_PUBLIC_URL is set")
