"""Headless Chromium for the HTML report tests: open a report, collect console errors, hover a
figure and read its tooltip. Tests using it skip when Chromium (Debian package 'chromium';
.ci/run installs it) or playwright is missing. The ``browser`` fixture is registered for
tests/analysis in its conftest.py."""

from __future__ import annotations

import contextlib
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian "
                                    "package 'chromium'; .ci/run installs it), so the rendered "
                                    "report cannot be checked")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for a test module's report tests (starting it takes seconds; it is
    closed at the module's end so that no playwright event loop outlives it)."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def open_report(browser, path):
    """Yield ``(page, problems)``: the report at ``path`` loaded in a new page of ``browser``,
    and a list that collects console errors, page errors and failed requests."""
    problems: list[str] = []
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.goto(path.resolve().as_uri())
        yield page, problems
    finally:
        page.close()


def first_sections(page, n: int = 2) -> list[str]:
    """``TAG#id:first 40 characters`` of the body's first ``n`` elements."""
    return page.evaluate(f"Array.from(document.body.children).slice(0, {n})"
                         ".map(e => e.tagName + '#' + e.id + ':' + e.innerText.slice(0, 40))")


def _tooltip(page, div_id: str, x: float, y: float) -> str:
    for dx in (0.0, 1.0):  # plotly reacts to a move within the plot
        page.mouse.move(x + dx, y)
    page.wait_for_selector(f"#{div_id} .hoverlayer .hovertext", timeout=5000)
    return page.locator(f"#{div_id} .hoverlayer .hovertext").first.text_content()


def hover_heatmap_cell(page, div_id: str) -> str:
    """Move the mouse over the middle of the first heatmap panel and return the tooltip text."""
    panel = page.locator(f"#{div_id} .nsewdrag").first
    panel.scroll_into_view_if_needed()
    box = panel.bounding_box()
    return _tooltip(page, div_id, box["x"] + box["width"] * 0.30, box["y"] + box["height"] * 0.5)


def hover_point(page, div_id: str, trace_name: str, index: int = 0) -> str:
    """Move the mouse onto point ``index`` of the trace named ``trace_name`` (first subplot's
    axes) and return the tooltip text."""
    page.locator(f"#{div_id} .nsewdrag").first.scroll_into_view_if_needed()
    x, y = page.evaluate("""([id, name, i]) => {
        const gd = document.getElementById(id), t = gd.data.find(d => d.name === name);
        const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return [box.left + xa.l2p(t.x[i]), box.top + ya.l2p(t.y[i])];
    }""", [div_id, trace_name, index])
    return _tooltip(page, div_id, x, y)


def sort_first_table_by(page, column: str) -> list[float]:
    """Open the first collapsed table whose header has ``column``, click that header, and
    return the column's numbers in the order shown."""
    return page.evaluate("""(column) => {
        const table = Array.from(document.querySelectorAll('table.sortable')).find(
            t => Array.from(t.tHead.rows[0].cells).some(c => c.textContent === column));
        table.closest('details').open = true;
        const i = Array.from(table.tHead.rows[0].cells).findIndex(c => c.textContent === column);
        table.tHead.rows[0].cells[i].click();
        return Array.from(table.tBodies[0].rows).map(r => parseFloat(r.cells[i].textContent));
    }""", column)
