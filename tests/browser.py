"""Open a local HTML file in headless Chromium with the network cut off (Playwright).

:func:`render` returns console errors, external requests, the body text and one evaluated
expression; :func:`inspect_page` also measures how much "ink" (pixels that differ from the
element's background colour) every element matching a CSS selector shows in its own screenshot
— a blank plot or an empty zoom panel has none — and can write one screenshot per ``<h2>``
section. Both skip cleanly without chromium or playwright.
"""

import base64
import shutil
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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

# Of a PNG (data: URI, drawn on a canvas in a blank page): ``ink``, the fraction of pixels that
# differ from its most common colour (the background), and ``colour``, the fraction of clearly
# coloured pixels (max - min channel > 60) — data traces, heat-map cells, coloured tokens;
# axes, grid lines, text and plotly's pale plot area are not coloured.
_INK = """async (uri) => {
  const img = new Image(); img.src = uri; await img.decode();
  const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const counts = new Map(); let best = 0, bg = 0;
  for (let i = 0; i < d.length; i += 4) {
    const k = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
    const n = (counts.get(k) || 0) + 1; counts.set(k, n);
    if (n > best) { best = n; bg = k; }
  }
  let colour = 0;
  for (let i = 0; i < d.length; i += 4) {
    const hi = Math.max(d[i], d[i + 1], d[i + 2]), lo = Math.min(d[i], d[i + 1], d[i + 2]);
    if (hi - lo > 60) colour++;
  }
  return {ink: 1 - best / (d.length / 4), colour: colour / (d.length / 4)};
}"""

_SECTIONS = """Array.from(document.querySelectorAll('h2[id]')).map((h, i, all) => {
  const top = h.getBoundingClientRect().top + window.scrollY;
  const next = i + 1 < all.length ? all[i + 1].getBoundingClientRect().top + window.scrollY
                                  : document.documentElement.scrollHeight;
  return {id: h.id || String(i), top: top, height: next - top};
})"""


@contextmanager
def _page(path: Path, *, wait_ms: int, width: int):
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
            yield context, page, errors, external
        finally:
            browser.close()


def render(
    path: Path, screenshot: Path, *, wait_ms: int = 2000, width: int = 1200, evaluate: str = "null"
):
    """Load ``path`` offline; return (console errors, external requests, body text, the value of
    the JavaScript expression ``evaluate`` in the page). Skips without chromium."""
    with _page(path, wait_ms=wait_ms, width=width) as (_, page, errors, external):
        page.screenshot(path=str(screenshot), full_page=True)
        text = page.inner_text("body")
        value = page.evaluate(evaluate)
    return errors, external, text, value


def inspect_page(
    path: Path,
    *,
    selectors: Sequence[str] = (),
    evaluate: str = "null",
    sections_dir: Path | None = None,
    wait_ms: int = 3000,
    width: int = 1200,
) -> dict[str, Any]:
    """Load ``path`` offline and return ``errors``, ``external``, ``text``, ``value`` (of
    ``evaluate``), ``ink`` ({selector: [{"ink": ..., "colour": ...} per matching element]},
    see ``_INK``) and ``sections`` (the PNG written per ``<h2>`` section into
    ``sections_dir``, if given)."""
    with _page(path, wait_ms=wait_ms, width=width) as (context, page, errors, external):
        shots: dict[str, list[bytes]] = {}
        for selector in selectors:
            shots[selector] = []
            for element in page.query_selector_all(selector):
                element.scroll_into_view_if_needed()
                shots[selector].append(element.screenshot())
        sections = []
        if sections_dir is not None:
            sections_dir.mkdir(parents=True, exist_ok=True)
            # One viewport per section, scrolled to it: full-page captures stop at Chromium's
            # largest texture (~16k px), which a two-model page exceeds.
            for i, s in enumerate(page.evaluate(_SECTIONS)):
                out = sections_dir / f"{i:02d}_{s['id']}.png"
                height = int(min(max(1, s["height"]), 15000))
                page.set_viewport_size({"width": width, "height": height})
                scrolled = page.evaluate(f"window.scrollTo(0, {s['top']}); window.scrollY")
                y = max(0.0, s["top"] - scrolled)
                clip = {"x": 0, "y": y, "width": width, "height": max(1, height - y)}
                page.screenshot(path=str(out), clip=clip)
                sections.append(out)
            page.set_viewport_size({"width": width, "height": 900})
        text = page.inner_text("body")
        value = page.evaluate(evaluate)
        blank = context.new_page()
        blank.set_content("<html><body></body></html>")
        ink = {
            sel: [
                blank.evaluate(_INK, "data:image/png;base64," + base64.b64encode(png).decode())
                for png in pngs
            ]
            for sel, pngs in shots.items()
        }
    return {
        "errors": errors,
        "external": external,
        "text": text,
        "value": value,
        "ink": ink,
        "sections": sections,
    }
