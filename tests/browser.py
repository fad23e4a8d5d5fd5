"""Open a local HTML file in headless Chromium with the network cut off (Playwright)."""

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-sync",
    "--no-first-run",
    "--disable-component-update",
]


def render(
    path: Path, screenshot: Path, *, wait_ms: int = 2000, width: int = 1200, evaluate: str = "null"
):
    """Load ``path`` offline; return (console errors, external requests, body text, the value of
    the JavaScript expression ``evaluate`` in the page). Skips without chromium."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    external: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = browser.new_context(offline=True, viewport={"width": width, "height": 900})
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            def on_request(route):
                if not route.request.url.startswith(("file:", "data:", "blob:", "about:")):
                    external.append(route.request.url)
                    return route.abort()
                return route.continue_()

            page.route("**/*", on_request)
            page.goto(path.resolve().as_uri())
            page.wait_for_timeout(wait_ms)
            page.screenshot(path=str(screenshot), full_page=True)
            text = page.inner_text("body")
            value = page.evaluate(evaluate)
        finally:
            browser.close()
    return errors, external, text, value
