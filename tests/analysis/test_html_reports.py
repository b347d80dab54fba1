"""The HTML reports of ``edges``, ``path`` and ``counterfactual``: their numbers against the
results, and as a person sees them in headless Chromium (no console errors, findings first,
tooltips on hover)."""

import html
import re

import pytest
import torch

from attrscope.analysis import html_reports
from attrscope.analysis.circuit_graph import INPUT_STYLES
from attrscope.analysis.counterfactual import Counterfactual, patching_scores, prompt_ids
from attrscope.analysis.path import SurveySettings, component_paths, parse_component, survey
from attrscope.edges.circuit import Circuit, CircuitEvaluator
from attrscope.edges.graph import colon_label
from attrscope.api import attribute_edges
from tests.analysis.chromium import (first_sections, hover_heatmap_cell, hover_point,
                                     needs_chromium, open_report, sort_first_table_by)


@pytest.fixture(scope="module")
def edges_report(random_model, random_task, tmp_path_factory):
    scores = attribute_edges(random_model, random_task, "eap", "denoising", show_progress=False)
    circuit = Circuit.from_scores(scores, top=40)
    evaluator = CircuitEvaluator.for_task(random_model, random_task, "zero")
    circuit.faithfulness = {**evaluator.faithfulness(circuit), "run": "clean"}
    curve = evaluator.curve(scores.mean("edges"), fractions=(0.01, 0.1, 0.5, 1.0))
    path = tmp_path_factory.mktemp("edges_report") / "edges-eap-denoising.html"
    return scores, circuit, curve, html_reports.write_edges_report(path, scores, circuit, curve)


@pytest.fixture(scope="module")
def path_report(random_model, random_task, tmp_path_factory):
    components = [parse_component(label, "heads", random_model.cfg) for label in ("1.2", "2.0")]
    paths = component_paths(random_model, random_task, components, n_steps=4)
    summaries = [p.summary() for p in paths]
    result = survey(random_model, random_task, settings=SurveySettings(n_steps=4))
    path = tmp_path_factory.mktemp("path_report") / "path.html"
    settings = {"model": "random", "task": "ioi", "n_steps": 4, "split_r": 0.5,
                "saturation_threshold": 0.1}
    return paths, summaries, result, html_reports.write_path_report(path, paths, summaries, result,
                                                                    settings)


@pytest.fixture(scope="module")
def counterfactual_report(random_model, random_task, tmp_path_factory):
    """A search result made by hand (the search itself is tested in test_counterfactual.py):
    the task's corrupted prompt as the found one, scored exactly."""
    pair = random_task.pairs[0]
    clean, found = prompt_ids(random_model, pair.clean), prompt_ids(random_model, pair.corrupted)
    changed = [i for i, (a, b) in enumerate(zip(clean, found)) if a != b]
    scores = patching_scores(random_model, pair.clean, pair.corrupted, pair.answer,
                             pair.distractor, "denoising", "heads")
    standard = scores.flip(1)  # a different map, so that the two panels differ
    result = Counterfactual(
        clean=pair.clean, corrupted=pair.corrupted, answer=pair.answer, distractor=pair.distractor,
        component="1.2", kind="heads", direction="denoising", score=float(scores[1, 2]),
        n_changed=len(changed), changed_positions=changed, perplexity_clean=10.0, perplexity=12.0,
        metric_clean=1.5, metric_corrupted=-0.5, scores=scores, standard="a standard prompt",
        standard_score=float(standard[1, 2]), standard_scores=standard,
        history=[{"iteration": i, "objective": v, "score": v, "n_changed": 1,
                  "perplexity_ratio": 1.1, "evaluated": 8, "feasible": 4, "prompt": pair.corrupted}
                 for i, v in enumerate((0.1, 0.3, 0.4))],
        settings={"max_perplexity_ratio": 2.0})
    path = tmp_path_factory.mktemp("counterfactual_report") / "counterfactual.html"
    return result, html_reports.write_counterfactual_report(path, result, random_model)


def _summary(page_html: str) -> str:
    return page_html[page_html.index('<section id="summary">'):page_html.index("</section>")]


def test_edges_report_numbers(edges_report):
    scores, circuit, curve, path = edges_report
    page = path.read_text()
    summary = _summary(page)
    assert page.index('id="summary"') < page.index('id="circuit-graph"') < page.index("<details>")
    assert f"f = {circuit.faithfulness['f']:.3f}" in summary and f"CPR {curve['cpr']:.3f}" in summary
    assert f"<b>{len(circuit.edges)}</b> of them connect" in summary
    mean = scores.mean("edges")
    best = int(torch.argmax(mean.abs()))
    assert html.escape(colon_label(scores.graph.labels[best])) in summary
    rows = html_reports.edge_rows(scores, circuit)
    assert len(rows) == len(circuit.selected)
    assert sum(r["in_circuit"] == "yes" for r in rows) == len(circuit.edges)
    assert [abs(r["mean_score"]) for r in rows] == sorted((abs(r["mean_score"]) for r in rows),
                                                          reverse=True)
    for r in rows:
        assert r["ci_low"] <= r["mean_score"] <= r["ci_high"]
        e = scores.graph.edge(r["source"], r["dest"], None if r["input"] == "-" else r["input"])
        assert r["mean_score"] == pytest.approx(float(mean[e]))
    # plotly.js: one shared copy beside the page, loaded from there (offline)
    assert "* plotly.js v" not in page and (path.parent / "plotly.min.js").exists()
    assert "'plotly.min.js'" in page and "cdn.plot.ly" not in page


def test_path_and_counterfactual_report_numbers(path_report, counterfactual_report):
    paths, summaries, result, path = path_report
    summary = _summary(path.read_text())
    for row in summaries:
        assert f"patching score {row['patch_score']:+.4g} [" in summary
    assert f"{result.correlations['pearson(grad_range, ap_score)']:+.3f}" in summary
    cf, cf_path = counterfactual_report
    summary = _summary(cf_path.read_text())
    assert summary.count("<mark>") == 2 * cf.n_changed > 0  # marked in the clean and found prompt
    rank = 1 + int((cf.scores.abs() > abs(cf.score)).sum())
    assert f"score of <b>{cf.score:+.4g}</b>, rank {rank} of 12 heads" in summary


@needs_chromium
def test_edges_report_in_chromium(edges_report, browser):
    scores, circuit, _, path = edges_report
    with open_report(browser, path) as (page, problems):
        first = first_sections(page)
        tooltip = hover_point(page, "circuit-graph", "edge score (hover)", 0)
        page.mouse.move(0, 0)
        node = hover_point(page, "circuit-graph", "nodes of the circuit", 1)
        legend = page.evaluate("Array.from(document.querySelectorAll('#circuit-graph .legendtext'))"
                               ".map(e => e.textContent)")
        closed = page.evaluate("Array.from(document.querySelectorAll('details')).every(d => !d.open)")
        ranks = sort_first_table_by(page, "rank")
        scores_shown = sort_first_table_by(page, "mean_score")
    assert problems == []
    assert first[0].startswith("H1#") and first[1].startswith("SECTION#summary:Findings"), first
    top = max(circuit.edges, key=lambda e: abs(float(scores.mean("edges")[e])))
    assert colon_label(scores.graph.labels[top]) in tooltip and "mean score" in tooltip, tooltip
    assert re.search(r"rank \d+ of 262", tooltip)
    assert node.startswith(circuit.nodes()[1]) and "edge(s)" in node, node
    inputs = {scores.graph.dest_names[int(scores.graph.dest_index[e])][1] for e in circuit.edges}
    assert {INPUT_STYLES[w][2] for w in inputs} <= set(legend)
    assert closed and ranks == sorted(ranks) and scores_shown == sorted(scores_shown)


@needs_chromium
def test_path_report_in_chromium(path_report, browser):
    paths, _, _, path = path_report
    with open_report(browser, path) as (page, problems):
        first = first_sections(page)
        cell = hover_heatmap_cell(page, "path-survey-score")
        curve = hover_point(page, "path-curves", "head 1.2", 2)
    assert problems == []
    assert first[1].startswith("SECTION#summary:Findings"), first
    assert cell.startswith("head ") and "grad_range" in cell and "saturation" in cell, cell
    hovered = re.match(r"head (\S+), alpha", curve)  # the nearest line: the curves can overlap
    assert hovered and "[" in curve, curve
    (p,) = [p for p in paths if p.component == hovered.group(1)]
    assert f"alpha {float(p.alphas[2]):.3f}: {float(p.metric[:, 2].mean()):+.4g}" in curve


@needs_chromium
def test_counterfactual_report_in_chromium(counterfactual_report, browser):
    _, path = counterfactual_report
    with open_report(browser, path) as (page, problems):
        first = first_sections(page)
        cell = hover_heatmap_cell(page, "counterfactual-heatmap")
        step = hover_point(page, "counterfactual-history", "score", 1)
    assert problems == []
    assert first[1].startswith("SECTION#summary:Findings"), first
    assert cell.startswith("head ") and "found prompt:" in cell and "standard corruption:" in cell
    assert "rank" in cell
    assert "step 1" in step and "+0.3" in step, step


def test_reports_render_an_empty_circuit_and_a_search_without_standard(edges_report,
                                                                       counterfactual_report):
    import dataclasses

    scores, circuit, _, _ = edges_report
    graph = scores.graph
    mean = torch.zeros(graph.n_edges)
    mean[graph.edge("0.1", "1.1", "q")] = 1.0  # its only edge leads nowhere: pruned away
    empty = Circuit.top(graph, mean, 1)
    assert empty.edges == [] and empty.selected
    page = html_reports.render_edges_report(scores, empty)
    assert "<b>0</b> of them connect" in page and "not computed" in page
    # said in words, with what to change; no empty graph, no "n/a %"
    assert html.escape(empty.note) in page and "raise the number of edges" in empty.note
    assert 'id="circuit-graph"' not in page and "n/a %" not in page
    result, _ = counterfactual_report
    alone = dataclasses.replace(result, standard=None, standard_score=None, standard_scores=None)
    page = html_reports.render_counterfactual_report(alone)
    assert "standard corruption" not in _summary(page) and "found prompt:" in page


def test_reports_escape_what_they_show(counterfactual_report):
    """Autoescaping: a prompt with markup is shown as text, never run or parsed as HTML."""
    import dataclasses

    result, _ = counterfactual_report
    odd = dataclasses.replace(result, clean="<script>alert(1)</script> & <b>x</b>",
                              standard="<i>standard</i>")
    page = html_reports.render_counterfactual_report(odd)
    assert "<script>alert(1)</script>" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;x&lt;/b&gt;" in _summary(page)
    assert "&lt;i&gt;standard&lt;/i&gt;" in _summary(page)
