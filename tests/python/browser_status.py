"""Drives headless Chromium (Debian's chromium + chromium-driver) against pool_status's page.

Usage: browser_status.py URL POOL WORKERS

Loads URL, waits until pool POOL shows WORKERS workers and 0 busy, prints READY, waits for a
line on stdin (the test starts a slow request meanwhile), then waits, without reloading, until
the page shows 1 busy worker. Fails on any console error. Prints OK.
"""
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, pool, workers = sys.argv[1], sys.argv[2], sys.argv[3]
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
    opts.add_argument(flag)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def shown(cls):
    # Looked up and read in one step inside the page: the page re-renders its sections as it
    # refreshes, so an element found first and read later may be gone (stale) in between.
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
        f'section[data-pool="{pool}"] .{cls}')


def wait_for(what, cond, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}; page:\n{driver.find_element(By.TAG_NAME, 'body').text}")


try:
    driver.get(url)
    wait_for(f"{workers} workers, none busy", lambda: shown("worker-count") == workers and shown("busy-count") == "0")
    print("READY", flush=True)
    sys.stdin.readline()
    wait_for("a busy worker, without a reload", lambda: shown("busy-count") == "1")
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    if errors:
        raise SystemExit(f"console errors: {errors}")
    title = driver.title
    if title != "ngx-pool status":
        raise SystemExit(f"title {title!r}")
    print("OK", flush=True)
finally:
    driver.quit()
