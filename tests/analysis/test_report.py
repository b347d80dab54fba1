"""The report: files, numbers in CSVs, and the HTML as a person sees it in headless Chromium."""

import csv
import io
import shutil

import matplotlib.image
import pytest

from attrscope.analysis.report import summary_lines, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(comparison_and_log, tmp_path_factory):
    c, _, _ = comparison_and_log
    out = tmp_path_factory.mktemp("report")
    return c, write_report(c, out), out


def test_report_files_and_csv_numbers(report):
    c, paths, out = report
    html = paths["report"].read_text()
    assert html.count('<img class="figure"') == len(list((out / "figures").glob("*.png")))
    for png in (out / "figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "tables" / "overlap.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(c.agreements)
    for row, a in zip(rows, c.agreements):
        assert float(row["spearman_of_means"]) == pytest.approx(a["correlations"]["spearman_of_means"].value)
    with open(out / "tables" / "mean_scores_neurons.csv") as f:
        neuron_rows = list(csv.DictReader(f))
    assert len(neuron_rows) == 3 * 96 and neuron_rows[5]["component"] == "0.5"
    assert float(neuron_rows[5]["ap denoising"]) == pytest.approx(
        float(c.results[("ap", "denoising")].mean("neurons")[0, 5]))
    assert {"verification.csv", "faithfulness.csv", "latent.csv", "correlations.csv",
            "bland_altman.csv", "disagreements.csv"} <= {p.name for p in (out / "tables").iterdir()}
    assert any(line.startswith("  latent heads") for line in summary_lines(c))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package "
                    "'chromium'; .ci/run installs it), so the rendered report cannot be checked")
def test_report_renders_in_headless_chromium(report):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    _, paths, _ = report
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(paths["report"].resolve().as_uri())
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert len(images) >= 8
    assert all(complete and width > 0 for _, complete, width in images), images
    pixels = matplotlib.image.imread(io.BytesIO(shot), format="png")
    assert pixels.std() > 0.05  # not a blank page
    assert (pixels[..., :3] < 0.5).mean() > 0.001  # some dark ink: text, axes, heatmaps
