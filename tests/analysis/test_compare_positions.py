"""compare() with sites and positions (issue 23): each (unit, position) is a component of the
agreement, the asymmetry and the latent analysis; atpstar is left out where it defines no
score, in one line; the report shows layer x position heatmaps with the positions named."""

import pytest
import torch
from scipy.stats import spearmanr

import attrscope
from attrscope.analysis.compare import compare
from attrscope.analysis.report import render_html, summary_lines
from attrscope.tasks.positions import PositionError

KINDS = ("resid_pre", "attn_out", "heads")
NAMES = ["S2", "END"]


@pytest.fixture(scope="module")
def positioned(embedded_model):
    task = attrscope.load_task("ioi", embedded_model, n=5, seed=1)
    log: list[str] = []
    c = compare(embedded_model, task, ("ap", "atp", "ig", "atpstar"), kinds=KINDS,
                positions=NAMES, k=4, n_boot=100, n_random=5, method_settings={"n_steps": 4},
                show_progress=False, log=log.append)
    return c, log, task


def test_atpstar_is_left_out_with_one_line(positioned):
    c, log, _ = positioned
    assert {m for m, _ in c.results} == {"ap", "atp", "ig"}
    notes = [line for line in log if "atpstar" in line]
    assert len(notes) == 1 and notes[0].startswith("note: atpstar leaves out resid_pre, attn_out, "
                                                   "heads")
    assert c.settings["positions"] == tuple(NAMES)


def test_results_are_the_methods_at_those_positions(positioned, embedded_model):
    c, _, task = positioned
    for (m, d), s in c.results.items():
        settings = {"n_steps": 4} if m == "ig" else {}
        alone = attrscope.attribute(embedded_model, task, m, d, list(KINDS), positions=NAMES,
                                    show_progress=False, **settings)
        assert s.position_labels == NAMES
        for kind in KINDS:
            assert s[kind].shape[-1] == 2
            torch.testing.assert_close(s[kind], alone[kind], atol=1e-5, rtol=0)


def test_agreement_and_asymmetry_treat_each_cell_as_a_component(positioned):
    """Spearman of the cell means against scipy; the asymmetry of each (unit, position) against
    its definition computed here; every label names its position."""
    c, _, _ = positioned
    for a in c.agreements:
        kind = a["kind"]
        (ma, da), (mb, db) = (tuple(a[x].split()) for x in ("a", "b"))
        x = c.results[(ma, da)][kind].double().mean(0).flatten()  # float64, as agreement
        y = c.results[(mb, db)][kind].double().mean(0).flatten()
        assert x.numel() == c.results[(ma, da)][kind][0].numel()  # layers x units x positions
        rho = a["correlations"]["spearman_of_means"].value
        assert rho == pytest.approx(spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-6)
        assert all("@" in row["component"] for row in a["disagreements"])
    for kind in KINDS:
        analysis = c.latent[kind]
        d, n = c.results[("ap", "denoising")][kind].double(), c.results[("ap", "noising")][kind].double()
        raw = d.abs().mean(0) - n.abs().mean(0)
        scale = max(float(d.abs().mean(0).max()), float(n.abs().mean(0).max()))
        torch.testing.assert_close(analysis["asymmetry"]["ap"]["value"], raw / scale)
        labels = c.results[("ap", "denoising")].labels(kind)
        for entry in analysis["closest"]["ap"]:
            assert entry["component"] == labels[entry["index"]]
            assert entry["component"].endswith("@" + NAMES[entry["position"]])


def test_every_kind_is_verified_cell_by_cell(positioned, embedded_model):
    """resid_pre, attn_out and heads at S2 and END are verified by ablating (unit, position)
    cells: the top-k set of each result is its own top-k cells, and its metric change equals a
    fresh cell ablation of the same cells; each kind has its random sets and faithfulness
    curves, and the dashboard reads them as verified."""
    from attrscope.analysis.position_ablation import CellAblator
    from attrscope.analysis.report import dashboard_rows
    from attrscope.components import Component, parse_label
    from attrscope.sites import resolve_positions

    c, log, task = positioned
    assert set(c.verification) == set(KINDS)
    assert not [line for line in log if "not verified" in line]
    for kind in KINDS:
        assert any(line.startswith(f"verifying {kind} by ablation (other)") for line in log)
    ablator = CellAblator(resolve_positions(task, NAMES), embedded_model, task, how="other",
                          run="clean", kinds=KINDS)
    for kind in KINDS:
        for (m, d), s in c.results.items():
            mean = s[kind].double().mean(0).flatten()
            order = torch.argsort(mean.abs(), descending=True, stable=True)[:4]
            labels = [s.labels(kind)[int(i)] for i in order]
            row = next(r for r in c.verification[kind] if r["set"] == "top 4"
                       and r["source"] == f"{m} {d}")
            assert row["components"].split() == labels and all("@" in lab for lab in labels)
            cells = [Component(kind, parse_label(lab).layer, parse_label(lab).unit or 0,
                               parse_label(lab).position) for lab in labels]
            change = float((ablator.metrics([cells])[0] - ablator.base).mean())
            assert row["metric_change"] == pytest.approx(change, abs=1e-4)
        randoms = [r for r in c.verification[kind] if r["source"] == "random"]
        assert randoms and all(r["n_null"] == 5 for r in randoms)
    assert {kd for _, kd in c.faithfulness} == set(KINDS)
    for r in dashboard_rows(c):
        assert not r["verification"].get("skipped") and r["verification"]["top"] == 3
    assert not any("not verified" in line for line in summary_lines(c))


def test_report_shows_position_heatmaps_with_named_positions(positioned):
    c, _, task = positioned
    html = render_html(c, plotly_js="")
    for kind in KINDS:
        assert f'id="heatmap-{kind}"' in html
    assert "Mean heads scores by position" in html and "Mean resid_pre scores by position" in html
    # hover: component, position, its token in the first prompt, score, interval
    token = c.results[("ap", "denoising")].meta["positions"]["sample_tokens"][0]
    assert f"heads 3.1 at position S2 (token {token!r}" in html.replace("\\u0027", "'") or \
        "at position S2 (token" in html
    assert "not verified" not in html and 'id="verification-resid_pre"' in html


def test_notebook_compare_has_a_position_column(embedded_model):
    task = attrscope.load_task("ioi", embedded_model, n=3, seed=2)
    c = attrscope.compare(embedded_model, task, ("ap", "atp"), ("denoising",), ("attn_out",),
                          positions=["S2", "END"], n_boot=20, n_random=2, show_progress=False,
                          log=lambda line: None)
    frame = c.to_dataframe()
    assert set(frame["position"]) == {"S2", "END"}
    assert len(frame) == 2 * task.n * embedded_model.cfg.n_layers * 2


def test_each_position_on_prompts_of_one_length(embedded_model):
    from oracles import one_length_task

    task = one_length_task(embedded_model, n=3)
    c = compare(embedded_model, task, ("ap", "atp"), ("denoising",), ("mlp_out", "q"),
                positions="each", n_boot=20, n_random=2, show_progress=False,
                log=lambda line: None)
    seq = int(task.answer_pos[0]) + 1
    for s in c.results.values():
        assert s["mlp_out"].shape == (task.n, embedded_model.cfg.n_layers, 1, seq)
    assert {a["kind"] for a in c.agreements} == {"mlp_out", "q"}


@pytest.mark.parametrize("methods, kwargs, error, message", [
    (("ap",), {"positions": ["S9"]}, PositionError, r"unknown position\(s\) \['S9'\]"),
    (("ap",), {"positions": "each"}, PositionError, r"positions='each' needs prompts of one length"),
    (("atpstar",), {"positions": ["S2"]}, ValueError, r"^No method given scores heads"),
    (("ap",), {"kinds": ("heads", "stream")}, ValueError, r"Unknown component kind\(s\) \['stream'\]"),
])
def test_bad_positions_and_sites_are_refused_before_any_run(embedded_model, methods, kwargs,
                                                            error, message):
    task = attrscope.load_task("ioi", embedded_model, n=3, seed=2)
    log: list[str] = []
    kinds = kwargs.pop("kinds", ("heads",))
    with pytest.raises(error, match=message):
        compare(embedded_model, task, methods, kinds=kinds, show_progress=False, log=log.append,
                **kwargs)
    assert not any("computed" in line for line in log)


def test_edge_methods_run_at_the_node_kinds_positions(embedded_model):
    """Node and edge methods together at one named position: both score at END, no note; the
    edge result equals attribute_edges at END on its own, and edges are verified by circuits
    of (edge, position) pairs next to the heads' cell ablations."""
    from attrscope.api import attribute_edges

    task = attrscope.load_task("ioi", embedded_model, n=3, seed=2)
    log: list[str] = []
    c = compare(embedded_model, task, ("atp", "eap"), ("denoising",), ("heads",),
                positions=["END"], n_boot=20, n_random=2, show_progress=False, log=log.append)
    assert [line for line in log if line.startswith("note:")] == []
    edges = c.results[("eap", "denoising")]
    assert edges.position_labels == ["END"] and edges["edges"].dim() == 3
    alone = attribute_edges(embedded_model, task, "eap", "denoising", positions=["END"],
                            show_progress=False)
    torch.testing.assert_close(edges["edges"], alone["edges"], atol=1e-5, rtol=0)
    assert c.results[("atp", "denoising")].position_labels == ["END"]
    assert set(c.verification) == {"heads"}
    assert c.faithfulness[("eap denoising", "edges")]["selected"][-1] == edges["edges"][0].numel()
