"""The report: files, numbers in CSVs, and the HTML as a person sees it in headless Chromium."""

import csv
import io

import matplotlib.image
import pytest

from attrscope.analysis.report import summary_lines, write_report
from tests.analysis.chromium import (first_sections, hover_heatmap_cell, needs_chromium, open_report,
                                     sort_first_table_by)


@pytest.fixture(scope="module")
def report(comparison_and_log, tmp_path_factory):
    c, _, _ = comparison_and_log
    out = tmp_path_factory.mktemp("report")
    return c, write_report(c, out), out


def test_report_files_and_csv_numbers(report):
    c, paths, out = report
    html = paths["report"].read_text()
    assert html.count("* plotly.js v") == 1  # embedded once, offline
    from plotly.offline import get_plotlyjs

    assert "<script src=" not in html  # nothing loaded from elsewhere (not from a CDN)
    assert html.count("cdn.plot.ly") == get_plotlyjs().count("cdn.plot.ly")  # only inside plotly.js
    assert html.index("<section id='summary'>") < html.index("<h2>Scores</h2>")
    for kind in ("heads", "neurons"):
        assert f'id="heatmap-{kind}"' in html and f'id="asymmetry-{kind}"' in html
    assert html.count("<table class='sortable'>") == html.count("<details>") - 1  # + settings
    assert len(list((out / "figures").glob("*.png"))) >= 8
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
    with open(out / "tables" / "faithfulness.csv") as f:
        faith = list(csv.DictReader(f))
    assert all(float(r["ci_low"]) <= float(r["ci_high"]) for r in faith)
    assert any(float(r["ci_low"]) < float(r["ci_high"]) for r in faith)  # the prompts differ
    lines = summary_lines(c)
    assert any(line.startswith("latent heads (called: interval excludes 0") for line in lines)
    assert any(line.startswith("verification heads") for line in lines)
    assert sum("random sets of size" in line for line in lines) >= 6  # a verdict per set
    with open(out / "tables" / "latent.csv") as f:
        latent = list(csv.DictReader(f))
    assert len(latent) == 3 * (12 + 3 * 96)  # 3 methods x (heads + neurons) components
    assert {r["call"] for r in latent if r["method"] == "ig"} == {"(contrast only)"}


@needs_chromium
def test_report_renders_in_headless_chromium(report, browser):
    c, paths, _ = report
    with open_report(browser, paths["report"]) as (page, problems):
        first = first_sections(page)
        plots = page.evaluate("document.querySelectorAll('.js-plotly-plot').length")
        tooltip = hover_heatmap_cell(page, "heatmap-heads")
        closed = page.evaluate("Array.from(document.querySelectorAll('details'))"
                               ".every(d => !d.open)")
        sorted_column = sort_first_table_by(page, "value")
        shot = page.screenshot(full_page=True)
    assert problems == []
    assert first[0].startswith("H1#") and first[1].startswith("SECTION#summary:Findings"), first
    assert plots >= 8
    assert "head " in tooltip and all(f"{m} {d}:" in tooltip for m, d in c.results), tooltip
    assert "rank" in tooltip and "[" in tooltip  # every result's score, interval and rank
    assert closed
    assert sorted_column == sorted(sorted_column)
    pixels = matplotlib.image.imread(io.BytesIO(shot), format="png")
    assert pixels.std() > 0.05  # not a blank page
    assert (pixels[..., :3] < 0.5).mean() > 0.001  # some dark ink: text, axes, heatmaps


def test_failed_samples_are_not_judged_for_metrics_without_a_threshold():
    from types import SimpleNamespace

    from attrscope.analysis.report import _no_failure_threshold

    for metric, note in (("logit_diff: logit(answer) - logit(distractor), at ...", ""),
                         ("prob_diff: sum p(answer set) - ...", ""),
                         ("kl: -KL(p_clean || p_run) ..., at each", "the metric kl has no threshold"),
                         ("mod:fn: user-defined metric(logits, rows), at", "the metric mod:fn has no")):
        got = _no_failure_threshold(SimpleNamespace(info={"metric": metric}))
        assert (note in got and got) if note else got == ""
