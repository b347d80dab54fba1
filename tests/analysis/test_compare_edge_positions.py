"""``compare`` with edge methods at positions (issue 23 items 4 and 6): the edge methods run at
the node kinds' positions, agree over (edge, position) pairs, are verified by the faithfulness
of circuits of (edge, position) pairs, and the report shows the edge x position heatmap.

References: the faithfulness point equals a model written by hand from the weights
(``oracles.edge_ablation_by_hand``) that ablates every (edge, token) outside the same top pairs;
``eap`` by position summed over positions equals compare's ``eap`` without positions (EAP is
linear in the positions' terms); the agreement's Spearman correlation equals scipy's over the
(edge, position) pairs' means.
"""

from __future__ import annotations

import csv

import pytest
import torch
from scipy.stats import spearmanr
from typer.testing import CliRunner

from attrscope.analysis.compare import compare
from attrscope.analysis.report import render_html, write_report
from attrscope.cli import app
from attrscope.sites import resolve_positions
from oracles import edge_ablation_by_hand, one_length_task

NAMES = ["S2", "END"]
QUIET = {"show_progress": False, "n_boot": 20, "n_random": 2, "k": 5}


@pytest.fixture(scope="module")
def one_length(random_model):
    return one_length_task(random_model, n=3, seed=5)


@pytest.fixture(scope="module")
def named(random_model, one_length):
    log: list[str] = []
    c = compare(random_model, one_length, ("eap", "eap-ig"), ("denoising", "noising"),
                ("heads",), positions=NAMES, method_settings={"n_steps": 3}, log=log.append,
                **QUIET)
    return c, log


def kept_by_token(keep: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
    """``[n, length, n_edges]``: edge e kept at token t of prompt i when some entry j with
    ``index[i, j] == t`` keeps it (``keep`` ``[n_edges, n_pos]``)."""
    out = torch.zeros(index.shape[0], length, keep.shape[0], dtype=torch.bool)
    for i in range(index.shape[0]):
        for j in range(index.shape[1]):
            out[i, int(index[i, j])] |= keep[:, j]
    return out


def test_edges_run_at_the_positions_without_a_note(named):
    c, log = named
    assert c.kinds == ["edges"]
    for s in c.results.values():
        assert s.position_labels == NAMES and s["edges"].shape[-1] == len(NAMES)
        assert s.meta["positions"]["setting"] == NAMES
    assert not [line for line in log if "over all positions" in line]
    assert any("(edge, position) pairs outside" in line for line in log)


def test_agreement_is_over_edge_position_pairs(named):
    c, _ = named
    (a,) = [a for a in c.agreements if a["kind"] == "edges" and a["a"] == "eap denoising"]
    x = c.results[("eap", "denoising")]["edges"].double().mean(0).flatten()
    y = c.results[("eap-ig", "denoising")]["edges"].double().mean(0).flatten()
    n_edges = c.results[("eap", "denoising")].graph.n_edges
    assert a["n_components"] == x.numel() == n_edges * len(NAMES)
    rho = a["correlations"]["spearman_of_means"].value
    assert rho == pytest.approx(spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-6)
    assert all(row["component"].endswith(("@S2", "@END")) for row in a["disagreements"])


def test_latent_entries_name_the_edge_position_pairs(named):
    """The direction asymmetry and the latent analysis run over (edge, position) pairs; each
    entry names its pair and locates it (edge as the unit, position index)."""
    c, _ = named
    s = c.results[("eap", "denoising")]
    analysis = c.latent["edges"]
    assert analysis["asymmetry"]["eap"]["value"].shape == (s.graph.n_edges, len(NAMES))
    entries = [e for m in ("eap", "eap-ig") for e in analysis["closest"].get(m, [])] + \
        [e for sets in analysis["calls"].values() for w in ("and", "or") for e in sets[w]]
    assert entries
    for e in entries:
        assert e["component"] == s.labels("edges")[e["index"]]
        assert e["component"] == f"{s.graph.labels[e['unit']]} @{NAMES[e['position']]}"


def test_faithfulness_point_equals_ablating_the_top_pairs_by_hand(named, random_model,
                                                                   one_length):
    """A point of compare's curve: the top pairs by |mean score| kept at their tokens, every
    other (edge, token) of the clean run fed the corrupted prompt's source output, by hand."""
    c, _ = named
    s = c.results[("eap", "denoising")]
    curve = c.faithfulness[("eap denoising", "edges")]
    magnitude = s.mean("edges").abs().flatten().double()
    order = torch.argsort(magnitude, descending=True, stable=True)
    # a size whose k-th and (k+1)-th pairs are far apart (no tie decided by rounding) and
    # whose circuit is neither the model nor the empty circuit
    i = next(i for i, k in enumerate(curve["selected"])
             if 3 <= k < len(order) and magnitude[order[k - 1]] > 1.01 * magnitude[order[k]]
             and 1e-3 < curve["f"][i] < 1 - 1e-3)
    k = curve["selected"][i]
    keep = torch.zeros(magnitude.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    keep = keep.view(s.graph.n_edges, len(NAMES))
    index, seq = resolve_positions(one_length, NAMES).index, one_length.clean_tokens.shape[1]
    graph, n = s.graph, one_length.n
    everything = torch.ones(n, seq, graph.n_edges, dtype=torch.bool)
    m_model = edge_ablation_by_hand(random_model, one_length, graph, everything).double().mean()
    m_empty = edge_ablation_by_hand(random_model, one_length, graph, ~everything).double().mean()
    m_circuit = edge_ablation_by_hand(random_model, one_length, graph,
                                      kept_by_token(keep, index, seq)).double().mean()
    assert curve["m_model"] == pytest.approx(float(m_model), abs=1e-4)
    assert curve["m_empty"] == pytest.approx(float(m_empty), abs=1e-4)
    f = (m_circuit - m_empty) / (m_model - m_empty)
    assert curve["f"][i] == pytest.approx(float(f), abs=1e-4)


def test_eap_by_position_sums_to_compare_without_positions(random_model, one_length):
    each = compare(random_model, one_length, ("eap",), ("denoising",), positions="each",
                   log=lambda line: None, **QUIET)
    whole = compare(random_model, one_length, ("eap",), ("denoising",),
                    log=lambda line: None, **QUIET)
    by_position = each.results[("eap", "denoising")]["edges"]
    overall = whole.results[("eap", "denoising")]["edges"]
    assert by_position.shape == (*overall.shape, one_length.clean_tokens.shape[1])
    scale = float(overall.abs().max())
    torch.testing.assert_close(by_position.sum(-1), overall, atol=1e-4 * max(scale, 1), rtol=0)
    assert by_position.abs().amax(dim=(0, 1)).gt(0).sum() > 1  # spread over several positions
    # the curve of (edge, position) pairs keeps all of them at its last point: the model
    curve = each.faithfulness[("eap denoising", "edges")]
    assert curve["f"][-1] == pytest.approx(1.0, abs=1e-4)
    assert curve["selected"][-1] == by_position[0].numel()


def test_report_shows_the_edge_by_position_heatmap(named, tmp_path):
    c, _ = named
    html = render_html(c, plotly_js="")
    assert 'id="heatmap-edges"' in html and "Mean edges scores by position" in html
    assert "fraction of (edge, position) pairs kept" in html
    label = c.results[("eap", "denoising")].top("edges", 1)[0][0].split(" @")[0]
    assert label.replace(">", "\\u003e") in html or label in html
    write_report(c, tmp_path)
    assert (tmp_path / "figures" / "positions_edges.png").exists()
    with open(tmp_path / "tables" / "mean_scores_edges.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == c.results[("eap", "denoising")]["edges"][0].numel()
    assert rows[0]["component"].endswith(" @S2") and rows[1]["component"].endswith(" @END")


def test_compare_cli_runs_edge_methods_at_named_positions(tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, [
        "compare", "--task", "ioi", "--n", "4", "--method", "eap,eap-ig", "--n-steps", "3",
        "--positions", "S2,END", "--n-boot", "20", "--n-random", "2", "--out", str(out),
        "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "over all positions" not in result.output
    assert "(edge, position) pairs outside" in result.output
    html = (out / "report.html").read_text()
    assert 'id="heatmap-edges"' in html and 'id="faithfulness-edges"' in html
    assert (out / "figures" / "positions_edges.png").exists()
    with open(out / "tables" / "faithfulness.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "edges"]
    assert {r["result"] for r in rows} == {"eap denoising", "eap-ig denoising", "eap noising",
                                           "eap-ig noising"}
    with open(out / "tables" / "mean_scores_edges.csv") as f:
        assert {r["component"].rsplit(" @", 1)[1] for r in csv.DictReader(f)} == {"S2", "END"}
