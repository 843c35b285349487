#!/usr/bin/env python3
"""The gateway's /docs page in a real browser (Debian's headless Chromium,
driven by selenium). Run by tests/openapi.rs; exits non-zero on failure.

    .venv/bin/python tests/python/docs_page_check.py --url http://127.0.0.1:8080

Checks that Swagger UI renders the gateway's document (the predict and v2
infer operations are listed) and that every request the page makes goes
to the gateway itself: nothing from a CDN, no validator badge.
"""

import argparse
import json
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

# Debian's packages (scripts/setup installs them); named, so that selenium
# never looks for (or downloads) a browser or driver of its own.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="the gateway, e.g. http://127.0.0.1:8080")
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: tests may run as root, where Chromium's sandbox refuses to start.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(args.url + "/docs/")
        WebDriverWait(driver, 30).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
        paths = [e.get_attribute("data-path") for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")]
        for wanted in ("/v1/models/{name}/predict", "/v2/models/{name}/infer", "/health/ready"):
            assert wanted in paths, f"{wanted} is not listed on /docs: {paths}"
        requested = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                requested.append(message["params"]["request"]["url"])
        foreign = [u for u in requested if not u.startswith((args.url + "/", "data:", "blob:"))]
        assert not foreign, f"the page fetched from elsewhere: {foreign}"
        assert any(u.endswith("/openapi.json") for u in requested), requested
    finally:
        driver.quit()
    print(f"docs page check: ok ({len(paths)} operations, {len(requested)} requests, all to the gateway)")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        sys.exit(f"docs page check failed: {e}")
