"""Drives headless Chromium (Debian's chromium + chromium-driver) against pool_status's page.

Usage: browser_status.py URL POOL WORKERS POOLS SCREENSHOT

Loads URL, waits until the overview lists POOLS pools and pool POOL (open) shows WORKERS workers
and 0 busy, prints READY, waits for a line on stdin (the test starts a slow request meanwhile),
then waits, without reloading, until the page shows 1 busy worker and prints BUSY; waits for a
line on stdin again (the test puts load on POOL), then until the pool's requests/s chart has
moved (three samples or more, the last above 0) and its overview row shows a rate; saves a
screenshot to SCREENSHOT. Fails on any console error. Prints OK.
"""
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, pool, workers, pools, screenshot = sys.argv[1:6]
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
    opts.add_argument(flag)
opts.add_argument("--window-size=1280,1000")
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def shown(cls):
    # Looked up and read in one step inside the page: the page re-renders its sections as it
    # refreshes, so an element found first and read later may be gone (stale) in between.
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
        f'section[data-pool="{pool}"] .{cls}')


def js(script, *args):
    return driver.execute_script(script, *args)


def chart(title, attr):
    return js("const e = document.querySelector(`svg[data-chart='${arguments[0]}']`);"
              "return e ? e.dataset[arguments[1]] : null;", title, attr)


def overview(cls):
    return js("const e = document.querySelector(`tr.pool[data-pool='${arguments[0]}'] .${arguments[1]}`);"
              "return e ? e.textContent.trim() : null;", pool, cls)


def wait_for(what, cond, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}; page:\n{driver.find_element(By.TAG_NAME, 'body').text}")


try:
    driver.get(url)
    wait_for(f"{pools} pools in the overview",
             lambda: js("return document.querySelectorAll('tr.pool').length") == int(pools))
    wait_for(f"{workers} workers, none busy", lambda: shown("worker-count") == workers and shown("busy-count") == "0")
    print("READY", flush=True)
    sys.stdin.readline()
    wait_for("a busy worker, without a reload", lambda: shown("busy-count") == "1")
    print("BUSY", flush=True)
    sys.stdin.readline()

    def moving():
        points, last, rps = chart("requests/s", "points"), chart("requests/s", "last"), overview("rps")
        try:
            return int(points) >= 3 and float(last) > 0 and rps not in (None, "-", "0.0")
        except (TypeError, ValueError):
            return False
    wait_for("the requests/s chart to move under load", moving, timeout=30)
    driver.save_screenshot(screenshot)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    if errors:
        raise SystemExit(f"console errors: {errors}")
    title = driver.title
    if title != "ngx-pool status":
        raise SystemExit(f"title {title!r}")
    print("OK", flush=True)
finally:
    driver.quit()
