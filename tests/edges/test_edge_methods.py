"""``eap`` and ``exact`` edge patching against independent references:

- the edge forward reproduces the model's own metric (TransformerBridge);
- exact patching of all out-edges of a node at once = node activation patching (``ap``);
- EAP summed over all out-edges of a node = node attribution patching (``atp``);
- exact batched = a plain one-edge-per-forward loop;
- EAP = exact where the metric is linear in the destination input (logits with the final norm's
  scale frozen), and differs elsewhere.
"""

import dataclasses

import pytest
import torch

import attrscope
from attrscope.analysis.agreement import agreement
from attrscope.edges.graph import Graph
from attrscope.api import attribute_edges
from attrscope.edges.methods import (EdgeRun, eap_ig_activations_scores, eap_ig_sublayer_scores,
                                     eap_scores, exact_scores)
from attrscope.methods.integrated_gradients import gauss_legendre
from attrscope.scores import Scores
from attrscope.sites import resolve_positions
from oracles import one_edge_loop


def out_edges(graph: Graph, source: int) -> list[int]:
    return torch.nonzero(graph.source_index == source).flatten().tolist()


def node_sources(graph: Graph):
    """(kind, layer, unit-or-None, source index) of every head and MLP."""
    for layer in range(graph.n_layers):
        for head in range(graph.n_heads):
            yield "heads", layer, head, graph.head_source(layer, head)
        yield "neurons", layer, None, graph.mlp_source(layer)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_edge_forward_reproduces_model_metric(random_model, random_task, direction):
    er = EdgeRun.prepare(random_model, random_task, direction)
    runner_metric = attrscope.attribute(random_model, random_task, "atp", direction, "heads",
                                        show_progress=False).extras["metric.run"]
    torch.testing.assert_close(er.metric_run, runner_metric, atol=1e-4, rtol=1e-4)
    assert (er.metric_run - er.metric_source).abs().max() > 1e-2


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_out_edges_together_equal_node_patching(random_model, random_task, direction):
    er = EdgeRun.prepare(random_model, random_task, direction)
    graph = er.graph
    ap = attrscope.attribute(random_model, random_task, "ap", direction, ("heads", "neurons"),
                             show_progress=False)
    atp = attrscope.attribute(random_model, random_task, "atp", direction, ("heads", "neurons"),
                              show_progress=False)
    nodes = list(node_sources(graph))
    exact = exact_scores(er, [out_edges(graph, s) for *_, s in nodes], max_batch_rows=40)
    eap = eap_scores(er)
    for i, (kind, layer, unit, source) in enumerate(nodes):
        node_ap = ap[kind][:, layer, unit] if unit is not None else None
        node_atp = atp[kind][:, layer, unit] if unit is not None else atp[kind][:, layer].sum(-1)
        torch.testing.assert_close(eap[:, out_edges(graph, source)].sum(-1), node_atp,
                                   atol=1e-4, rtol=1e-4)
        if node_ap is not None:  # an MLP node's patch is all its neurons at once: no ap score
            torch.testing.assert_close(exact[:, i], node_ap, atol=1e-4, rtol=1e-4)
    assert ap["heads"].abs().max() > 1e-2


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_exact_batched_equals_one_edge_loop(random_model, random_task, direction):
    er = EdgeRun.prepare(random_model, random_task, direction)
    edges = list(range(0, er.graph.n_edges, 5)) + [er.graph.n_edges - 1]
    batched = exact_scores(er, [[e] for e in edges], max_batch_rows=35)
    loop = one_edge_loop(er, edges)
    torch.testing.assert_close(batched, loop, atol=1e-4, rtol=1e-4)
    assert loop.abs().max() > 1e-2


def freeze_final_norm_scale(er: EdgeRun) -> None:
    """Make the metric linear in the final residual stream: the final LayerNorm's scale is held
    at 1, so the norm is x - mean(x) (times its weight, plus bias). On this run's own copy of
    the adapter: the model's is shared by every run on it."""
    w = er.forward.w
    weight, bias = w.ln_final.weight, w.ln_final.bias
    er.forward.w = dataclasses.replace(
        w, ln_final=lambda resid: (resid - resid.mean(-1, keepdim=True)) * weight + bias)
    rows = torch.arange(er.n)
    with torch.no_grad():
        er.metric_run = er.forward.metric(er.run_embed, *er.answer_args(rows))


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_eap_equals_exact_where_metric_is_linear(embedded_model, embedded_task, direction):
    er = EdgeRun.prepare(embedded_model, embedded_task, direction)
    freeze_final_norm_scale(er)
    graph = er.graph
    into_logits = torch.nonzero(graph.dest_index == graph.logits_dest).flatten().tolist()
    last = graph.n_layers - 1
    into_last_qk = [e for e in range(graph.n_edges)
                    if graph.dest_names[int(graph.dest_index[e])][0].startswith(f"{last}.")
                    and graph.dest_names[int(graph.dest_index[e])][1] in ("q", "k")][::7]
    eap = eap_scores(er)
    exact = exact_scores(er, [[e] for e in into_logits + into_last_qk], max_batch_rows=600)
    k = len(into_logits)
    assert exact[:, :k].abs().max() > 1e-1
    torch.testing.assert_close(eap[:, into_logits], exact[:, :k], atol=1e-4, rtol=1e-4)
    # Query and key inputs go through the softmax: there the estimate is off by far more than the
    # tolerance, which shows the comparison can fail.
    assert (eap[:, into_last_qk] - exact[:, k:]).abs().max() > 1e-2


def test_eap_sample_chunks_do_not_change_results(random_model, random_task):
    er = EdgeRun.prepare(random_model, random_task, "denoising")
    torch.testing.assert_close(eap_scores(er, max_batch_rows=2), eap_scores(er), atol=1e-5, rtol=1e-5)


def test_edge_scores_save_load_and_agreement(random_model, random_task, tmp_path):
    eap = attribute_edges(random_model, random_task, "eap", "denoising", show_progress=False)
    exact = attribute_edges(random_model, random_task, "exact", "denoising", show_progress=False)
    assert eap["edges"].shape == (random_task.n, 262)
    loaded = Scores.load(eap.save(tmp_path / "eap.safetensors"))
    torch.testing.assert_close(loaded["edges"], eap["edges"])
    assert loaded.meta["graph"] == {"n_layers": 3, "n_heads": 4}
    assert loaded.labels("edges")[5] == "input -> 0.1 (v)"
    label, value = loaded.top("edges", 1)[0]
    e = Graph(3, 4).edge_index[label]
    assert value == pytest.approx(float(eap["edges"][:, e].mean()))
    assert abs(value) == pytest.approx(float(eap.mean("edges").abs().max()))
    result = agreement(eap, exact, "edges", k=10, n_boot=50)
    assert result["n_components"] == 262
    assert result["correlations"]["pearson_pooled"].value > 0.3
    assert all(" -> " in row["component"] for row in result["disagreements"])


def test_bad_edge_inputs_are_named(random_model, random_task):
    with pytest.raises(ValueError, match="n_samples, 262"):
        Scores(values={"edges": torch.zeros(2, 10)}, meta={"graph": {"n_layers": 3, "n_heads": 4}})
    with pytest.raises(ValueError, match="meta\\['graph'\\]"):
        Scores(values={"edges": torch.zeros(2, 10)})
    with pytest.raises(ValueError, match="Unknown edge method 'ig'"):
        attribute_edges(random_model, random_task, "ig")
    er = EdgeRun.prepare(random_model, random_task, "noising")
    with pytest.raises(ValueError, match="Edge set 1 has edge indices \\[262\\]"):
        exact_scores(er, [[0], [262]])


def eap_ig_loop(er: EdgeRun, steps: int) -> torch.Tensor:
    """Oracle for EAP-IG (inputs): one forward and backward per sample and quadrature node."""
    graph, ef = er.graph, er.forward
    out = torch.zeros(er.n, graph.n_edges)
    alphas, weights = gauss_legendre(steps)
    for i in range(er.n):
        row = torch.tensor([i])
        for alpha, weight in zip(alphas.tolist(), weights.tolist()):
            embed = (1 - alpha) * er.run_embed[row] + alpha * er.source_embed[row]
            _, probes = ef.probed(embed, *er.answer_args(row))
            grads = ef.dense_grads(probes)[0]  # [P, n_dests, d]
            for e in range(graph.n_edges):
                dest, source = int(graph.dest_index[e]), int(graph.source_index[e])
                out[i, e] += float((er.delta[i, :, source] * grads[:, dest]).sum()) * weight
    return out


def test_eap_ig_equals_per_step_loop(random_model, random_task):
    er = EdgeRun.prepare(random_model, random_task, "noising")
    got = eap_scores(er, max_batch_rows=4, steps=3)  # passes cut across samples and steps
    expected = eap_ig_loop(er, 3)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (got - eap_scores(er)).abs().max() > 1e-3  # the interpolation changes the gradients


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_eap_ig_equals_exact_into_logits_where_linear(embedded_model, embedded_task, direction):
    er = EdgeRun.prepare(embedded_model, embedded_task, direction)
    freeze_final_norm_scale(er)
    graph = er.graph
    into_logits = torch.nonzero(graph.dest_index == graph.logits_dest).flatten().tolist()
    eap_ig = eap_scores(er, steps=4)
    exact = exact_scores(er, [[e] for e in into_logits], max_batch_rows=600)
    torch.testing.assert_close(eap_ig[:, into_logits], exact, atol=1e-4, rtol=1e-4)
    assert exact.abs().max() > 1e-1


def test_eap_ig_steps_must_be_positive(random_model, random_task):
    with pytest.raises(ValueError, match="steps must be at least 1"):
        attribute_edges(random_model, random_task, "eap-ig", n_steps=0, show_progress=False)



def stage_edges(graph: Graph) -> list[list[int]]:
    """Edges into each destination stage: layer l's q/k/v inputs, MLP l's input, the logits."""
    per, A = graph.dests_per_layer, graph.n_attn_dests
    stage_of = [2 * (d // per) + (d % per == A) for d in range(graph.n_dests)]
    stage = torch.tensor(stage_of)[graph.dest_index]
    return [torch.nonzero(stage == s).flatten().tolist() for s in range(2 * graph.n_layers + 1)]


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_eap_ig_activations_completeness_per_stage(random_model, random_task, direction):
    """Summed over the edges into one stage, EAP-IG (activations) integrates the gradient along
    the straight path of that stage's inputs: it equals exact patching of all those edges."""
    er = EdgeRun.prepare(random_model, random_task, direction)
    groups = stage_edges(er.graph)
    scores = eap_ig_activations_scores(er, steps=16, max_batch_rows=24)
    exact = exact_scores(er, groups)
    sums = torch.stack([scores[:, g].sum(-1) for g in groups], dim=1)
    torch.testing.assert_close(sums, exact, atol=1e-4, rtol=1e-4)
    # The logits stage's edges carry the whole difference between the two prompts.
    torch.testing.assert_close(exact[:, -1], er.metric_source - er.metric_run, atol=1e-4, rtol=1e-4)
    # One quadrature node (the plain gradient at the midpoint) misses it: the check can fail.
    coarse = eap_ig_activations_scores(er, steps=1)
    assert (torch.stack([coarse[:, g].sum(-1) for g in groups], 1) - exact).abs().max() > 1e-3


def test_eap_ig_activations_equals_exact_into_logits_where_linear(embedded_model, embedded_task):
    er = EdgeRun.prepare(embedded_model, embedded_task, "denoising")
    freeze_final_norm_scale(er)
    into_logits = stage_edges(er.graph)[-1]
    got = eap_ig_activations_scores(er, steps=2)
    exact = exact_scores(er, [[e] for e in into_logits], max_batch_rows=600)
    torch.testing.assert_close(got[:, into_logits], exact, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("metric", ["logprob_diff", "prob_diff"])
def test_edges_on_set_metrics_equal_node_patching(random_model, metric):
    """Edge methods read the task's metric too: on answer-set metrics, all out-edges of a head
    patched together equal node ap, and EAP summed over them equals node atp."""
    from attrscope.tasks import build_task
    from set_tasks import set_pairs

    task = build_task(random_model, set_pairs(), name="sets", metric=metric)
    er = EdgeRun.prepare(random_model, task, "denoising")
    graph = er.graph
    ap = attrscope.attribute(random_model, task, "ap", "denoising", "heads", show_progress=False)
    atp = attrscope.attribute(random_model, task, "atp", "denoising", "heads", show_progress=False)
    heads = [(layer, head, graph.head_source(layer, head))
             for layer in range(graph.n_layers) for head in range(graph.n_heads)]
    exact = exact_scores(er, [out_edges(graph, s) for *_, s in heads], max_batch_rows=40)
    eap = eap_scores(er)
    scale = float(ap["heads"].abs().max())
    assert scale > 1e-5
    atol = 1e-4 * min(scale, 1.0)  # prob_diff scores on a random model are ~1e-4
    for i, (layer, head, source) in enumerate(heads):
        torch.testing.assert_close(exact[:, i], ap["heads"][:, layer, head], atol=atol, rtol=1e-4)
        torch.testing.assert_close(eap[:, out_edges(graph, source)].sum(-1),
                                   atp["heads"][:, layer, head], atol=atol, rtol=1e-4)


EDGE_RUNS = {
    "eap": lambda er: eap_scores(er, 13),
    "eap-ig": lambda er: eap_scores(er, 13, steps=3),
    "eap by position": lambda er: eap_scores(er, positions=resolve_positions(er.task, ["S2", "END"])),
    "eap-ig-act": lambda er: eap_ig_activations_scores(er, 3, 13),
    "eap-ig-act eap-ig": lambda er: eap_ig_sublayer_scores(er, 3, 13),
    "exact": lambda er: exact_scores(er, [[e] for e in range(0, er.graph.n_edges, 3)], 40),
    "exact edge sets": lambda er: exact_scores(er, stage_edges(er.graph)),
}


@pytest.mark.parametrize("model", ["random_model", "llama_model"])
@pytest.mark.parametrize("method", sorted(EDGE_RUNS))
def test_answer_only_last_block_changes_no_edge_score(model, method, request, monkeypatch):
    """Edge passes compute the last block's queries, attention output and MLP at each row's
    answer position only (every position's keys and values still): the scores equal those of
    the same passes computing every position, and the last MLP sees one position a row."""
    from attrscope.arch import forward

    model = request.getfixturevalue(model)
    task = attrscope.load_task("ioi", model, n=4, seed=1)
    er = EdgeRun.prepare(model, task, "denoising")
    er.stream("run", 0)  # the recorded streams are every position's, before the spy
    w, last = er.forward.w, er.graph.n_layers - 1
    seen = []

    def mlp_hidden(layer, x, hidden=w.mlp_hidden):
        if layer == last:
            seen.append(x.shape[1])
        return hidden(layer, x)

    monkeypatch.setattr(w, "mlp_hidden", mlp_hidden)
    answer_only = EDGE_RUNS[method](er)
    assert seen and set(seen) == {1}
    seen.clear()
    monkeypatch.setattr(forward, "_answer_only", lambda edits, n_layers, at: None)
    every = EDGE_RUNS[method](er)
    assert max(seen) > 1
    assert every.abs().max() > 1e-2
    torch.testing.assert_close(answer_only, every, atol=1e-5 * float(every.abs().max()), rtol=1e-5)
