"""The HTML report renders in a real browser (headless Chromium): a screenshot is taken and the rendered page
has every expected section, its tables and its inlined images.

Needs ``/usr/bin/chromium`` (Debian's ``chromium`` package; ``.ci/run`` installs it). Skipped only when it is
missing *and* ``CI`` is unset: in CI the test must run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.slow

SECTIONS = {
    "summary": "Summary for the curation team",
    "validation": "Validation by retraining",
    "harmful": "Top harmful pairs",
    "redundant": "Top redundant pairs",
    "higher-order": "Higher-order interactions (degree 3)",
    "heatmaps": "Heatmaps of pairwise scores",
    "faithfulness": "How far to trust this: faithfulness vs budget",
    "config": "Run configuration",
    "files": "Files and exports",
}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


@pytest.fixture(scope="module")
def browser():
    exe = chromium()
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI is set but chromium is not installed (.ci/run installs Debian's chromium package)")
        pytest.skip("chromium is not installed (apt-get install chromium); runs in CI")
    return exe


def _run(exe, profile, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_report_renders_in_chromium(browser, tmp_path):
    from tests.test_report import synthetic_run

    page = os.path.join(synthetic_run(), "report", "report.html")
    url = "file://" + page

    # the DOM after rendering (Chromium parsed the page, laid it out and decoded every image)
    dom = _run(browser, tmp_path / "p1", "--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    for sid, title in SECTIONS.items():
        assert re.search(rf'<section id="{sid}"><h2>{re.escape(title)}</h2>', html), sid
    assert html.count("<table>") >= 4  # actions, harmful, redundant, triples, faithfulness
    assert html.count('src="data:image/png;base64,') >= 3
    assert "relabel both as" in html and "planted harmful pairs found" in html.lower()

    # a screenshot of the whole report: taken, a real PNG, and not blank
    shot = tmp_path / "report.png"
    proc = _run(browser, tmp_path / "p2", "--window-size=1400,3000", f"--screenshot={shot}", url)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 3000)
        colours = im.convert("RGB").resize((140, 300)).getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50  # text, tables, the header band and heatmaps: not blank
    keep = os.environ.get("DATASPEX_SCREENSHOT_DIR")
    if keep:  # CI can keep the screenshot as an artefact
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, "report.png"))
