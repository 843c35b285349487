#!/usr/bin/env python3
"""The gateway's /docs page in a real browser (Debian's headless Chromium,
driven by selenium). Run by tests/openapi.rs; exits non-zero on failure.

    .venv/bin/python tests/python/docs_page_check.py --url http://127.0.0.1:8080

Checks that Swagger UI renders the gateway's document (the predict and v2
infer operations are listed) and that every request the page makes goes
to the gateway itself: nothing from a CDN, no validator badge. With
--image and --label, it also does what a user tries first: opens the
predict operation, "Try it out", names the model, uploads the image,
"Execute", and reads the label from the answer the page shows.
"""

import argparse
import json
import sys
from pathlib import Path

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
    parser.add_argument("--model", default="digits", help="the model to ask through Try it out")
    parser.add_argument("--image", type=Path, help="an image to upload through Try it out")
    parser.add_argument("--label", help="the label the answer must give first for --image")
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
        if args.image:
            label = try_it_out(driver, args.model, args.image.resolve())
            assert label == args.label, f"Try it out answered {label!r} for {args.image}, not {args.label!r}"
            print(f"docs page check: Try it out with {args.image.name} answered {label!r}")
    finally:
        driver.quit()
    print(f"docs page check: ok ({len(paths)} operations, {len(requested)} requests, all to the gateway)")


def try_it_out(driver, model: str, image: Path) -> str:
    """Predict through the page as a user does; the first label answered."""
    wait = WebDriverWait(driver, 30)
    # The operation's own block (class "opblock" exactly, not the sections around it).
    block = driver.find_element(
        By.XPATH,
        "//div[contains(concat(' ', normalize-space(@class), ' '), ' opblock ')]"
        "[.//*[@data-path='/v1/models/{name}/predict']]",
    )
    block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(lambda _: block.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    block.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    name = wait.until(lambda _: block.find_element(By.CSS_SELECTOR, "tr[data-param-name='name'] input"))
    name.clear()  # the document's example fills it in
    name.send_keys(model)
    wait.until(lambda _: block.find_element(By.CSS_SELECTOR, "input[type='file']")).send_keys(str(image))
    block.find_element(By.CSS_SELECTOR, ".execute").click()
    shown = ".live-responses-table .response-col_description pre, .live-responses-table .microlight"
    bodies = wait.until(lambda _: [e.text for e in block.find_elements(By.CSS_SELECTOR, shown) if "predictions" in e.text])
    return json.loads(bodies[0])["predictions"][0]["label"]


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        sys.exit(f"docs page check failed: {e}")
