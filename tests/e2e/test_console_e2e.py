"""The console in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) against a
real API process and worker: every page renders without console errors, a job submitted over HTTP
appears on the open jobs page and reaches `succeeded` there without a reload, and each page is
saved as a screenshot under test-artifacts/console/ (the README's tour is made from them)."""

from __future__ import annotations

import os
import shutil
import time

import pandas as pd
import pytest

from kronos_jobs.client import Client
from tests.e2e.harness import ApiProcess
from tests.readme import ROOT

ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def browser():
    binary = next((shutil.which(name) for name in CHROMIUM if shutil.which(name)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        message = "headless Chromium needs chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # CI must run the console test, never skip it
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1360,900",
                     "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def api(stack, tmp_path_factory):
    """The API with keys required: the browser logs in through the console's key form."""
    with ApiProcess(stack, tmp_path_factory.mktemp("console-api") / "api.log", KRONOS_AUTH="on") as process:
        process.key = process.make_key()
        yield process


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


def wait_until(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def shoot(driver, name: str, stack_name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{stack_name}-{name}.png"))


def test_console_in_chromium(browser, api, request):
    from selenium.webdriver.common.by import By

    stack_name = request.node.callspec.id.replace("+", "-")
    browser.get("about:blank")  # a page left by the previous stack's test stops polling its API
    browser.get_log("browser")  # and whatever it logged is not this test's
    browser.delete_all_cookies()
    browser.get(f"{api.url}/console/jobs")  # no key yet: the login form
    assert browser.current_url.endswith("/console/login")
    browser.find_element(By.ID, "key").send_keys(api.key)
    browser.find_element(By.CSS_SELECTOR, "form button").click()
    wait_until(lambda: browser.current_url.endswith("/console/jobs"), what="the login")
    bars = pd.read_csv(ROOT / "examples" / "bars.csv", parse_dates=["timestamp"])
    with Client(api.url, api_key=api.key) as client:
        client.import_series(bars, freq="5min")
        # random:mini, so the pages (and the README's tour) show how random weights are labelled
        schedule = client.create_schedule(name="nightly", cron="0 18 * * 1-5", timezone="America/New_York",
                                          model="random:mini", device="cpu", lookback=48, pred_len=6,
                                          sampling={"seed": 7, "sample_count": 4}, quantiles=[0.1, 0.9])
        client.run_schedule(schedule["id"])

        # the jobs page is open before the job exists: it must appear and finish without a reload
        browser.get(f"{api.url}/console/jobs")
        marker = browser.execute_script("window.__kronos_marker = 1; return window.__kronos_marker;")
        job = client.forecast(bars, model="random:mini", freq="5min", lookback=64, pred_len=12,
                              sample_count=8, seed=3, quantiles=[0.1, 0.9])
        row = f'tr[data-job="{job.id}"]'
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, row), what="the job's row")
        wait_until(lambda: browser.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "succeeded",
                   what="the row to show succeeded")
        assert browser.execute_script("return window.__kronos_marker;") == marker  # no reload happened
        assert job.wait(timeout=60).state == "succeeded"
        wait_until(lambda: all(r["state"] != "running" and r["state"] != "queued" for r in
                               client.schedule_runs(schedule["id"])), what="the schedule run")
    shoot(browser, "jobs", stack_name)
    assert console_errors(browser) == []

    browser.get(f"{api.url}/console/jobs/{job.id}")
    assert browser.find_element(By.ID, "job-state-value").text == "succeeded"
    images = browser.find_elements(By.CSS_SELECTOR, ".charts img")
    assert len(images) == 2  # one chart per symbol
    wait_until(lambda: all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
                           for i in images), what="the charts to load")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "ran on cpu" in body and "rows per chunk" in body and "inference" in body and "random weights" in body
    shoot(browser, "job", stack_name)
    assert console_errors(browser) == []

    expected = {"workers": "forecast.cpu", "queues": "forecast.cpu", "schedules": "nightly",
                "models": "random:mini", "series": "SIM001.XS"}
    for page, text in expected.items():
        browser.get(f"{api.url}/console/{page}")
        assert text in browser.find_element(By.TAG_NAME, "main").text, page
        shoot(browser, page, stack_name)
        assert console_errors(browser) == [], page

    browser.get(f"{api.url}/console/jobs?kind=forecast&state=succeeded")
    assert browser.find_elements(By.CSS_SELECTOR, row)
    browser.get(f"{api.url}/console/jobs?state=failed")
    assert not browser.find_elements(By.CSS_SELECTOR, row)
    assert console_errors(browser) == []
    browser.get("about:blank")
