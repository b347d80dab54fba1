"""The report: files, numbers in CSVs, the findings dashboard against the comparison's results
(computed here independently), the short terminal summary, and the HTML as a person sees it in
headless Chromium."""

import csv
import io

import matplotlib.image
import pytest
import torch

from attrscope.analysis import plots
from attrscope.analysis.report import summary_lines, write_report
from tests.analysis.chromium import (first_sections, hover_heatmap_cell, needs_chromium, open_report,
                                     sort_first_table_by)


@pytest.fixture(scope="module")
def report(comparison_and_log, tmp_path_factory):
    c, _, _ = comparison_and_log
    out = tmp_path_factory.mktemp("report")
    return c, write_report(c, out), out


def _pairs(c, kind, direction):
    return [a for a in c.agreements if a["kind"] == kind
            and a["a"].split(" ")[1] == a["b"].split(" ")[1] == direction]


def _top_k(scores, kind, k):
    mean = scores.mean(kind).flatten()
    n_units = scores.mean(kind).shape[1]
    order = torch.argsort(mean.abs(), descending=True, stable=True)[:k].tolist()
    return {f"{i // n_units}.{i % n_units}" for i in order}


def expected_dashboard(c):
    """Per (kind, direction): the numbers the dashboard must show, from the comparison's raw
    results (not from the report's functions)."""
    out = {}
    for kind in c.kinds:
        for d in ("denoising", "noising"):
            pairs = _pairs(c, kind, d)
            rho = min(pairs, key=lambda a: a["correlations"]["spearman_of_means"].value)
            k = pairs[0]["top_k"]
            agreed = set.intersection(*[_top_k(s, kind, k) for (m, dd), s in c.results.items()
                                        if dd == d])
            cprs = [v["cpr"] for (r, kd), v in c.faithfulness.items()
                    if kd == kind and r.endswith(" " + d)]
            out[(kind, d)] = {
                "rho": rho["correlations"]["spearman_of_means"],
                "jaccard": min(a["jaccard"].value for a in pairs), "agreed": agreed,
                "cpr_low": min(cprs), "cpr_high": max(cprs)}
    return out


def test_report_files_and_csv_numbers(report):
    c, paths, out = report
    html = paths["report"].read_text()
    assert "* plotly.js v" not in html  # not embedded: one shared copy beside the report
    shared = out / "plotly.min.js"
    from plotly.offline import get_plotlyjs

    assert shared.read_text() == get_plotlyjs()
    assert "cdn.plot.ly" not in html and "'plotly.min.js'" in html  # offline, from the folder
    assert html.index('<section id="summary">') < html.index('id="dashboard"') \
        < html.index("<h2>Scores</h2>")
    assert html.index("</table>", html.index('id="dashboard"')) < html.index("<details>")
    for kind in ("heads", "neurons"):
        assert f'id="heatmap-{kind}"' in html and f'id="asymmetry-{kind}"' in html
    assert html.count('<div class="tbl"') >= 10  # every table is the shared component
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
            "bland_altman.csv", "disagreements.csv", "dashboard.csv"} <= {
                p.name for p in (out / "tables").iterdir()}
    with open(out / "tables" / "faithfulness.csv") as f:
        faith = list(csv.DictReader(f))
    assert all(float(r["ci_low"]) <= float(r["ci_high"]) for r in faith)
    assert any(float(r["ci_low"]) < float(r["ci_high"]) for r in faith)  # the prompts differ
    expected = expected_dashboard(c)
    with open(out / "tables" / "dashboard.csv") as f:
        dash = list(csv.DictReader(f))
    assert [(r["kind"], r["direction"]) for r in dash] == list(expected)
    for r in dash:
        e = expected[(r["kind"], r["direction"])]
        assert float(r["rho"]) == pytest.approx(e["rho"].value)
        assert float(r["jaccard"]) == pytest.approx(e["jaccard"])
        assert set(r["agreed"].split(", ")) == e["agreed"]
    with open(out / "tables" / "latent.csv") as f:
        latent = list(csv.DictReader(f))
    assert len(latent) == 3 * (12 + 3 * 96)  # 3 methods x (heads + neurons) components
    assert {r["call"] for r in latent if r["method"] == "ig"} == {"(contrast only)"}


def test_terminal_summary_is_the_dashboard_in_at_most_13_lines(report):
    c, _, _ = report
    lines = summary_lines(c)
    assert len(lines) <= 13  # the command adds the report's path: at most 15 in all
    expected = expected_dashboard(c)
    for (kind, d), e in expected.items():
        (row,) = [line for line in lines if line.startswith(f"{kind} {d} ")]
        rho = e["rho"]
        assert f"{rho.value:+.2f} [{rho.low:+.2f}, {rho.high:+.2f}]" in row
        assert f"{e['cpr_low']:.2f}" in row and f"{e['cpr_high']:.2f}" in row
    assert any(line.startswith("latent AND/OR:") for line in lines)
    verbose = summary_lines(c, verbose=True)
    assert verbose[:len(lines)] == lines and len(verbose) > 30
    assert any(line.startswith("latent heads (called: interval excludes 0") for line in verbose)
    assert any(line.startswith("verification heads") for line in verbose)
    assert sum("random sets of size" in line for line in verbose) >= 6  # a verdict per set


def test_self_contained_report_embeds_plotly_once(comparison_and_log, tmp_path):
    c, _, _ = comparison_and_log
    paths = write_report(c, tmp_path, self_contained=True)
    html = paths["report"].read_text()
    assert html.count("* plotly.js v") == 1 and not (tmp_path / "plotly.min.js").exists()
    assert "cdn.plot.ly" not in html.replace(_plotly(), "")


def _plotly():
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


DASHBOARD_JS = """() => Array.from(document.querySelectorAll('#dashboard tbody tr')).map(tr => ({
    kind: tr.dataset.kind, direction: tr.dataset.direction,
    rho: tr.querySelector('[data-field=rho]').textContent,
    jaccard: tr.querySelector('[data-field=jaccard]').dataset.v,
    agreed: tr.querySelector('[data-field=agreed]').textContent,
    cpr: tr.querySelector('[data-field=cpr]').textContent}))"""


@needs_chromium
def test_report_renders_in_headless_chromium(report, browser):
    c, paths, _ = report
    with open_report(browser, paths["report"]) as (page, problems):
        first = first_sections(page, 3)
        dashboard_box = page.locator("#dashboard").bounding_box()
        shown = page.evaluate(DASHBOARD_JS)
        page.wait_for_selector("body[data-figures=drawn]", timeout=60000)
        traces = page.evaluate("""() => Object.fromEntries(Array.from(
            document.querySelectorAll('.js-plotly-plot')).map(gd => [gd.id,
            gd.data.map(t => t.name === undefined ? '' : t.name)]))""")
        tooltip = hover_heatmap_cell(page, "heatmap-heads")
        closed = page.evaluate("Array.from(document.querySelectorAll('details'))"
                               ".every(d => !d.open)")
        sorted_column = sort_first_table_by(page, "value")
        page.evaluate("window.scrollTo(0, 0)")
        shot = page.screenshot()
    assert problems == []
    # the dashboard first, whole within the first screen
    assert first[0].startswith("H1#") and first[1].startswith("SECTION#summary:Findings"), first
    assert dashboard_box["y"] + dashboard_box["height"] <= 900
    expected = expected_dashboard(c)
    assert [(r["kind"], r["direction"]) for r in shown] == list(expected)
    for r in shown:
        e = expected[(r["kind"], r["direction"])]
        rho = e["rho"]
        assert r["rho"].startswith(f"{rho.value:+.2f} [{rho.low:+.2f}, {rho.high:+.2f}]"), r
        assert float(r["jaccard"]) == pytest.approx(e["jaccard"])
        assert set(r["agreed"].split(", ")) == e["agreed"] or (r["agreed"] == "none"
                                                               and not e["agreed"])
        assert f"{e['cpr_low']:.2f}" in r["cpr"] and f"{e['cpr_high']:.2f}" in r["cpr"]
    # every figure drawn, with the traces its figure claims
    claimed = {div: [t.name or "" for t in fig.data] for _, div, fig in plots.report_figures(c)}
    assert traces == claimed
    assert "head " in tooltip and all(f"{m} {d}:" in tooltip for m, d in c.results), tooltip
    assert "rank" in tooltip and "[" in tooltip  # every result's score, interval and rank
    assert closed
    assert sorted_column == sorted(sorted_column)
    pixels = matplotlib.image.imread(io.BytesIO(shot), format="png")
    assert pixels.std() > 0.05  # not a blank page
    assert (pixels[..., :3] < 0.5).mean() > 0.001  # some dark ink: text, axes, heatmaps


@needs_chromium
def test_table_component_filters_and_downloads_csv(report, browser):
    c, paths, _ = report
    with open_report(browser, paths["report"]) as (page, problems):
        box = page.locator(".tbl", has=page.locator("th[data-name=verdict]")).first
        page.evaluate("document.querySelectorAll('details')[0].open = true")
        n_rows = box.locator("tbody tr").count()
        box.locator(".tbl-filter").fill("confirmed:")
        visible = box.locator("tbody tr:not([hidden])").count()
        counted = box.locator(".tbl-count").text_content()
        with page.expect_download() as info:
            box.locator(".tbl-csv").click()
        text = open(info.value.path()).read()
    assert problems == []
    rows = list(csv.DictReader(io.StringIO(text)))
    confirmed = [r for kind, rs in c.verification.items() for r in rs
                 if "confirmed:" in r["verdict"]]
    assert n_rows == sum(len(rs) for rs in c.verification.values())
    assert visible == len(rows) == len(confirmed) and counted == f"{visible} of {n_rows} rows"
    for got, want in zip(rows, confirmed):  # full precision, not the shown digits
        assert float(got["metric_change"]) == want["metric_change"]
        assert got["set"] == want["set"] and got["source"] == want["source"]


@needs_chromium
def test_self_contained_report_draws_offline(comparison_and_log, browser, tmp_path):
    c, _, _ = comparison_and_log
    paths = write_report(c, tmp_path, self_contained=True)
    with open_report(browser, paths["report"]) as (page, problems):
        page.wait_for_selector("body[data-figures=drawn]", timeout=60000)
        drawn = page.evaluate("document.querySelectorAll('.js-plotly-plot').length")
    assert problems == []
    assert drawn == len(plots.report_figures(c))


def test_failed_samples_are_not_judged_for_metrics_without_a_threshold():
    from types import SimpleNamespace

    from attrscope.analysis.report import _no_failure_threshold

    for metric, note in (("logit_diff: logit(answer) - logit(distractor), at ...", ""),
                         ("prob_diff: sum p(answer set) - ...", ""),
                         ("kl: -KL(p_clean || p_run) ..., at each", "the metric kl has no threshold"),
                         ("mod:fn: user-defined metric(logits, rows), at", "the metric mod:fn has no")):
        got = _no_failure_threshold(SimpleNamespace(info={"metric": metric}))
        assert (note in got and got) if note else got == ""


@needs_chromium
def test_report_without_its_plotly_file_says_so(report, browser, tmp_path):
    _, paths, _ = report
    alone = tmp_path / "report.html"  # copied without the plotly.min.js beside it
    alone.write_text(paths["report"].read_text())
    with open_report(browser, alone) as (page, problems):
        page.wait_for_function("document.getElementById('heatmap-heads').textContent !== ''")
        texts = page.evaluate("Array.from(document.querySelectorAll('.plot'))"
                              ".map(d => d.textContent)")
        dashboard = page.evaluate("document.querySelectorAll('#dashboard tbody tr').length")
    assert any("plotly.min.js" in p for p in problems)  # the failed load, reported
    assert texts and all("needs plotly.min.js in the folder of this page" in t for t in texts)
    assert dashboard >= 4  # the findings still read
