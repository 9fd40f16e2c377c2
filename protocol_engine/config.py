"""Settings from the environment (PROTOCOL_ENGINE_*), overridable by the app factory's mapping."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "rules"


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
    extra: dict[str, Any] = field(default_factory=dict)


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
    }
    for key, value in (overrides or {}).items():
        name = key.lower().removeprefix("protocol_engine_")
        if name in values or name in ("jwt_leeway",):
            if name == "rules" or (name in ("clients", "site") and value is not None):
                value = Path(value)
            if name == "cors_origins" and isinstance(value, str):
                value = tuple(o.strip() for o in value.split(",") if o.strip())
            values[name] = value
    if values["auth"] not in ("required", "disabled"):
        raise ValueError("PROTOCOL_ENGINE_AUTH must be 'required' or 'disabled'")
    return Settings(**values, extra={k: v for k, v in (overrides or {}).items()})
