"""The report in a real browser: headless Chromium renders it, offline, without console errors.

Skipped (with the reason) when no Chromium is installed; ``.ci/run`` installs Debian's ``chromium``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl.report import write_report

from .conftest import RUN_HEADINGS, STUDY_HEADINGS, make_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found (shutil.which('chromium') "
                                "and 'chromium-browser'); install the Debian package 'chromium'")
WINDOW = (1280, 2000)


@dataclass
class Page:
    """What Chromium saw when it opened a file."""

    screenshot: np.ndarray
    dom: str
    console: list[str]
    requests: list[str]


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-background-networking", f"--user-data-dir={tmp / 'profile'}",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def _console(stderr: str) -> list[str]:
    """Console messages and uncaught errors of the page (Chromium logs them as ...:CONSOLE...)."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page itself asked for (site file://) that are neither file: nor data: URLs."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start and "file://" in str(params.get("site_for_cookies", "")):
            urls.append(str(params.get("url")))
    return [u for u in urls if not u.startswith(("file:", "data:"))]


def open_page(html: Path, tmp: Path) -> Page:
    shot, net = tmp / "shot.png", tmp / "net.json"
    first = _chromium(tmp, f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}",
                      f"--log-net-log={net}", html.resolve().as_uri())
    assert shot.is_file(), first.stderr[-2000:]
    dom = _chromium(tmp, "--dump-dom", html.resolve().as_uri())
    image = np.asarray(Image.open(shot).convert("L"), dtype=float)
    return Page(image, dom.stdout, _console(first.stderr + dom.stderr), _page_requests(net))


def assert_clean(page: Page, headings: tuple[str, ...]) -> None:
    assert page.screenshot.shape == (WINDOW[1], WINDOW[0])
    assert page.screenshot.std() > 10, "the screenshot is blank"
    for heading in headings:
        assert f"<h2>{heading}</h2>" in page.dom, heading
    assert page.console == [], page.console
    assert page.requests == [], page.requests


def test_run_report_in_chromium(binary_run: Path, tmp_path: Path) -> None:
    html = write_report(binary_run, tmp_path / "report.html", n_boot=50)
    page = open_page(html, tmp_path)
    assert_clean(page, RUN_HEADINGS)
    assert page.dom.count('<div class="card">') >= 4


def test_study_report_in_chromium(tmp_path: Path) -> None:
    html = write_report(make_study(tmp_path))
    assert_clean(open_page(html, tmp_path), STUDY_HEADINGS)


def test_the_checks_catch_a_leaky_page(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><h2>Protocol</h2><img src="http://example.com/x.png">'
                   '<script>console.error("boom"); missingFunction();</script></body></html>')
    page = open_page(bad, tmp_path)
    assert any("boom" in line for line in page.console)
    assert any("Uncaught" in line for line in page.console)
    assert page.requests == ["http://example.com/x.png"]
    with pytest.raises(AssertionError):
        assert_clean(page, ("Protocol",))
