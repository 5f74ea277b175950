"""The documentation site: a strict MkDocs build, then the built site served and used in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import http_folder, launch_chromium

REPO_ROOT = Path(__file__).resolve().parents[1]


def _modules() -> list[str]:
    """Every module of src/ferops (the package's own __init__ aside), as the API reference names them."""
    src = REPO_ROOT / "src" / "ferops"
    names = [path.stem for path in src.glob("*.py") if path.name != "__init__.py"]
    for package in (path.parent for path in src.glob("*/__init__.py")):
        names.append(package.name)
        names += [f"{package.name}.{path.stem}" for path in package.glob("*.py")
                  if path.name != "__init__.py"]
    return sorted(names)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `mkdocs build --strict` writes it (any warning, e.g. a broken link, fails it)."""
    out = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )
    if result.returncode != 0:
        pytest.fail(f"mkdocs build --strict exited {result.returncode}:\n{result.stderr}{result.stdout}")
    return out


def test_the_site_builds_strictly_with_every_page(site):
    assert (site / "index.html").is_file()
    assert (site / "search" / "search_index.json").is_file()
    research_log = (site / "research-log" / "index.html").read_text()
    assert "Research log: the CPU recipe, what was measured" in research_log
    assert "paired_compare.py" in research_log
    # The numbers live once, in the README's results table, which the home page includes.
    home = (site / "index.html").read_text()
    assert "ferplus_test.accuracy" in home and "<table>" in home
    # benchmarks/README.md is included into the Benchmarks page, table and all.
    assert "precision_ab.py" in (site / "benchmarks" / "index.html").read_text()

    reference = site / "reference"
    assert (reference / "index.html").is_file()
    missing = [name for name in _modules() if not (reference / name / "index.html").is_file()]
    assert not missing, f"modules without an API reference page (docs/reference/, mkdocs.yml nav): {missing}"
    # Each page is rendered from the docstrings, not just a title.
    hardware = (reference / "hardware" / "index.html").read_text()
    assert 'id="ferops.hardware.select_precision"' in hardware
    assert "mixed bfloat16" in hardware


def test_readme_is_short_and_its_test_command_is_what_ci_runs():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    blocks = re.findall(r"```bash\n(.*?)\n```", readme.split("## Two commands", 1)[1], flags=re.S)
    install, test = blocks[:2]
    assert install == "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && dvc repro"
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, "the README's test command must be a line of .ci/run, verbatim"


@pytest.fixture(scope="module")
def server(site):
    """The built site over http on a free port of 127.0.0.1, as `mkdocs serve` or a web server would."""
    with http_folder(site) as url:
        yield url


def heading(page) -> str:
    """The page's title as shown, without the permalink sign that follows it."""
    return page.locator("article h1").first.inner_text().removesuffix("¶").strip()


def test_the_site_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # Only the site itself, as offline: nothing from a CDN (web fonts) is needed.
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server)
                       else route.abort())

            # The home page, and a click in the navigation to another page.
            page.goto(server + "/")
            assert heading(page) == "ferops"
            # The results table shows the committed run's headline (reports/metrics.json).
            metrics = json.loads((REPO_ROOT / "reports" / "metrics.json").read_text())
            headline = f"{100 * metrics['private_test']['accuracy']:.2f} %"
            assert headline in page.locator("article").inner_text()
            page.locator("nav.md-nav--primary a.md-nav__link", has_text="Evaluation").first.click()
            page.wait_for_url(server + "/evaluation/")
            assert page.title().startswith("Evaluation")
            assert heading(page) == "Evaluation"

            # Deep pages: the research log, and an API reference page rendered from docstrings.
            page.goto(server + "/research-log/")
            assert heading(page).startswith("Research log")
            assert "fused-e30" in page.locator("article").inner_text()
            page.goto(server + "/reference/hardware/")
            assert page.locator("[id='ferops.hardware.select_precision']").count() == 1

            # Material's search, from the home page: type a query, get results that link to pages of
            # the site. (The site has no mermaid figure: Material would fetch mermaid.js from a CDN,
            # and offline that failure stops its scripts, search included; issues 3743, 7965.)
            page.goto(server + "/")
            search = page.locator("input.md-search__input")
            search.click()
            # Typed keys, once the search index is loaded: Material reads the query on key presses.
            meta = page.locator(".md-search-result__meta")
            meta.filter(has_text="Type to start searching").wait_for(timeout=20_000)
            search.press_sequentially("JAFFE", delay=20)
            links = page.locator("a.md-search-result__link")
            links.first.wait_for(timeout=20_000)
            assert links.count() > 1
            assert "matching document" in meta.inner_text()
            href = links.first.get_attribute("href")
            assert href and href.startswith(server + "/"), href
            page.screenshot(path=str(tmp_path / "search.png"))
            links.first.click()
            page.wait_for_url(re.compile(re.escape(server) + r"/.+"))
            assert "JAFFE" in page.locator("article").inner_text()
        finally:
            browser.close()
