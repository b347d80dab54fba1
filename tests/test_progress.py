"""No silent phases: model loading, estimates before long runs, compare and counterfactual
progress lines."""

from types import SimpleNamespace

from typer.testing import CliRunner

import attrscope
from attrscope import estimate
from attrscope.analysis.counterfactual import find_counterfactual
from attrscope.analysis.path import parse_component
from attrscope.cli import app
from attrscope.edges.graph import Graph

CFG = SimpleNamespace(n_layers=3, n_heads=4, d_mlp=96)


def test_pass_counts_follow_each_methods_cost():
    assert estimate.node_passes("ap", {}, CFG, 5, ["heads", "neurons"]) == 5 * (3 * 4 + 3 * 96)
    assert estimate.node_passes("ap", {"units": {"neurons": [0, 1]}}, CFG, 5, ["neurons"]) == 5 * 3 * 2
    assert estimate.node_passes("atp", {}, CFG, 5, ["heads"]) == 20
    assert estimate.node_passes("ig", {"n_steps": 10}, CFG, 2, ["heads", "neurons"]) == 2 * 2 * 3 * 10 * 3
    assert estimate.node_passes("atpstar", {"graddrop": True}, CFG, 1, ["heads"]) == 3 + 2 * 4
    graph = Graph(3, 4)
    assert estimate.edge_passes("exact", graph, 2, 20) == 2 * graph.n_edges
    assert estimate.edge_passes("eap-ig-act", graph, 1, 5) == 5 * 7 * 3
    # compare estimates edge methods through the same registry (here from the config alone)
    assert estimate.node_passes("exact", {}, CFG, 2, []) == 2 * graph.n_edges
    assert estimate.node_passes("eap-ig-act", {"n_steps": 5}, CFG, 1, []) == 5 * 7 * 3
    assert "about 1,200 sample-passes" in estimate.describe(1200, 150)
    assert "3 min" in estimate.describe(1200, 180)


def test_cli_says_it_is_loading_the_model_and_estimates_long_runs(random_model_dir, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(estimate, "LONG_RUN_S", 0.0)  # every run counts as long here
    result = CliRunner().invoke(app, [
        "attribute", "--model", str(random_model_dir), "--n", "2", "--method", "atp",
        "--direction", "noising", "--components", "heads", "--out", str(tmp_path),
        "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"loading model {random_model_dir}" in result.output
    assert "model loaded in" in result.output
    assert "estimate: about 8 sample-passes" in result.output  # atp: 4 per sample, 2 samples


def test_short_runs_print_no_estimate(random_model_dir, tmp_path):
    result = CliRunner().invoke(app, [
        "attribute", "--model", str(random_model_dir), "--n", "2", "--method", "atp",
        "--direction", "noising", "--components", "heads", "--out", str(tmp_path),
        "--no-progress"])
    assert result.exit_code == 0 and "estimate:" not in result.output


def test_counterfactual_reports_each_step(random_model):
    task = attrscope.load_task("ioi", random_model, n=1, seed=0)
    pair = task.pairs[0]
    lines: list[str] = []
    find_counterfactual(random_model, pair.clean, pair.answer, pair.distractor,
                        parse_component("1.2", "heads", random_model.cfg), max_changes=2,
                        max_perplexity_ratio=50.0, n_iters=2, n_candidates=8, beam=2,
                        log=lines.append)
    steps = [line for line in lines if line.startswith("step ")]
    assert steps and steps[0].startswith("step 1/2:") and "best score" in steps[0]
    assert any(line.startswith("scoring every head") for line in lines)


def test_pass_counts_come_from_the_registry(monkeypatch):
    """Every method declares its cost at registration, and the estimate counts what a method
    declares, with its defaults filled in: no method is special-cased."""
    from attrscope.methods import METHODS, Method

    assert [m.name for m in METHODS.values() if m.passes is None] == []
    toy = Method("toy", lambda *a: None, "a toy", "none", {"k": 3}, "node",
                 passes=lambda settings, shape, n, kinds: n * settings["k"] * shape.n_layers)
    monkeypatch.setitem(METHODS, "toy", toy)
    assert estimate.node_passes("toy", {}, CFG, 5, ["heads"]) == 5 * 3 * 3
    assert estimate.node_passes("toy", {"k": 2}, CFG, 5, ["heads"]) == 5 * 2 * 3

