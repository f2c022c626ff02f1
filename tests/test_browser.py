"""The built site in a real headless browser: the theory page's equations are typeset.

Builds the site (``mkdocs build --strict``), serves it on localhost from a thread and opens it
in Debian's Chromium (``/usr/bin/chromium``, installed by ``.ci/run``) driven by Playwright.
Playwright's own browser download is never used. The test fails when MathJax leaves an equation
untypeset, when raw ``$$`` or ``\\(`` remains in the page's text, or when the page fetches
anything from outside localhost (the maths renderer is vendored, so the docs work offline).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    subprocess.run(mkdocs, cwd=ROOT, env=env, check=True, capture_output=True)
    handler = functools.partial(QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    shutil.rmtree(out, ignore_errors=True)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def open_page(browser, url):
    page = browser.new_page()
    external = []
    local = ("http://127.0.0.1", "data:")
    page.on("request", lambda r: None if r.url.startswith(local) else external.append(r.url))
    page.goto(url, wait_until="load")
    return page, external


def test_theory_equations_are_typeset(site, browser):
    page, external = open_page(browser, f"{site}/theory/")
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
    page.evaluate("() => MathJax.startup.promise")
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('.arithmatex')];"
        " return m.length > 0 && m.every(e => e.querySelector('mjx-container')); }",
        timeout=30_000,
    )
    counts = page.evaluate(
        """() => ({
            // a glyph is drawn by a CSS ::before rule; without it the equation is laid out but
            // invisible (what a cleared MathJax cache once did)
            blank: [...document.querySelectorAll('.arithmatex mjx-c')].filter(
                c => getComputedStyle(c, '::before').content === 'none').length,
            glyphs: document.querySelectorAll('.arithmatex mjx-c').length,
            maths: document.querySelectorAll('.arithmatex').length,
            display: document.querySelectorAll('div.arithmatex mjx-container[display]').length,
            typeset: document.querySelectorAll('.arithmatex mjx-container').length,
            errors: document.querySelectorAll('mjx-merror, [data-mjx-error]').length,
        })"""
    )
    text = page.inner_text("article")
    page.close()
    assert counts["maths"] > 100 and counts["typeset"] == counts["maths"], counts
    assert counts["display"] >= 20 and counts["errors"] == 0, counts
    assert counts["glyphs"] > 1000 and counts["blank"] == 0, counts
    for raw in ("$$", "\\(", "\\[", "\\frac"):
        assert raw not in text, f"raw {raw!r} left in the typeset theory page"
    assert not external, f"the page fetched from outside localhost: {external}"


def test_tutorial_page_shows_the_executed_notebook(site, browser):
    """The tutorial page carries the notebook's printed output and its figure, decoded."""
    page, external = open_page(browser, f"{site}/tutorials/first-steps/")
    figures = page.evaluate(
        """() => [...document.querySelectorAll('article img.notebook-figure')]
            .map(i => [i.complete, i.naturalWidth])"""
    )
    text = page.inner_text("article")
    page.close()
    assert figures and all(done and width > 200 for done, width in figures), figures
    assert "population DPO:" in text and "implied rho =" in text  # printed outputs
    assert "# %%" not in text  # the notebook, not the raw jupytext source
    assert not external, f"the page fetched from outside localhost: {external}"
