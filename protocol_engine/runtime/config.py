"""Settings from the environment (PROTOCOL_ENGINE_*), overridable by the app factory's mapping."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_RULES = Path(__file__).resolve().parent.parent.parent / "rules"


@dataclass(frozen=True)
class Settings:
    rules: Path = DEFAULT_RULES
    database_url: str = "sqlite:///var/protocol-engine.db"
    auth: str = "required"  # required | disabled
    clients: Path | None = None
    site: Path | None = None  # site settings overlay (PROTOCOL_ENGINE_SITE)
    cors_origins: tuple[str, ...] = ()
    max_body: int = 5 * 1024 * 1024
    fhir_timeout: float = 2.0
    request_deadline: float = 3.0
    jwt_leeway: int = 60
    admin_token: str | None = None
    # The URL EHRs call us at (scheme://host[:port][/prefix]); JWT `aud` is checked against it, never the Host header.
    public_url: str | None = None
    # Host names whose Host header may form the expected `aud` when no public URL is configured (loopback by default).
    trusted_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    # Reverse proxies in front of us whose X-Forwarded-* headers are believed (werkzeug ProxyFix). 0: none, so a
    # client's X-Forwarded-Proto / -Host / -Port never changes the URL we think we were called at.
    proxy_hops: int = 0
    # FHIR server base URLs this service may fetch from when authentication is disabled (per client otherwise).
    fhir_servers: tuple[str, ...] = ()
    fhir_max_bytes: int = 20 * 1024 * 1024
    # All FHIR answers of one hook call together (every key, page and Medication read): bounds a call's memory.
    fhir_request_max_bytes: int = 32 * 1024 * 1024
    fhir_concurrency: int = 4  # simultaneous fetches per FHIR server, per worker
    jwt_max_lifetime: int = 300  # seconds a token may live beyond its iat (CDS Hooks: short-lived tokens)
    jwks_refresh: float = 300.0  # seconds between background JWKS refreshes
    jwks_max_bytes: int = 1024 * 1024  # a larger key set download is refused; the last good keys stay
    max_feedback_items: int = 100
    # Days feedback for a card not on record waits for the card's decision to land before it is deleted.
    unmatched_feedback_days: float = 7.0
    extra: dict[str, Any] = field(default_factory=dict)


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(o.strip() for o in (value or "").split(",") if o.strip())


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    env = os.environ
    values: dict[str, Any] = {
        "rules": Path(env.get("PROTOCOL_ENGINE_RULES", str(DEFAULT_RULES))),
        "database_url": env.get("PROTOCOL_ENGINE_DATABASE_URL", "sqlite:///var/protocol-engine.db"),
        "auth": env.get("PROTOCOL_ENGINE_AUTH", "required"),
        "clients": Path(env["PROTOCOL_ENGINE_CLIENTS"]) if env.get("PROTOCOL_ENGINE_CLIENTS") else None,
        "site": Path(env["PROTOCOL_ENGINE_SITE"]) if env.get("PROTOCOL_ENGINE_SITE") else None,
        "cors_origins": tuple(o.strip() for o in env.get("PROTOCOL_ENGINE_CORS_ORIGINS", "").split(",") if o.strip()),
        "max_body": int(env.get("PROTOCOL_ENGINE_MAX_BODY", 5 * 1024 * 1024)),
        "fhir_timeout": float(env.get("PROTOCOL_ENGINE_FHIR_TIMEOUT", 2.0)),
        "request_deadline": float(env.get("PROTOCOL_ENGINE_REQUEST_DEADLINE", 3.0)),
        "admin_token": env.get("PROTOCOL_ENGINE_ADMIN_TOKEN") or None,
        "public_url": (env.get("PROTOCOL_ENGINE_PUBLIC_URL") or "").rstrip("/") or None,
        "trusted_hosts": _csv(env.get("PROTOCOL_ENGINE_TRUSTED_HOSTS")) or Settings.trusted_hosts,
        "proxy_hops": int(env.get("PROTOCOL_ENGINE_PROXY_HOPS", 0)),
        "fhir_servers": _csv(env.get("PROTOCOL_ENGINE_FHIR_SERVERS")),
        "fhir_max_bytes": int(env.get("PROTOCOL_ENGINE_FHIR_MAX_BYTES", 20 * 1024 * 1024)),
        "fhir_request_max_bytes": int(env.get("PROTOCOL_ENGINE_FHIR_REQUEST_MAX_BYTES", 32 * 1024 * 1024)),
        "fhir_concurrency": int(env.get("PROTOCOL_ENGINE_FHIR_CONCURRENCY", 4)),
        "jwt_max_lifetime": int(env.get("PROTOCOL_ENGINE_JWT_MAX_LIFETIME", 300)),
        "jwks_refresh": float(env.get("PROTOCOL_ENGINE_JWKS_REFRESH", 300.0)),
        "jwks_max_bytes": int(env.get("PROTOCOL_ENGINE_JWKS_MAX_BYTES", 1024 * 1024)),
        "max_feedback_items": int(env.get("PROTOCOL_ENGINE_MAX_FEEDBACK_ITEMS", 100)),
        "unmatched_feedback_days": float(env.get("PROTOCOL_ENGINE_UNMATCHED_FEEDBACK_DAYS", 7.0)),
    }
    for key, value in (overrides or {}).items():
        name = key.lower().removeprefix("protocol_engine_")
        if name in values or name in ("jwt_leeway",):
            if name == "rules" or (name in ("clients", "site") and value is not None):
                value = Path(value)
            if name in ("cors_origins", "trusted_hosts", "fhir_servers") and isinstance(value, str):
                value = _csv(value)
            elif name in ("cors_origins", "trusted_hosts", "fhir_servers"):
                value = tuple(value)
            if name == "public_url" and value:
                value = str(value).rstrip("/")
            values[name] = value
    from ..core.display import zone_problem
    from ..pack.zone import ZONE_ENV

    problem = zone_problem(env.get(ZONE_ENV, "").strip() or "UTC")
    if problem:  # cards would show times in a zone nobody asked for: refuse to start
        raise ValueError(f"{ZONE_ENV}: {problem}")
    if values["public_url"]:
        from urllib.parse import urlsplit

        parts = urlsplit(str(values["public_url"]))
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"PROTOCOL_ENGINE_PUBLIC_URL must be the absolute URL EHRs call, with its scheme "
                             f"(e.g. https://cds.example.org), not {str(values['public_url'])[:100]!r}")
    if int(values["proxy_hops"]) < 0:
        raise ValueError("PROTOCOL_ENGINE_PROXY_HOPS must be 0 or more")
    if values["auth"] not in ("required", "disabled"):
        raise ValueError("PROTOCOL_ENGINE_AUTH must be 'required' or 'disabled'")
    return Settings(**values, extra={k: v for k, v in (overrides or {}).items()})
