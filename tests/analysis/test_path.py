"""Integration-path analysis of one component against a plain per-head, per-step loop oracle,
exact patching, completeness, and the split-IG and saturation definitions on known curves."""

import math

import numpy as np
import pytest
import torch

import attrscope
from attrscope import HEADS, NEURONS
from attrscope.analysis.path import (Component, SurveySettings, component_paths, parse_component,
                                     path_points, saturation, spearman, split_ig, split_point,
                                     survey, unit_paths)
from attrscope.engine import Runner
from oracles import cache_of, patch_one_unit_per_forward, run_and_source


def oracle_path(model, task, direction, kind, layer, unit, n_steps):
    """metric, dm/dalpha ``[n, P]`` of one unit: one full hooked forward per recorded alpha,
    the unit's activation at every position set to run + alpha * (source - run)."""
    run, source = run_and_source(task, direction)
    name = kind.hook_name(layer)
    run_act, source_act = _layer_acts(model, task, direction, name, run, source)
    alphas, _ = path_points(n_steps)
    metric, grad = torch.empty(task.n, len(alphas)), torch.empty(task.n, len(alphas))
    for k, value in enumerate(alphas.tolist()):
        alpha = torch.full((task.n,), value, requires_grad=True)

        def move(act, hook):
            act = act.clone()
            shape = (task.n,) + (1,) * (act.dim() - 3)
            a = alpha.view(task.n, 1, *shape[1:])
            act[:, :, unit] = run_act[:, :, unit] + a * (source_act[:, :, unit] - run_act[:, :, unit])
            return act

        with model.hooks(fwd_hooks=[(name, move)]):
            m = task.metric(model(run))
        (g,) = torch.autograd.grad(m.sum(), alpha)
        metric[:, k], grad[:, k] = m.detach(), g
    return metric, grad


_ACTS: dict = {}


def _layer_acts(model, task, direction, name, run, source):
    """The run's and source's activations at hook ``name``, cached per model, task, direction
    and hook (every unit of a layer shares them). The cache keeps the model and task alive, so
    their ids cannot be reused by other objects."""
    key = (id(model), id(task), direction, name)
    if key not in _ACTS:
        with torch.no_grad():
            _ACTS[key] = (model, task, cache_of(model, run, name), cache_of(model, source, name))
    return _ACTS[key][2:]


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_every_head_matches_the_loop_oracle(random_model, random_task, direction):
    """All heads of the random 3-layer/4-head model, batched (all steps of a layer's heads in one
    pass) against one forward per head and step."""
    n_steps = 2
    runner = Runner(random_model, random_task, direction, [HEADS])
    for layer in range(random_model.cfg.n_layers):
        paths = unit_paths(runner, HEADS, layer, None, n_steps, max_batch_rows=25)
        assert [p.unit for p in paths] == list(range(random_model.cfg.n_heads))
        for p in paths:
            metric, grad = oracle_path(random_model, random_task, direction, HEADS, layer, p.unit,
                                       n_steps)
            torch.testing.assert_close(p.metric.float(), metric, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(p.grad.float(), grad, atol=1e-4, rtol=1e-4)
        # different heads give different paths (no stale loop variable)
        assert not torch.allclose(paths[0].grad, paths[1].grad)


def test_sample_groups_of_different_lengths_match_the_oracle(embedded_model, monkeypatch):
    """Prompts of different lengths, split into groups that each run only their own span (a
    group costs no overhead here, or this small model's would make fewer groups)."""
    from attrscope import engine

    monkeypatch.setattr(engine, "PASS_OVERHEAD_FLOPS", 0.0)
    task = attrscope.load_task("ioi", embedded_model, n=16, seed=11)
    runner = Runner(embedded_model, task, "denoising", [HEADS, NEURONS])
    assert len(runner.sample_groups()) > 1 and len(set(task.answer_pos.tolist())) > 1
    for kind, layer, units in ((HEADS, 2, [0, 3, 7]), (NEURONS, 1, [5, 400])):
        paths = unit_paths(runner, kind, layer, units, n_steps=2, max_batch_rows=40)
        for p in paths:
            metric, grad = oracle_path(embedded_model, task, "denoising", kind, layer, p.unit, 2)
            torch.testing.assert_close(p.metric.float(), metric, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(p.grad.float(), grad, atol=1e-4, rtol=1e-4)


def test_neurons_and_the_hooked_engine_match_the_oracle(embedded_model, embedded_task):
    components = [parse_component("0.17", "neurons", embedded_model.cfg),
                  parse_component("2.300", "neurons", embedded_model.cfg),
                  parse_component("1.6", "heads", embedded_model.cfg)]
    oracle = [oracle_path(embedded_model, embedded_task, "denoising", c.spec, c.layer, c.unit, 2)
              for c in components]
    for allow_fast in (True, False):
        runner = Runner(embedded_model, embedded_task, "denoising", [HEADS, NEURONS],
                        allow_fast=allow_fast)
        paths = component_paths(embedded_model, embedded_task, components, "denoising", 2,
                                runner=runner)
        assert runner.engine_used == ("suffix_forward" if allow_fast else "transformer_lens_hooks")
        for c, p, (metric, grad) in zip(components, paths, oracle):
            assert (p.kind, p.layer, p.unit) == (c.kind, c.layer, c.unit)
            torch.testing.assert_close(p.metric.float(), metric, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(p.grad.float(), grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_endpoints_are_exact_patching_and_ig_is_complete(embedded_model, embedded_task, direction):
    """m(1) - m(0) is the exact patching score (ap, and one forward per head); the IG sum equals
    it up to quadrature error with 50 steps, and visibly does not with 1 step."""
    layer = 3
    runner = Runner(embedded_model, embedded_task, direction, [HEADS])
    paths = unit_paths(runner, HEADS, layer, None, n_steps=50)
    ap = attrscope.attribute(embedded_model, embedded_task, "ap", direction, "heads",
                             show_progress=False)["heads"][:, layer]
    loop = patch_one_unit_per_forward(embedded_model, embedded_task, direction, HEADS, layer,
                                      range(embedded_model.cfg.n_heads))
    score = torch.stack([p.patch_score for p in paths], dim=1).float()
    torch.testing.assert_close(score, ap, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(score, loop, atol=1e-4, rtol=1e-4)
    assert score.abs().max() > 1.0
    for p in paths:
        assert (p.completeness_residual.abs() <= 1e-3 * p.patch_score.abs() + 1e-4).all(), p.component
    coarse = unit_paths(runner, HEADS, layer, None, n_steps=1)
    assert max(float(p.completeness_residual.abs().max()) for p in coarse) > 1e-2


def test_split_ig_at_r1_is_the_per_component_ig(embedded_model, embedded_task):
    n_steps = 8
    c = parse_component("3.1", "heads", embedded_model.cfg)
    (p,) = component_paths(embedded_model, embedded_task, [c], "denoising", n_steps)
    _, grad = oracle_path(embedded_model, embedded_task, "denoising", HEADS, 3, 1, n_steps)
    _, weights = path_points(n_steps)
    oracle_ig = (grad.double() * weights).sum(-1)
    torch.testing.assert_close(p.split_ig(1.0), oracle_ig, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(p.split_ig(1.0), p.ig, atol=1e-12, rtol=0)
    assert (p.split_point(1.0) == 1).all()
    # below r = 1 it is a part of the integral
    assert (p.split_ig(0.3).abs() < p.ig.abs()).all()


def test_split_ig_on_known_curves():
    alphas, weights = path_points(400)
    # saturating: m = 1 - (1 - a)^4 reaches half its range at a = 1 - 0.5 ** 0.25
    metric = (1 - (1 - alphas) ** 4)[None]
    grad = (4 * (1 - alphas) ** 3)[None]
    assert float(split_point(alphas, metric, 0.5)) == pytest.approx(1 - 0.5 ** 0.25, abs=2e-3)
    assert float(split_ig(alphas, weights, metric, grad, 0.5)) == pytest.approx(0.5, abs=5e-3)
    assert float(split_ig(alphas, weights, metric, grad, 0.9)) == pytest.approx(0.9, abs=5e-3)
    # up and back down: the progress counts both excursions, half of it is at the peak
    metric = torch.sin(math.pi * alphas)[None]
    grad = (math.pi * torch.cos(math.pi * alphas))[None]
    assert float(split_point(alphas, metric, 0.5)) == pytest.approx(0.5, abs=2e-3)
    assert float(split_ig(alphas, weights, metric, grad, 0.5)) == pytest.approx(1.0, abs=1e-2)
    assert float(split_ig(alphas, weights, metric, grad, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_saturation_on_known_curves():
    alphas, weights = path_points(200)
    linear = torch.full((1, len(alphas)), 2.0, dtype=torch.float64)
    assert float(saturation(weights, linear)) == 0.0
    steep = torch.sigmoid(60 * (alphas - 0.5))
    steep_grad = (60 * steep * (1 - steep))[None]
    # |g| >= 0.1 * max only where sigmoid' is large: |a - 0.5| < ln((1+sqrt(.9))/(1-sqrt(.9)))/60
    half_width = math.log((1 + math.sqrt(0.9)) / (1 - math.sqrt(0.9))) / 60
    assert float(saturation(weights, steep_grad)) == pytest.approx(1 - 2 * half_width, abs=1e-2)
    assert math.isnan(float(saturation(weights, torch.zeros(1, len(alphas)))))


def test_survey_matches_per_head_paths_and_numpy_correlations(random_model, random_task):
    result = survey(random_model, random_task, "denoising", "heads",
                    SurveySettings(n_steps=3, max_batch_rows=40))
    n_layers, n_heads = random_model.cfg.n_layers, random_model.cfg.n_heads
    assert len(result.rows) == n_layers * n_heads
    assert [r["component"] for r in result.rows] == [f"{l}.{h}" for l in range(n_layers)
                                                     for h in range(n_heads)]
    for row, p in zip(result.rows, result.paths):
        metric, grad = oracle_path(random_model, random_task, "denoising", HEADS, p.layer, p.unit, 3)
        assert row["grad_range"] == pytest.approx(float((grad.max(1).values - grad.min(1).values).mean()),
                                                  abs=1e-4, rel=1e-4)
        assert row["output_range"] == pytest.approx(
            float((metric.max(1).values - metric.min(1).values).mean()), abs=1e-4, rel=1e-4)
        assert row["ap_score"] == pytest.approx(row["patch_score"], abs=1e-4)
    score = np.array([r["ap_score"] for r in result.rows])
    for quantity in ("grad_range", "output_range"):
        values = np.array([r[quantity] for r in result.rows])
        assert result.correlations[f"pearson({quantity}, ap_score)"] == pytest.approx(
            np.corrcoef(values, score)[0, 1], abs=1e-9)
        assert result.correlations[f"pearson({quantity}, |ap_score|)"] == pytest.approx(
            np.corrcoef(values, np.abs(score))[0, 1], abs=1e-9)
        ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731 (no ties in these values)
        assert result.correlations[f"spearman({quantity}, ap_score)"] == pytest.approx(
            np.corrcoef(ranks(values), ranks(score))[0, 1], abs=1e-9)


def test_spearman_handles_ties():
    x = torch.tensor([1.0, 2.0, 2.0, 3.0])
    assert spearman(x, torch.tensor([1.0, 2.5, 2.5, 4.0])) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


@pytest.mark.parametrize("label, kind, expected", [
    ("9.1", "heads", "layer 9 does not exist; the model has 4 layers (0-3)"),
    ("3.9", "heads", "head 9 does not exist; the model has 8 heads per layer (0-7)"),
    ("1.512", "neurons", "neuron 512 does not exist; the model has 512 neurons per layer (0-511)"),
    ("1-2", "heads", "not of the form LAYER.HEAD"),
    ("1.2", "mlp", "Unknown component kind 'mlp'"),
])
def test_bad_component_labels_are_named(embedded_model, label, kind, expected):
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_component(label, kind, embedded_model.cfg)


def test_labels_parse_to_the_component(embedded_model):
    assert parse_component(" 2.7 ", "heads", embedded_model.cfg) == Component(HEADS, 2, 7)
    assert parse_component("0.511", NEURONS, embedded_model.cfg).label == "0.511"
