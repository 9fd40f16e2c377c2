"""Bad settings refuse the start with one clear line and exit 1, under every documented start (probe 17b item 7:
PROTOCOL_ENGINE_PUBLIC_URL without a scheme was accepted, and every JWT `aud` then failed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("url", ["cds.test", "cds.test:8443/x", "ftp://cds.test", "https://", "https://cds.test/?a=1"])
def test_a_public_url_that_is_not_an_absolute_http_url_is_refused(url: str) -> None:
    from protocol_engine.runtime.config import load_settings

    with pytest.raises(ValueError, match="PROTOCOL_ENGINE_PUBLIC_URL"):
        load_settings({"public_url": url})


def test_good_public_urls_are_kept() -> None:
    from protocol_engine.runtime.config import load_settings

    assert load_settings({"public_url": "https://cds.example.org/"}).public_url == "https://cds.example.org"
    assert load_settings({"public_url": "http://127.0.0.1:8080/pe"}).public_url == "http://127.0.0.1:8080/pe"


@pytest.mark.parametrize("start", ["serve", "gunicorn"])
def test_serve_and_gunicorn_refuse_a_schemeless_public_url_without_a_traceback(start: str, tmp_path: Path) -> None:
    env = {**os.environ, "PROTOCOL_ENGINE_PUBLIC_URL": "cds.test", "PROTOCOL_ENGINE_DATABASE_URL":
           f"sqlite:///{tmp_path}/pe.db"}
    if start == "serve":
        args = [sys.executable, "-m", "protocol_engine.cli", "serve", "--bind", "127.0.0.1:0"]
    else:
        args = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--bind", "127.0.0.1:0",
                "server:create_app()"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "not started: PROTOCOL_ENGINE_PUBLIC_URL" in done.stderr and "Traceback" not in done.stderr
