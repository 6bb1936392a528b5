"""The dashboard in a real headless browser (Debian's chromium, driven by Selenium through
Debian's chromedriver) while a real federation service runs: a director serving the page,
two site agents, one model owner's job. The rendered DOM must show the round counter and
the accuracy chart advancing, a killed site shown offline within the heartbeat window, and
the console must stay free of errors (a CSP violation would be one).

``make test`` installs chromium and chromium-driver when absent (``make browser``); where
they cannot be installed this test skips, saying so. ``BASTION_SCREENSHOT=PATH`` saves a
screenshot of the running federation there (the README's ``docs/dashboard.png``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.service import Service, free_port, wait_for

import bastion

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
OFFLINE_AFTER = 2.0  # the dashboard's offline threshold in this test (sites beat every 0.3 s)

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dashboard]')"
)
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "no chromium/chromedriver on this machine: `make browser` (apt-get install chromium "
        "chromium-driver) installs them",
        allow_module_level=True,
    )

SITES = ["site-1", "site-2"]


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[tuple[Service, int]]:
    svc = Service(tmp_path, SITES, ["alice"])
    dash_port = free_port()
    folder = svc.parties["director"]
    port_file = folder / "port"
    try:
        process = svc._spawn(
            "director",
            [
                "director", "start", "--name", "director", "--pki-dir", "pki", "--dir", "state",
                "--host", "127.0.0.1", "--port", str(svc.port), "--port-file", str(port_file),
                "--dashboard", f"127.0.0.1:{dash_port}",
                "--dashboard-offline-after", str(OFFLINE_AFTER),
            ],
            folder,
        )  # fmt: skip
        wait_for(lambda: port_file.is_file() or process.poll() is not None, "the director")
        assert process.poll() is None, svc.output("director")
        for index, site in enumerate(SITES):
            svc.start_site(site, 300, 300 * index, owners=["alice"])
        yield svc, dash_port
    finally:
        svc.stop_all()


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as DriverService

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1100", f"--user-data-dir={tmp_path / 'chromium'}",
                 "--no-first-run", "--disable-background-networking"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options,
        service=DriverService(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "cd.log")),
    )
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: Any, selector: str) -> str:
    """The element's text now; "" while the live page is replacing it (a stale element)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        found = driver.find_elements(By.CSS_SELECTOR, selector)
        return str(found[0].text) if found else ""
    except StaleElementReferenceException:
        return ""


def _chart_points(driver: Any) -> int:
    value = driver.execute_script(
        "const c = document.getElementById('chart'); return c ? c.dataset.points || '0' : '0';"
    )
    return int(value)


def test_the_page_follows_a_running_federation(
    service: tuple[Service, int], browser: Any, tmp_path: Path
) -> None:
    svc, dash_port = service
    alice = bastion.Federation.connect(svc.address, pki=svc.pki("alice"))
    wait_for(lambda: len(alice.sites()) == 2, "two registered sites")
    url = f"http://127.0.0.1:{dash_port}/"
    browser.get(url)
    wait_for(lambda: _text(browser, "#connection") == "live", "the event stream", 30)
    wait_for(lambda: "online" in _text(browser, "#sites tr[data-site='site-2']"), "site-2", 30)
    row = _text(browser, "#sites tr[data-site='site-1']")
    assert "records" in row and "UTC" in row, row  # datasets offered, certificate expiry
    # load time and size of the first (cold) load, measured by the browser itself
    timing = browser.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "const r = performance.getEntriesByType('resource')"
        "  .filter(e => !e.name.includes('/api/stream'));"
        "return {load_ms: n.loadEventEnd - n.startTime, dom_ms: n.domContentLoadedEventEnd,"
        " html: n.encodedBodySize, resources: r.map(e => [e.name, e.encodedBodySize])};"
    )
    size = timing["html"] + sum(size for _, size in timing["resources"])
    report = {**timing, "total_bytes": size}
    print("dashboard page:", json.dumps(report))
    (tmp_path / "page.json").write_text(json.dumps(report))
    if os.environ.get("BASTION_PAGE_REPORT"):
        Path(os.environ["BASTION_PAGE_REPORT"]).write_text(json.dumps(report, indent=1))
    assert size < 200_000, report
    assert timing["load_ms"] < 5000, report

    workspace = svc.workspace(
        "watched", "alice", SITES, rounds=12,
        plan_changes={"tasks": [
            {"name": "validate_global", "kind": "validate", "model": "global"},
            {"name": "train", "kind": "train", "args": {"epochs": 3, "batch_size": 8, "lr": 0.2}},
        ]},
        train_delay=0.3,  # rounds of a tenth of a second would pass between two page updates
    )  # fmt: skip
    job = alice.submit(workspace, sites=SITES)

    counters: list[int] = []
    points: list[int] = []
    screenshot = os.environ.get("BASTION_SCREENSHOT")
    shot_taken = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        counter = _text(browser, "#round-counter")
        if counter.isdigit() and (not counters or int(counter) != counters[-1]):
            counters.append(int(counter))
            points.append(_chart_points(browser))
        if screenshot and not shot_taken and counters and counters[-1] >= 6:
            browser.save_screenshot(screenshot)
            shot_taken = True
        if job.state in ("finished", "failed", "stopped") and counters and counters[-1] >= 12:
            break
        time.sleep(0.1)
    assert job.state == "finished", svc.output("director")
    assert counters[-1] == 12, counters
    assert len([c for c in counters if 0 < c < 12]) >= 2, f"never saw the job mid-way: {counters}"
    assert counters == sorted(counters) and points == sorted(points), (counters, points)
    assert points[-1] == 12 and len(set(points)) >= 3, points
    wait_for(lambda: "accuracy" in _text(browser, "#final"), "the final model's metrics", 30)

    # a site going offline shows within the dashboard's window (a few heartbeats)
    svc.kill("site-2", signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        lambda: "offline" in _text(browser, "#sites tr[data-site='site-2']"),
        "site-2 shown offline",
        OFFLINE_AFTER + 5,
    )
    shown_after = time.monotonic() - killed
    assert shown_after < OFFLINE_AFTER + 3, shown_after
    print(f"site-2 shown offline {shown_after:.2f} s after it was killed")
    assert "online" in _text(browser, "#sites tr[data-site='site-1']")

    errors = [
        entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")
    ]
    assert errors == [], errors
