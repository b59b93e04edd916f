"""The dashboard in a real browser, against a real server with a deployed app and real traffic."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CoveEnv, host_request
from tests.integration.dashboard_app import deploy_dash

pytestmark = pytest.mark.integration

Page = Any  # playwright.sync_api.Page: imported only when Chromium is there


def test_pages_show_the_app_and_move_with_requests_and_logs(
    cove_env: CoveEnv, tmp_path: Path, browser_page: Page, artifacts: Path
) -> None:
    """The apps page shows the app and its URL; a request moves the counter and the latency chart;
    a line the function prints shows in the live log view within 2 s; every page is captured."""
    from playwright.sync_api import expect

    page = browser_page
    url, dashboard = deploy_dash(cove_env, tmp_path)

    page.goto(dashboard + "/")
    row = page.locator('tr[data-app="dash"]')
    expect(row).to_contain_text("deployed")
    expect(row.get_by_role("link", name=url)).to_be_visible()
    page.keyboard.press("Tab")  # the first stop is the skip link
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.screenshot(path=str(artifacts / "apps.png"), full_page=True)

    host_request("GET", url + "/?name=first")  # a container, and a first point on the charts
    page.goto(dashboard + "/apps/deployed/dash")
    expect(page.locator('tr[data-function="hello"]')).to_contain_text(url)
    page.screenshot(path=str(artifacts / "app.png"), full_page=True)

    page.goto(dashboard + "/apps/deployed/dash/traffic/hello")
    chart = page.locator("#chart-latency")
    expect(chart).to_have_attribute("data-requests", "1")
    expect(page.locator("#chart-latency canvas")).to_be_visible()
    expect(page.locator("#requests-total")).to_have_text("1")
    host_request("GET", url + "/?name=second")
    expect(page.locator("#requests-total")).to_have_text("2", timeout=10_000)
    expect(chart).to_have_attribute("data-requests", "2", timeout=10_000)
    page.screenshot(path=str(artifacts / "traffic.png"), full_page=True)

    page.goto(dashboard + "/logs?app=dash&kind=deployed&function=hello")
    expect(page.locator("#log-status")).to_contain_text("Live")
    marker = f"m{time.monotonic_ns()}"
    host_request("GET", f"{url}/?name={marker}")
    expect(page.get_by_text(f"hello-log {marker}")).to_be_visible(timeout=2_000)
    page.screenshot(path=str(artifacts / "logs.png"), full_page=True)

    page.goto(dashboard + "/containers")
    expect(page.locator("tr[data-container]")).to_contain_text("hello")
    page.screenshot(path=str(artifacts / "containers.png"), full_page=True)


def test_stopping_an_app_from_the_ui_makes_its_url_answer_404(
    cove_env: CoveEnv, tmp_path: Path, browser_page: Page, artifacts: Path
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    url, dashboard = deploy_dash(cove_env, tmp_path)
    assert host_request("GET", url + "/").status_code == 200
    page.goto(dashboard + "/apps/deployed/dash")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Stop app").click()
    expect(page.locator(".summary .state")).to_have_text("stopped")
    page.screenshot(path=str(artifacts / "app-stopped.png"), full_page=True)
    gone = host_request("GET", url + "/")
    assert gone.status_code == 404 and "is stopped" in gone.text
