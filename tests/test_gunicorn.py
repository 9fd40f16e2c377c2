"""The service served for real: gunicorn, 2 workers, loopback HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import ADULT, KETAMINE_ORDER, bp, request_for

pytestmark = pytest.mark.slow


def test_order_sign_over_real_http(gunicorn_server: str, loaded: Any) -> None:
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(172, 104, id="bp-1")]})
    with httpx.Client(base_url=gunicorn_server, timeout=10) as http:
        discovery = http.get("/cds-services")
        assert discovery.status_code == 200 and len(discovery.json()["services"]) == 5
        for _ in range(4):  # both workers answer the same
            response = http.post("/cds-services/ketamine-order-sign", json=body)
            assert response.status_code == 200
            rules = [c["extension"]["protocol-engine"]["rule"] for c in response.json()["cards"]]
            assert rules.count("CI-05") == 1
        assert http.get("/readyz").status_code == 200
        assert "protocol_engine_requests_total" in http.get("/metrics").text
