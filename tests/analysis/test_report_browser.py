"""The report as a reader sees it: real rows (digits, 2 rounds), the report written, and the
page opened in a real Chromium (the distribution's package, driven by Playwright) at a
desktop width (1366 px) and a phone width (390 px).  Checked there: no console errors,
every image loaded, no page-wide horizontal scroll, the claims within the first screen,
the date and the warmstart version shown.  Screenshots stay under the test's tmp_path
(their paths are printed: ``pytest -s`` shows them)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from engine import __version__
from engine.analysis import report
from engine.schema.config import build
from engine.trial.driver import Driver
from engine.trial.session import start_trial

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # Chromium on a real report

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")  # Debian's package installs /usr/bin/chromium
SCREENS = [(1366, 768, 1), (390, 844, 2)]  # CSS px, and device pixels per CSS px: a phone loads the 2x PNGs
INITS = {
    "random": {"name": "random"},
    "warm": {"name": "warm"},
    "shrink_perturb": {"name": "shrink_perturb", "shrink": 0.6, "perturb": 0.01},
}


def chromium() -> str:
    """The Chromium to drive; without one, a skip with the reason, except on CI (CI=true), where
    a missing browser is a failure (.ci/run installs it)."""
    found = next((shutil.which(name) for name in CHROMIUM if shutil.which(name)), None)
    if found:
        return found
    why = "no Chromium found (apt-get install -y chromium; .ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def page_path(tmp_path_factory) -> Path:
    """Real rows of random init, warm start and shrink-perturb, two seeds, two rounds, with the
    per-epoch table; their report."""
    chromium()  # no browser: skipped (or failed on CI) before training anything
    out = tmp_path_factory.mktemp("results")
    for init in INITS:
        for seed in (0, 1):
            cfg = build(
                {
                    "dataset": {"name": "digits"},
                    "model": {"name": "mlp", "width": 32, "depth": 2},
                    "device": "cpu",
                    "rounds": {"initial": 100, "per_round": 100, "max_rounds": 2},
                    "acquisition": {"name": "margin"},
                    "convergence": {"train_acc": 0.9, "max_epochs": 30},
                    "eval": {"epochs_table": True},
                    "init": INITS[init],
                    "seed": seed,
                }
            )
            with Driver([start_trial(cfg, str(out))]) as driver:
                driver.run()
    lines = report.write_report(str(out))
    return Path(lines[0])


@pytest.mark.parametrize("width, height, scale", SCREENS, ids=[f"{w}px" for w, _, _ in SCREENS])
def test_the_report_reads_on_a_desktop_and_a_phone(page_path, width, height, scale, tmp_path):
    executable = chromium()
    try:
        from playwright import sync_api
    except ImportError:
        why = "playwright is not installed (pip install -e '.[dev]')"
        pytest.fail(why) if os.environ.get("CI") == "true" else pytest.skip(why)
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=scale)
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            screenshot = tmp_path / f"report-{width}px.png"
            page.screenshot(path=str(screenshot), full_page=True)
            first = tmp_path / f"report-{width}px-first-screen.png"
            page.screenshot(path=str(first))
            print(f"screenshots: {screenshot} {first}")

            images = page.eval_on_selector_all(
                "img", "images => images.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.currentSrc])"
            )
            scroll = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            claims = page.locator("#claims").bounding_box()
            lead = page.locator("p.lead").first.inner_text()
        finally:
            browser.close()
    assert errors == []
    assert {"accuracy.png", "pareto.png", "epochs.png", "acquired_classes.png"} <= {src for src, *_ in images}
    assert len(images) >= 4 and all(complete and natural > 0 for _, complete, natural, _ in images), images
    assert all(shown.endswith("@2x.png") == (scale == 2) for *_, shown in images)  # srcset picks by the screen
    assert scroll[0] <= scroll[1], f"the page scrolls sideways: {scroll[0]} px wide in a {scroll[1]} px window"
    assert claims is not None and claims["y"] >= 0 and claims["y"] + claims["height"] <= height, claims
    assert f"warmstart {__version__}" in lead and " UTC" in lead and "ran 20" in lead
