"""The deployment's time zone, read from the environment when a pack is loaded and handed to the pack's Deriver
and rules (core/display.py takes the zone as an argument and never reads the process's state)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from zoneinfo import ZoneInfo

from ..core import display

ZONE_ENV = "PROTOCOL_ENGINE_TIMEZONE"  # an IANA name; unset: UTC (runtime/config.py refuses an unknown one)


def deployment_zone(env: Mapping[str, str] | None = None) -> ZoneInfo:
    return display.zone_named((os.environ if env is None else env).get(ZONE_ENV))
