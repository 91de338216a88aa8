"""End to end: `streamlit run` on a free loopback port over a fixture catalog, every page loaded in
headless Chromium through Playwright; any exception box, error alert or page script error fails.
Screenshots go to the test's tmp folder, and to RF1M_SCREENSHOTS (e.g. docs/screenshots) when set.

The browser is Debian's `chromium` (no Playwright browser download: only package registries are
reachable). When it is missing and the test runs as root with apt-get, the fixture installs it
(`apt-get install -y chromium`, ~30 s, ~500 MB); CHROMIUM names another binary.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
sync_api = pytest.importorskip("playwright.sync_api")

from bench.bench_dashboard import build  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAGES = {"overview": ("", "Overview"), "annotators": ("annotators", "Annotators"),
         "rfnet": ("rfnet", "RFNet vs people"), "gallery": ("gallery", "Gallery"),
         "generation": ("generation", "Generation"), "releases": ("releases", "Releases")}
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"][data-test-connection-state="CONNECTED"]'
RENDERED = """() => [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')].every(e => e.querySelector('canvas,svg'))
  && [...document.querySelectorAll('[data-testid="stImage"] img')].every(i => i.complete && i.naturalWidth > 0)"""
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


def find_chromium() -> str | None:
    names = [os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if not found and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=900)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
        found = find_chromium()
    if not found:
        pytest.skip("no Chromium: apt-get install chromium (Debian), or set CHROMIUM to a Chrome binary")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("dash-e2e")
    build(base / "data", base / "releases", batches=3, labels=300, seed=4, images=True)
    port = free_port()
    env = {**os.environ, "RF1M_DATA": str(base / "data"), "RF1M_RELEASES": str(base / "releases"),
           "RF1M_RFFT": str(base / "rfft.json")}
    log = open(base / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboards/app.py", "--server.headless", "true",
                             "--server.address", "127.0.0.1", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false"], cwd=REPO, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"streamlit did not start: {(base / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def test_every_page_renders_in_chromium_without_errors(server, chromium, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page_errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        for name, (path, title) in PAGES.items():
            page.goto(f"{server}/{path}")
            page.wait_for_selector(IDLE, timeout=60_000)
            page.wait_for_selector(f'h1:has-text("{title}")', timeout=60_000)
            page.wait_for_selector('[data-testid="stMainBlockContainer"] [data-testid="stSkeleton"]',
                                   state="detached", timeout=60_000)
            page.wait_for_function(RENDERED, timeout=60_000)
            errors = page.locator(ERRORS)
            assert errors.count() == 0, f"{name}: {errors.first.inner_text()}"
            content = '[data-testid="stImage"] img' if name == "gallery" else '[data-testid="stMetricValue"]'
            assert page.locator(content).count() > 0, f"{name}: nothing rendered"
            height = page.evaluate("document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollHeight")
            page.set_viewport_size({"width": 1400, "height": min(6000, height + 200)})
            page.screenshot(path=str(shots / f"{name}.png"))
            page.set_viewport_size({"width": 1400, "height": 1000})
        browser.close()
    assert page_errors == []
    assert sorted(f.stem for f in shots.iterdir()) == sorted(PAGES)
    if os.environ.get("RF1M_SCREENSHOTS"):
        dest = Path(os.environ["RF1M_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        for f in shots.iterdir():
            shutil.copy(f, dest / f.name)
