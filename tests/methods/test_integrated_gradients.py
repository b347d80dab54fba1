"""``ig`` against captum's LayerIntegratedGradients, completeness, and the zero baseline."""

import pytest
import torch
from captum.attr import LayerIntegratedGradients

import attrscope
from attrscope import HEADS, NEURONS
from oracles import run_and_source, zero_layer_metric


def captum_layer_ig(model, task, direction, kind, layer, n_steps):
    """Per-sample, per-unit captum attributions for one layer, ``[n, n_units]``.

    captum runs ``inputs`` with the layer's activation interpolated between the activations of
    ``inputs`` and ``baselines``; with inputs = the run prompt and baselines = the source
    prompt, its path is ours traversed backwards (Gauss-Legendre nodes are symmetric), so its
    attributions are the negatives of ours.
    """
    run, source = run_and_source(task, direction)
    n = task.n

    def forward(tokens):
        rows = torch.arange(tokens.shape[0]) % n
        return task.metric(model(tokens), rows)

    module = model.hook_dict[kind.hook_name(layer)]
    lig = LayerIntegratedGradients(forward, module, multiply_by_inputs=True)
    attr = lig.attribute(run, baselines=source, n_steps=n_steps, method="gausslegendre")
    per_unit = attr.reshape(n, attr.shape[1], kind.n_units(model.cfg), -1).sum(dim=(1, 3))
    return -per_unit


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("kind", [HEADS, NEURONS], ids=["heads", "neurons"])
def test_ig_matches_captum_layer_integrated_gradients(embedded_model, embedded_task, direction, kind):
    n_steps = 20
    scores = attrscope.attribute(embedded_model, embedded_task, "ig", direction, kind.name,
                                 n_steps=n_steps, show_progress=False)
    for layer in range(embedded_model.cfg.n_layers):
        reference = captum_layer_ig(embedded_model, embedded_task, direction, kind, layer, n_steps)
        torch.testing.assert_close(scores[kind.name][:, layer], reference.float(), atol=1e-4,
                                   rtol=1e-4)


def test_completeness_with_50_steps(embedded_model, embedded_task):
    scores = attrscope.attribute(embedded_model, embedded_task, "ig", "denoising",
                                 show_progress=False)
    for kind in ("heads", "neurons"):
        residual = scores.extras[f"completeness_residual.{kind}"]
        change = scores.extras[f"path_delta.{kind}"]
        # the residual is what is left after summing: recompute it from the scores
        torch.testing.assert_close(scores[kind].sum(-1) - change, residual, atol=1e-5, rtol=0)
        assert change.abs().max() > 0.1
        assert (residual.abs() <= 1e-3 * change.abs().clamp_min(1e-2)).all(), kind


def test_few_steps_leave_a_visible_residual(embedded_model, embedded_task):
    """With a single step IG is not exact; the reported residual must show it."""
    scores = attrscope.attribute(embedded_model, embedded_task, "ig", "denoising", "heads",
                                 n_steps=1, show_progress=False)
    assert scores.extras["completeness_residual.heads"].abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["heads", "neurons"])
def test_ig_equals_ap_where_metric_is_linear(embedded_model, embedded_task, kind):
    """Where the metric is linear in a layer's activation, moving all units together (IG) and
    patching one unit at a time (AP) give the same per-unit scores."""
    from test_attribution_patching import linearising_hooks, scored_units

    units = scored_units(embedded_model, kind)
    with embedded_model.hooks(fwd_hooks=linearising_hooks(embedded_model, kind)):
        ig = attrscope.attribute(embedded_model, embedded_task, "ig", "noising", kind,
                                 show_progress=False)
        ap = attrscope.attribute(embedded_model, embedded_task, "ap", "noising", kind,
                                 show_progress=False, units={kind: units})
    last = embedded_model.cfg.n_layers - 1
    ap_last, ig_last = ap[kind][:, last][:, units], ig[kind][:, last][:, units]
    assert ap_last.abs().max() > 1e-2
    torch.testing.assert_close(ig_last, ap_last, atol=1e-4, rtol=1e-4)


def test_zero_baseline_is_set_at_the_attributed_activation(embedded_model, embedded_task):
    """Zero baseline = the neuron's post-activation set to 0 (not the MLP input zeroed, which
    gives GELU(bias)): the path's metric change is metric(run) - metric(run, activation = 0)."""
    scores = attrscope.attribute(embedded_model, embedded_task, "ig", "noising", "neurons",
                                 baseline="zero", show_progress=False)
    run, _ = run_and_source(embedded_task, "noising")
    with torch.no_grad():
        full = embedded_task.metric(embedded_model(run))
    for layer in range(embedded_model.cfg.n_layers):
        zeroed = zero_layer_metric(embedded_model, embedded_task, run, NEURONS.hook_name(layer))
        torch.testing.assert_close(scores.extras["path_delta.neurons"][:, layer], full - zeroed,
                                   atol=1e-4, rtol=0)
    assert scores.extras["completeness_residual.neurons"].abs().max() < 1e-2


def test_unknown_baseline_is_refused(random_model, random_task):
    with pytest.raises(ValueError, match="baseline"):
        attrscope.attribute(random_model, random_task, "ig", "noising", baseline="mean",
                            show_progress=False)
