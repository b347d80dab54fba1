"""``atp``: exact identity with ``ap`` where the metric is linear in the patched activation."""

import pytest
import torch

import attrscope


def linearising_hooks(model, kind: str):
    """Hooks under which the metric is linear in the last layer's ``kind`` activation.

    The final LayerNorm's scale is frozen to 1, so the norm is x - mean(x) (times its weight, plus
    bias). For heads, the last MLP's output is also held at zero: otherwise the heads feed it.
    """
    last = model.cfg.n_layers - 1
    hooks = [("ln_final.hook_scale", lambda scale, hook: torch.ones_like(scale))]
    if kind == "heads":
        hooks.append((f"blocks.{last}.hook_mlp_out", lambda out, hook: torch.zeros_like(out)))
    return hooks


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("kind", ["heads", "neurons"])
def test_atp_equals_ap_when_metric_is_linear(embedded_model, embedded_task, direction, kind):
    model = embedded_model
    last = model.cfg.n_layers - 1
    units = scored_units(model, kind)
    with model.hooks(fwd_hooks=linearising_hooks(model, kind)):
        ap = attrscope.attribute(model, embedded_task, "ap", direction, kind, show_progress=False,
                                 units={kind: units})
        atp = attrscope.attribute(model, embedded_task, "atp", direction, kind, show_progress=False)
    ap_scores, atp_scores = ap[kind][..., units], atp[kind][..., units]
    assert ap_scores[:, last].abs().max() > 1e-2
    torch.testing.assert_close(atp_scores[:, last], ap_scores[:, last], atol=1e-4, rtol=1e-4)
    # Earlier layers feed the nonlinear rest of the network: there the estimate differs by ten times
    # the tolerance or more, which shows this comparison can fail.
    assert (atp_scores[:, :last] - ap_scores[:, :last]).abs().max() > 1e-3


def scored_units(model, kind: str) -> list[int]:
    """Every head, and every 8th neuron: exact patching of all neurons under the hooks (no fast
    path) costs minutes and adds nothing to an identity checked unit by unit."""
    if kind == "heads":
        return list(range(int(model.cfg.n_heads)))
    return list(range(0, int(model.cfg.d_mlp), 8))


def test_atp_is_first_order_estimate_of_ap(embedded_model, embedded_task):
    ap = attrscope.attribute(embedded_model, embedded_task, "ap", "denoising", "heads",
                             show_progress=False)
    atp = attrscope.attribute(embedded_model, embedded_task, "atp", "denoising", "heads",
                              show_progress=False)
    corr = torch.corrcoef(torch.stack([ap["heads"].flatten(), atp["heads"].flatten()]))[0, 1]
    assert corr > 0.5


@pytest.mark.parametrize("method", ["atp", "atpstar"])
def test_atp_sample_chunks_do_not_change_results(embedded_model, embedded_task, method):
    whole = attrscope.attribute(embedded_model, embedded_task, method, "noising", show_progress=False)
    chunked = attrscope.attribute(embedded_model, embedded_task, method, "noising",
                                  show_progress=False, max_batch_rows=4)
    for kind in ("heads", "neurons"):
        torch.testing.assert_close(chunked[kind], whole[kind], atol=1e-5, rtol=1e-5)
    assert set(chunked.extras) == set(whole.extras)
    for name in whole.extras:  # atpstar: the query, key and value terms of the QK fix
        torch.testing.assert_close(chunked.extras[name], whole.extras[name], atol=1e-5, rtol=1e-5)


def test_atp_costs_two_forward_passes(random_model, random_task, monkeypatch):
    """The source run plus one run with gradients: no separate cached run. (Every method also
    checks the block adapter once against the model's own forward: one model forward and one
    adapter run.)"""
    from attrscope import HEADS, NEURONS, arch
    from attrscope.engine import Runner

    calls, adapter_runs = [], []
    embedding = arch.embedding
    monkeypatch.setattr(arch, "embedding", lambda *a, **k: adapter_runs.append(1) or embedding(*a, **k))
    runner = Runner(random_model, random_task, "denoising", [HEADS, NEURONS])
    with random_model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: calls.append(1))]):
        scores = attrscope.attribute(random_model, random_task, "atp", "denoising",
                                     show_progress=False, runner=runner)
    assert len(calls) == 1  # the model's own run, which the adapter is checked against
    assert len(adapter_runs) == 1 + 2  # the check's run; the source run and the run with gradients
    assert scores.meta["engine"] == "suffix_forward"
    with torch.no_grad():
        run_metric = random_task.metric(random_model(random_task.corrupted_tokens))
    torch.testing.assert_close(scores.extras["metric.run"], run_metric, atol=1e-5, rtol=0)
