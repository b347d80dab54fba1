"""The one forward (attrscope.arch.forward) against the model's own forward and TransformerLens
hooks: where a run starts, its edits as data, what it reads."""

import pytest
import torch

import attrscope
from attrscope import HEADS, NEURONS, arch
from attrscope.arch import forward
from attrscope.engine import Runner
from families import build


@pytest.fixture(scope="module", params=["gpt2", "gemma2", "gpt_neox"])
def family_model(request, tmp_path_factory, random_model):
    """The random GPT-2 model, and two family fixtures: post-norms, soft-capping, sliding
    windows and grouped-query attention (Gemma-2); parallel blocks, partial rotary (GPT-NeoX)."""
    if request.param == "gpt2":
        return random_model
    folder = tmp_path_factory.mktemp(request.param)
    build(request.param, folder)
    return attrscope.load_model(str(folder))


@pytest.mark.parametrize("stage", ["pre", "mid", "post"])
def test_a_run_from_any_layer_stage_and_position_equals_the_full_run(family_model, stage):
    model = family_model
    task = attrscope.load_task("ioi", model, n=3, seed=1)
    adapter = arch.adapter_for(model)
    caches: list[dict] = []
    with torch.no_grad():
        embed = arch.embedding(model, task.clean_tokens, adapter)
        full = forward.full_forward(adapter, embed, caches)
        for layer in range(adapter.n_layers):
            if stage == "mid" and adapter.parallel:
                continue
            for p in (0, 2):
                if stage == "pre":
                    resid = caches[layer]["pre"]
                elif stage == "mid":
                    resid = caches[layer]["mid"]
                else:
                    resid = caches[layer + 1]["pre"] if layer + 1 < adapter.n_layers else full
                plan = forward.Plan(forward.Start(layer, stage, p),
                                    prefix=lambda l, p=p: (caches[l]["k"][:, :, :p], caches[l]["v"][:, :, :p]))
                got = forward.final_stream(adapter, resid[:, p:], plan)
                torch.testing.assert_close(got, full[:, p:], atol=1e-4, rtol=1e-4)
                rows = torch.arange(task.n)
                metric = forward.metric(adapter, resid[:, p:], plan, task.answer_pos,
                                        task.readout(rows))
                want = adapter.final(full[rows, task.answer_pos], task.readout(rows))
                torch.testing.assert_close(metric, want, atol=1e-4, rtol=1e-4)
    assert full.abs().max() > 0


def test_a_patch_as_data_equals_the_same_patch_through_hooks(random_model, random_task):
    """A Replace edit on the adapter and as TransformerLens hooks (the fallback) give the same
    metric; a Hold reads the same activations and gradients on both."""
    fast = Runner(random_model, random_task, "denoising", [HEADS, NEURONS])
    slow = Runner(random_model, random_task, "denoising", [HEADS, NEURONS], allow_fast=False)
    n = random_task.n
    rows = torch.arange(n)
    values = fast.source_acts[NEURONS.hook_name(1)]
    mask = torch.zeros(n, values.shape[2], dtype=torch.bool)
    mask[:, [3, 40, 77]] = True
    results = []
    for runner in (fast, slow):
        hold = forward.Hold({("z", 0), ("hidden", 2)})
        edits = [forward.Replace(("hidden", 1), mask, values), hold]
        with torch.enable_grad():
            metric = runner.metric_of(runner.run_tokens, edits, rows)
            grads = torch.autograd.grad(metric.sum(), [hold.held[("z", 0)], hold.held[("hidden", 2)]])
        results.append((metric.detach(), hold.held[("hidden", 2)].detach(), grads))
    assert fast.engine_used == "suffix_forward" and slow.engine_used == "transformer_lens_hooks"
    (m1, a1, g1), (m2, a2, g2) = results
    torch.testing.assert_close(m1, m2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a1, a2, atol=1e-4, rtol=1e-4)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    assert (m1 - fast.metric_run).abs().max() > 1e-3  # the patch changes the metric


class _Gate(torch.autograd.Function):
    """Oracle: identity forward; backward zeroes the gradient when ``switch["layer"] == layer``."""

    @staticmethod
    def forward(ctx, x, layer, switch):
        ctx.layer, ctx.switch = layer, switch
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return (torch.zeros_like(grad) if ctx.switch["layer"] == ctx.layer else grad), None, None


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_dropping_a_block_by_subtraction_equals_zeroing_its_gradient(family, random_model,
                                                                     tmp_path):
    """atpstar's GradDrop (full gradient less the paths through block l's attention and MLP
    outputs) equals backwards with the gradient through those outputs switched to zero, on
    sequential and parallel blocks; a unit's own block takes its whole gradient."""
    from attrscope.methods.atp_star import gradients_by_dropped_block

    if family == "gpt2":
        model = random_model
    else:
        build(family, tmp_path)
        model = attrscope.load_model(str(tmp_path))
    task = attrscope.load_task("ioi", model, n=3, seed=2)
    runner = Runner(model, task, "denoising", [HEADS, NEURONS])
    rows = torch.arange(task.n)
    L = runner.n_layers
    sites = [(p, l) for l in range(L) for p in ("z", "hidden")]
    outs = [(p, l) for l in range(L) for p in ("attn_out", "mlp_out")]
    switch = {"layer": None}

    def gate(point, layer, x):
        return _Gate.apply(x, layer, switch) if point in ("attn_out", "mlp_out") else x

    with torch.enable_grad():
        hold = forward.Hold(sites + outs)
        metric = runner.metric_of(runner.run_tokens, [hold], rows)
        got = gradients_by_dropped_block(
            metric, [hold.held[s] for s in sites],
            [(hold.held[outs[2 * l]], hold.held[outs[2 * l + 1]]) for l in range(L)])
        oracle_hold = forward.Hold(sites)
        metric = runner.metric_of(runner.run_tokens, [oracle_hold, gate], rows)
        for drop in [None, *range(L)]:
            switch["layer"] = drop
            want = torch.autograd.grad(metric.sum(), [oracle_hold.held[s] for s in sites],
                                       retain_graph=True)
            for site, g, w in zip(sites, got[0 if drop is None else drop + 1], want):
                scale = float(want[0].abs().max())
                torch.testing.assert_close(g, w, atol=1e-5 * scale, rtol=1e-4, msg=str((drop, site)))
                if site[1] == drop:  # a unit's whole effect passes through its own block
                    assert w.abs().max() == 0
    assert (got[1][0] - got[0][0]).abs().max() > 0 or L == 1


def test_every_method_records_one_engine_on_a_family_with_an_adapter(random_model, random_task):
    task = attrscope.load_task("ioi", random_model, n=2, seed=4)
    cases = [("ap", "heads", {}), ("atp", "heads,neurons", {}), ("atpstar", "heads", {}),
             ("ig", "heads", {"n_steps": 2}), ("eap", "edges", {}), ("exact", "edges", {})]
    for method, components, settings in cases:
        scores = attrscope.attribute(random_model, task, method, "denoising", components,
                                     show_progress=False, **settings)
        assert scores.meta["engine"] == "suffix_forward", (method, scores.meta)


def test_hooks_only_for_a_model_the_adapter_cannot_run(random_model, random_task, monkeypatch):
    """The fallback is chosen in one place: on a model with a verified adapter, gradient passes
    and ablations never turn their edits into TransformerLens hooks; without one they do."""
    from attrscope.analysis.ablation import Ablator, Component

    calls = []
    original = forward.as_hooks
    monkeypatch.setattr(forward, "as_hooks", lambda *a: calls.append(1) or original(*a))
    task = attrscope.load_task("ioi", random_model, n=2, seed=5)
    for method in ("atp", "atpstar"):
        attrscope.attribute(random_model, task, method, "noising", "heads", show_progress=False)
    Ablator(random_model, task, how="mean").metrics([[Component("heads", 1, 2)]])
    assert calls == []
    slow = Runner(random_model, task, "noising", [HEADS], allow_fast=False)
    attrscope.attribute(random_model, task, "atp", "noising", "heads", show_progress=False,
                        runner=slow)
    assert calls and slow.engine_used == "transformer_lens_hooks"
