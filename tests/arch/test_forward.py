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


def test_a_grad_gate_drops_exactly_one_block(random_model, random_task):
    """With block l dropped, the gradient at a unit of block l is zero and at a later block's
    unchanged; an earlier block's gradient loses block l's paths."""
    runner = Runner(random_model, random_task, "denoising", [HEADS])
    rows = torch.arange(random_task.n)
    hold, gate = forward.Hold({("z", 0), ("z", 1), ("z", 2)}), forward.GradGate()
    sites = [("z", 0), ("z", 1), ("z", 2)]
    with torch.enable_grad():
        metric = runner.metric_of(runner.run_tokens, [hold, gate], rows)
        full = torch.autograd.grad(metric.sum(), [hold.held[s] for s in sites], retain_graph=True)
        gate.layer = 1
        dropped = torch.autograd.grad(metric.sum(), [hold.held[s] for s in sites])
    assert dropped[1].abs().max() == 0 and full[1].abs().max() > 0
    torch.testing.assert_close(dropped[2], full[2])
    assert (dropped[0] - full[0]).abs().max() > 1e-6


def test_every_method_records_one_engine_on_a_family_with_an_adapter(random_model, random_task):
    task = attrscope.load_task("ioi", random_model, n=2, seed=4)
    cases = [("ap", "heads", {}), ("atp", "heads,neurons", {}), ("atpstar", "heads", {}),
             ("ig", "heads", {"n_steps": 2}), ("eap", "edges", {}), ("exact", "edges", {})]
    for method, components, settings in cases:
        scores = attrscope.attribute(random_model, task, method, "denoising", components,
                                     show_progress=False, **settings)
        assert scores.meta["engine"] == "suffix_forward", (method, scores.meta)
