"""The demo page, end to end in Debian's headless Chromium driven by Playwright, against real gunicorn."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("PROTOCOL_ENGINE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture()
def page(gunicorn_server: str) -> Any:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        tab = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(gunicorn_server + "/")
        yield tab
        browser.close()
        assert not errors, errors


def test_severe_hypertension_patient_shows_a_critical_ci05_card(page: Any) -> None:
    page.wait_for_selector("#patient option[value='severe-hypertension']", state="attached")
    page.select_option("#patient", "severe-hypertension")
    page.select_option("#service", "ketamine-order-sign")
    page.click("#send")
    card = page.wait_for_selector("article.card[data-rule='CI-05']")
    assert card.get_attribute("data-indicator") == "critical"
    assert "184/106 mmHg" in card.inner_text()
    assert page.locator("article.card[data-rule='CI-05'] .detail strong").count() >= 1  # Markdown rendered
    assert page.locator("article.card[data-rule='CI-05'] .overrides li").count() >= 2
    assert page.locator("article.card[data-rule='CI-05'] .suggestions button").count() >= 1
    assert page.locator("#trace tr[data-rule='CI-05'] .fired").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "severe-hypertension.png"), full_page=True)


def test_three_cards_as_the_page_shows_them(page: Any) -> None:
    """A critical, a warning and an info card in the real page: conventional units, zoned times, linked sources.
    The element screenshots are the ones kept in docs/ (card-critical.png, card-warning.png, card-info.png)."""
    ARTIFACTS.mkdir(exist_ok=True)
    for patient, rule, indicator in (("severe-hypertension", "CI-05", "critical"),
                                     ("psychosis-history", "CI-11", "warning"),
                                     ("esketamine", "MON-07", "info")):
        page.wait_for_selector(f"#patient option[value='{patient}']", state="attached")
        page.select_option("#patient", patient)
        page.select_option("#service", "ketamine-order-sign")
        page.click("#send")
        page.wait_for_selector(f"article.card[data-rule='{rule}']")
        # A locator re-finds the card on each use: the page may re-render the list after the first paint.
        card = page.locator(f"article.card[data-rule='{rule}']").first
        assert card.get_attribute("data-indicator") == indicator
        text = card.inner_text()
        assert "mm[Hg]" not in text and "[S]" not in text and "Seed" not in text, text
        link = page.locator(f"article.card[data-rule='{rule}'] .meta a").first
        assert (link.get_attribute("href") or "").startswith("https://")
        card.screenshot(path=str(ARTIFACTS / f"card-{indicator}.png"))


def test_healthy_patient_and_order_editing(page: Any) -> None:
    page.wait_for_selector("#patient option[value='healthy-maintenance']", state="attached")
    page.select_option("#patient", "healthy-maintenance")
    page.click("#send")
    page.wait_for_selector("article.card")
    assert page.locator("article.card.critical, article.card.warning").count() == 0
    page.fill("#dose", "120")  # 120 mg for 68 kg: above 1 mg/kg
    page.click("#send")
    page.wait_for_selector("article.card[data-rule='DOS-01']")
    page.select_option("#drug", label="Simvastatin (not a protocol drug)")
    page.click("#send")
    page.wait_for_selector("[data-testid='no-cards']")


def test_chart_text_cannot_inject_html(page: Any, gunicorn_server: str) -> None:
    page.wait_for_selector("#patient option[value='psychosis-history']", state="attached")
    page.select_option("#patient", "psychosis-history")
    page.click("#send")
    page.wait_for_selector("article.card[data-rule='CI-11']")
    assert page.locator("article.card script, article.card iframe").count() == 0


def test_rule_catalogue_view(page: Any) -> None:
    page.click("#tab-rules")
    page.wait_for_selector("#rules-table tr[data-rule='CI-05']")
    rows = page.locator("#rules-table tbody tr").count()
    assert rows >= 67
    text = page.locator("#rules-table tr[data-rule='CI-05']").inner_text()
    assert "When:" in text and "systolic_limit = 180" in text
    assert "Swiss product information" in text and "SPRAVATO" in text  # every citation, not only the first
    page.fill("#filter", "esketamine")
    assert page.locator("#rules-table tbody tr:not([hidden])").count() < rows
