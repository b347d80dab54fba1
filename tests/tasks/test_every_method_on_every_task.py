"""Every attribution method on every registered task, with the embedded model that performs it:
exact patching against the one-patch-per-forward oracle, IG completeness against whole-layer
patching by hooks, EAP summed over a head's out-edges against node AtP, and finite scores for
AtP* and every edge method. Held-out prompts of mixed lengths."""

import pytest
import torch

import attrscope
from attrscope.components import HEADS
from attrscope.api import attribute_edges
from attrscope.edges.methods import EdgeRun, eap_scores
from attrscope.tasks import GENERATED_TASKS
from oracles import patch_one_unit_per_forward, run_and_source

N = 4
_models: dict = {}


def model_for(name: str):
    """The embedded model that performs task ``name`` (loaded once)."""
    spec = GENERATED_TASKS[name]
    if spec.model not in _models:
        _models[spec.model] = attrscope.load_model(spec.model)
    return _models[spec.model]


def model_and_task(name: str):
    model = model_for(name)
    return model, attrscope.load_task(name, model, n=N, seed=11, split="heldout")


def whole_layer_patch(model, task, direction, name):
    """metric(run with the whole activation at ``name`` from the source) - metric(run) ``[n]``."""
    run, source = run_and_source(task, direction)
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=lambda n: n == name)
        patched = model.run_with_hooks(run, fwd_hooks=[(name, lambda act, hook: cache[name])])
        return task.metric(patched) - task.metric(model(run))


@pytest.mark.parametrize("name", list(GENERATED_TASKS))
def test_every_method_works_on_every_task(name):
    model, task = model_and_task(name)
    assert task.metric_name == GENERATED_TASKS[name].metric
    direction = "denoising"
    layer = model.cfg.n_layers - 2
    ap = attrscope.attribute(model, task, "ap", direction, ("heads", "neurons"), show_progress=False)
    oracle = patch_one_unit_per_forward(model, task, direction, HEADS, layer,
                                        list(range(model.cfg.n_heads)))
    torch.testing.assert_close(ap["heads"][:, layer], oracle, atol=1e-4, rtol=1e-4)
    assert ap["heads"].abs().max() > 1e-3

    ig = attrscope.attribute(model, task, "ig", direction, "heads", show_progress=False)
    change = whole_layer_patch(model, task, direction, HEADS.hook_name(layer))
    torch.testing.assert_close(ig["heads"][:, layer].sum(-1), change,
                               atol=1e-3 * max(float(change.abs().max()), 1e-2), rtol=0)

    atp = attrscope.attribute(model, task, "atp", direction, ("heads", "neurons"), show_progress=False)
    star = attrscope.attribute(model, task, "atpstar", direction, ("heads", "neurons"),
                               show_progress=False)
    for scores in (atp, star):
        assert all(torch.isfinite(scores[kind]).all() for kind in ("heads", "neurons"))

    er = EdgeRun.prepare(model, task, direction)
    eap = eap_scores(er)
    graph = er.graph
    for head in range(model.cfg.n_heads):
        out_edges = torch.nonzero(graph.source_index == graph.head_source(layer, head)).flatten()
        torch.testing.assert_close(eap[:, out_edges].sum(-1), atp["heads"][:, layer, head],
                                   atol=1e-4, rtol=1e-4)
    for method in ("eap-ig", "eap-ig-act"):
        edges = attribute_edges(model, task, method, direction, n_steps=4,
                                show_progress=False)
        assert torch.isfinite(edges["edges"]).all() and edges["edges"].abs().max() > 1e-4


@pytest.mark.parametrize("name", list(GENERATED_TASKS))
def test_every_task_batch_mixes_prompt_lengths_and_reads_each_at_its_answer(name):
    model = model_for(name)
    task = attrscope.load_task(name, model, n=20, seed=5, split="heldout")
    assert len(set(task.answer_pos.tolist())) > 1
    with torch.no_grad():
        batched = task.metric(model(task.clean_tokens))
        for i in (int(task.answer_pos.argmin()), int(task.answer_pos.argmax())):
            alone = model(task.clean_tokens[i:i + 1, : int(task.answer_pos[i]) + 1])
            torch.testing.assert_close(task.metric(alone, torch.tensor([i])), batched[i:i + 1],
                                       atol=1e-4, rtol=1e-4)
