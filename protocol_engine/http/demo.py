"""The web page and the synthetic sample data it sends (never a real patient's)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, g, jsonify, request, send_from_directory

from ..authoring.samples import sample, sample_index, sample_request
from .common import outcome, registry

STATIC = Path(__file__).resolve().parent.parent / "static"

demo = Blueprint("demo", __name__)


@demo.get("/")
def index() -> Response:
    return send_from_directory(STATIC, "index.html")


@demo.get("/static/<path:name>")
def static_file(name: str) -> Response:
    return send_from_directory(STATIC, name)


@demo.get("/demo/patients")
def demo_patients() -> Response:
    return jsonify(sample_index())


@demo.get("/demo/request")
def demo_request() -> Response:
    """A ready CDS Hooks request for a sample patient and service (synthetic data only)."""
    rt = registry().current.runtimes.get(request.args.get("service", ""))
    if rt is None:
        return outcome(404, "not-found", "no such service")
    body = sample_request(request.args.get("patient", ""), rt.service.hook, g.now, rt.resource_types())
    if body is None:
        return outcome(404, "not-found", "no such sample patient")
    return jsonify(body)


@demo.get("/demo/patients/<name>")
def demo_patient(name: str) -> Response:
    data = sample(name)
    if data is None:
        return outcome(404, "not-found", "no such sample patient")
    return jsonify(data)
