"""The exact edge passes' patched attention slots (:class:`attrscope.edges.forward.SlotAdditions`:
q, k, v computed once from the shared stream, only each row's patched slot recomputed) against
the every-slot path (one input copy per attention slot, the dense additions), run as a plain
loop of one forward per edge or edge set, on the GPT-2 (multi-head) and Llama (grouped-query,
rotary) fixtures; and a check that the comparison catches a patch put into the wrong slot.
"""

import random

import pytest
import torch

from attrscope.edges import forward as edge_forward
from attrscope.edges.forward import Additions
from attrscope.edges.methods import EdgeRun, exact_scores
from oracles import one_edge_loop

FIXTURES = [("random_model", "random_task"), ("llama_model", "llama_task")]


def edge_run(request, fixtures) -> EdgeRun:
    model, task = (request.getfixturevalue(name) for name in fixtures)
    return EdgeRun.prepare(model, task, "denoising")


def attention_edges(graph) -> list[int]:
    """Into every attention slot of every layer: the first and the last source it reads."""
    edges = []
    for dest in range(graph.n_dests - 1):
        if dest % graph.dests_per_layer == graph.n_attn_dests:
            continue
        into = torch.nonzero(graph.dest_index == dest).flatten()
        edges += [int(into[0]), int(into[-1])]
    return edges


def set_loop(er: EdgeRun, sets: list[list[int]]) -> torch.Tensor:
    """Exact patching of each edge set, one forward per set with every attention slot its own
    input copy (dense additions built by hand). -> ``[n, len(sets)]``."""
    graph, ef = er.graph, er.forward
    n, P, _, d = er.delta.shape
    rows = torch.arange(n)
    out = torch.empty(n, len(sets))
    for j, edge_set in enumerate(sets):
        add = Additions.none(graph.n_layers)
        for e in edge_set:
            dest, source = int(graph.dest_index[e]), int(graph.source_index[e])
            delta = er.delta[:, :, source]
            layer, slot = divmod(dest, graph.dests_per_layer)
            if dest == graph.logits_dest:
                add.logits = delta if add.logits is None else add.logits + delta
            elif slot == graph.n_attn_dests:
                add.mlp[layer] = delta if add.mlp[layer] is None else add.mlp[layer] + delta
            else:
                if add.attn[layer] is None:
                    add.attn[layer] = torch.zeros(n, P, graph.n_attn_dests, d)
                add.attn[layer][:, :, slot] += delta
        with torch.no_grad():
            out[:, j] = ef.patched(er.run_embed, *er.answer_args(rows), add) - er.metric_run
    return out


def mixed_sets(graph, seed: int = 0) -> list[list[int]]:
    """Edge sets with several slots of one layer, one slot fed by several sources, several
    layers, and MLP and logits edges beside attention ones."""
    rng = random.Random(seed)
    attn = attention_edges(graph)
    sets = [rng.sample(range(graph.n_edges), 6) for _ in range(6)]
    per_layer = len(attn) // graph.n_layers
    sets += [attn[layer * per_layer:(layer + 1) * per_layer] for layer in range(graph.n_layers)]
    sets += [torch.nonzero(graph.dest_index == dest).flatten().tolist()[:4]
             for dest in (0, graph.n_attn_dests - 1, graph.dests_per_layer + 1)]
    return sets


@pytest.mark.parametrize("fixtures", FIXTURES, ids=["gpt2", "llama"])
def test_patched_slot_equals_every_slot_path_single_edges(request, fixtures):
    er = edge_run(request, fixtures)
    edges = attention_edges(er.graph)
    batched = exact_scores(er, [[e] for e in edges], max_batch_rows=3 * er.n)
    loop = one_edge_loop(er, edges)
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=1e-5)
    assert loop.abs().max() > 1e-2


@pytest.mark.parametrize("fixtures", FIXTURES, ids=["gpt2", "llama"])
def test_patched_slot_equals_every_slot_path_edge_sets(request, fixtures):
    er = edge_run(request, fixtures)
    sets = mixed_sets(er.graph)
    batched = exact_scores(er, sets, max_batch_rows=4 * er.n)
    loop = set_loop(er, sets)
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=1e-5)
    assert loop.abs().max() > 1e-2


@pytest.mark.parametrize("fixtures", FIXTURES, ids=["gpt2", "llama"])
@pytest.mark.parametrize("wrong", ["next slot", "q as k"])
def test_a_wrong_slot_is_caught(request, fixtures, wrong, monkeypatch):
    """The same comparison fails when the patched path recomputes another slot than the edge's."""
    er = edge_run(request, fixtures)
    edges = attention_edges(er.graph)
    loop = one_edge_loop(er, edges)
    right = edge_forward.slot_input
    n_slots = er.graph.n_attn_dests

    def next_slot(group, slot):
        return right(group, (slot + 1) % n_slots)

    def q_as_k(group, slot):
        kind, head = right(group, slot)
        return ("k", head // group) if kind == "q" else (kind, head)

    monkeypatch.setattr(edge_forward, "slot_input", next_slot if wrong == "next slot" else q_as_k)
    batched = exact_scores(er, [[e] for e in edges], max_batch_rows=3 * er.n)
    assert (batched - loop).abs().max() > 1e-3


def test_slot_additions_mean_their_dense_addition(random_model, random_task):
    """One pass: the same SlotAdditions given to the forward as such and as :meth:`dense`."""
    er = EdgeRun.prepare(random_model, random_task, "noising")
    graph, n = er.graph, er.n
    delta = er.delta[:, :, 3]
    groups = [(0, torch.arange(n), delta), (5, torch.arange(1, n), delta[1:] * 2),
              (graph.n_attn_dests - 1, torch.tensor([0, 2]), -delta[[0, 2]])]
    slots = edge_forward.SlotAdditions(groups)
    rows = torch.arange(n)
    sparse, dense = Additions.none(graph.n_layers), Additions.none(graph.n_layers)
    sparse.attn[1], dense.attn[1] = slots, slots.dense(n, graph.n_attn_dests)
    with torch.no_grad():
        got = er.forward.patched(er.run_embed, *er.answer_args(rows), sparse)
        want = er.forward.patched(er.run_embed, *er.answer_args(rows), dense)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (want - er.metric_run).abs().max() > 1e-3
