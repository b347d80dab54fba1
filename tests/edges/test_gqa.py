"""Edge methods on a grouped-query-attention (Llama-architecture) model.

``llama_model`` (tests/conftest.py): 3 layers, 4 query heads sharing 2 key/value heads (group
size 2), RMSNorm, rotary positions, SwiGLU MLP, no biases. Checked against independent references:

- the graph's edge count by hand and its labels against an enumeration;
- the edge forward reproduces the model's own metric and per-head outputs (TransformerBridge);
- exact patching of all out-edges of a head = node ``ap``; EAP summed over a node's out-edges =
  node ``atp`` (the node methods run through the bridge's hooks);
- batched ``exact`` = patching one edge per forward *through the bridge*: the destination's
  q/k/v projection (or MLP / final-norm input) is recomputed by hooks from the residual stream
  plus the source's delta, with the model's own norm, rotary embedding and key/value sharing;
- circuits: pruning under shared key/value inputs against a drop-until-stable loop, and the
  faithfulness evaluation (full circuit = the model, empty circuit = the other prompt).
"""

import pytest
import torch

import attrscope
from attrscope.edges.circuit import Circuit, CircuitEvaluator, connected_top, prune
from attrscope.edges.graph import Graph
from attrscope.api import attribute_edges
from attrscope.edges.methods import EdgeRun, eap_scores, exact_scores
from tests.edges.test_edge_methods import node_sources, out_edges
from tests.oracles import run_and_source
from attrscope.cli.options import result_path

DIRECTIONS = ["denoising", "noising"]


@pytest.fixture(scope="module")
def edge_runs(llama_model, llama_task):
    return {d: EdgeRun.prepare(llama_model, llama_task, d) for d in DIRECTIONS}


def test_edge_count_by_hand(llama_model):
    graph = Graph.of_model(llama_model)
    assert (graph.n_layers, graph.n_heads, graph.n_kv_heads, graph.group_size) == (3, 4, 2, 2)
    # Per layer 4 query + 2 key + 2 value inputs; layer l's 8 attention inputs read 1 + 5l
    # sources (8 * (1 + 6 + 11) = 144), MLP l reads 5 + 5l (5 + 10 + 15 = 30), the logits all
    # 16: 190 (multi-head attention with 4 heads would have 262).
    assert graph.n_edges == 190
    assert graph.n_sources == 16 and graph.n_dests == 3 * (4 + 2 * 2 + 1) + 1
    assert len(set(graph.labels)) == 190
    assert graph.as_dict() == {"n_layers": 3, "n_heads": 4, "n_kv_heads": 2}


def enumerate_gqa_edges(n_layers: int, n_heads: int, n_kv: int) -> list[str]:
    """Reference enumeration: a query reader per head, a key and a value reader per kv head
    (after the queries of its group), each reading every writer before its layer."""
    group = n_heads // n_kv
    writers, readers = [("input", 0)], []
    for layer in range(n_layers):
        for head in range(n_heads):
            writers.append((f"{layer}.{head}", 2 * layer + 1))
        for g in range(n_kv):
            readers += [(f"{layer}.{h}", "q", 2 * layer) for h in range(g * group, (g + 1) * group)]
            kv = f"{layer}.kv{g}" if group > 1 else f"{layer}.{g}"
            readers += [(kv, "k", 2 * layer), (kv, "v", 2 * layer)]
        writers.append((f"mlp {layer}", 2 * layer + 2))
        readers.append((f"mlp {layer}", None, 2 * layer + 1))
    readers.append(("logits", None, 2 * n_layers))
    return [f"{w} -> {r}" + (f" ({x})" if x else "")
            for r, x, read_at in readers for w, written_at in writers if written_at <= read_at]


@pytest.mark.parametrize("shape", [(3, 4, 2), (2, 8, 2), (2, 6, 1), (3, 4, 4)])
def test_labels_match_enumeration_and_formula(shape):
    L, H, K = shape
    graph = Graph(L, H, K)
    assert graph.labels == enumerate_gqa_edges(L, H, K)
    # n_edges = sum_l [(H + 2K)(1 + l(H + 1)) + (1 + H + l(H + 1))] + 1 + L(H + 1)
    formula = sum((H + 2 * K) * (1 + l * (H + 1)) + (1 + H + l * (H + 1)) for l in range(L))
    assert graph.n_edges == formula + 1 + L * (H + 1)
    for h in range(H):  # qkv_dest / dest_names / dest_heads agree
        for which, index in (("q", h), ("k", h // (H // K)), ("v", h // (H // K))):
            dest = graph.qkv_dest(1, index, which)
            assert graph.dest_names[dest][1] == which
            assert graph.head_source(1, h) in graph.dest_heads(dest)
    if K == H:
        assert graph == Graph(L, H) and graph.labels == Graph(L, H).labels
        assert graph.as_dict() == {"n_layers": L, "n_heads": H}


def test_bad_kv_heads_are_refused():
    with pytest.raises(ValueError, match="n_kv_heads must divide n_heads"):
        Graph(2, 4, 3)
    with pytest.raises(ValueError, match="0.kv1"):
        Graph(2, 4, 2).edge("1.0", "0.kv1", "k")


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_edge_forward_reproduces_model(llama_model, llama_task, edge_runs, direction):
    er = edge_runs[direction]
    runner = attrscope.engine.Runner(llama_model, llama_task, direction, [attrscope.HEADS])
    torch.testing.assert_close(er.metric_run, runner.metric_run, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(er.metric_source, runner.metric_source, atol=1e-4, rtol=1e-4)
    assert (er.metric_run - er.metric_source).abs().max() > 1e-2
    # per-head outputs z[h] @ W_O[h] of the source - run prompts, from the bridge's hook_z
    graph = er.graph
    for layer in range(graph.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        z_delta = runner.source_acts[name] - runner.run_acts[name]  # [n, P, H, E]
        expected = torch.einsum("nphe,hed->nphd", z_delta, llama_model.W_O[layer].detach())
        got = er.delta[:, :, [graph.head_source(layer, h) for h in range(graph.n_heads)]]
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_out_edges_equal_node_patching(llama_model, llama_task, edge_runs, direction):
    er = edge_runs[direction]
    graph = er.graph
    ap = attrscope.attribute(llama_model, llama_task, "ap", direction, "heads",
                             show_progress=False)
    atp = attrscope.attribute(llama_model, llama_task, "atp", direction, ("heads", "neurons"),
                              show_progress=False)
    nodes = list(node_sources(graph))
    heads = [(layer, unit, s) for kind, layer, unit, s in nodes if kind == "heads"]
    exact = exact_scores(er, [out_edges(graph, s) for *_, s in heads], max_batch_rows=40)
    for i, (layer, head, _) in enumerate(heads):
        torch.testing.assert_close(exact[:, i], ap["heads"][:, layer, head], atol=1e-4, rtol=1e-4)
    eap = eap_scores(er)
    for kind, layer, unit, source in nodes:
        node = atp[kind][:, layer, unit] if unit is not None else atp[kind][:, layer].sum(-1)
        torch.testing.assert_close(eap[:, out_edges(graph, source)].sum(-1), node, atol=1e-4,
                                   rtol=1e-4)
    assert ap["heads"].abs().max() > 1e-2


def patch_edge_through_bridge(model, task, direction, er: EdgeRun, edge: int) -> torch.Tensor:
    """Oracle: metric change ``[n]`` of a full bridge forward of the run prompt in which only the
    destination of ``edge`` sees its source's delta. q/k/v: that one head's projection (before
    the model's rotary embedding; a key/value head's projection is what its whole group reads) is
    recomputed from ``ln1(resid_pre + delta)`` with the model's own ln1 module; MLP: its norm's
    input gets the delta; logits: the final norm's input gets it."""
    graph = er.graph
    dest, source = int(graph.dest_index[edge]), int(graph.source_index[edge])
    name, which = graph.dest_names[dest]
    delta = er.delta[:, :, source]  # [n, P, d]
    run, _ = run_and_source(task, direction)
    if name == "logits":
        hooks = [("ln_final.hook_in", lambda act, hook: act + delta)]
    elif name.startswith("mlp"):
        hooks = [(f"blocks.{name.split()[1]}.ln2.hook_in", lambda act, hook: act + delta)]
    else:
        layer, slot = divmod(dest, graph.dests_per_layer)
        head = next(h for h in range(graph.n_heads if which == "q" else graph.n_kv_heads)
                    if graph.attn_slot(h, which) == slot)
        _, cache = model.run_with_cache(run, names_filter=f"blocks.{layer}.hook_resid_pre")
        x = model.blocks[layer].ln1(cache[f"blocks.{layer}.hook_resid_pre"] + delta)
        W = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}[which][layer, head]

        def replace(act, hook):
            act = act.clone()
            act[:, :, head] = x @ W
            return act

        hooks = [(f"blocks.{layer}.attn.hook_{which}", replace)]
    with torch.no_grad():
        base = task.metric(model(run))
        patched = task.metric(model.run_with_hooks(run, fwd_hooks=hooks))
    return patched - base


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_exact_batched_equals_one_edge_per_bridge_forward(llama_model, llama_task, edge_runs,
                                                          direction):
    er = edge_runs[direction]
    g = er.graph
    edges = [g.edge("input", "0.1", "q"), g.edge("input", "0.kv1", "k"),
             g.edge("input", "0.kv0", "v"), g.edge("0.2", "1.3", "q"), g.edge("0.3", "1.kv0", "k"),
             g.edge("mlp 0", "1.kv1", "k"), g.edge("0.0", "1.kv1", "v"),
             g.edge("1.1", "2.kv0", "v"),
             g.edge("mlp 1", "2.kv1", "k"), g.edge("1.2", "mlp 1"), g.edge("input", "mlp 2"),
             g.edge("2.3", "mlp 2"), g.edge("0.1", "logits"), g.edge("mlp 2", "logits")]
    batched = exact_scores(er, [[e] for e in edges], max_batch_rows=35)
    oracle = torch.stack([patch_edge_through_bridge(llama_model, llama_task, direction, er, e)
                          for e in edges], dim=1)
    torch.testing.assert_close(batched, oracle, atol=1e-4, rtol=1e-4)
    assert oracle.abs().max() > 1e-2
    # key and value edges (shared by a group of query heads) are not all zero
    assert oracle[:, [1, 2, 4, 5, 6, 7, 8]].abs().max() > 1e-3


def test_prune_with_shared_key_value_inputs():
    """(Random selections against the drop-until-stable loop: tests/edges/test_circuit.py.)"""
    g = Graph(3, 4, 2)
    # input -> 0.kv0 (k) reaches heads 0.0 and 0.1: either one leading to the logits keeps it
    chain = [g.edge("input", "0.kv0", "k"), g.edge("0.1", "logits")]
    assert prune(g, chain) == sorted(chain)
    circuit = Circuit(g, prune(g, chain), chain, "hand")
    assert circuit.nodes() == ["input", "0.1", "logits"]
    assert prune(g, [g.edge("input", "0.kv1", "k"), g.edge("0.1", "logits")]) == []


def test_circuit_evaluation(llama_model, llama_task):
    evaluator = CircuitEvaluator.for_task(llama_model, llama_task, "other", run="clean")
    er = evaluator.er
    graph = evaluator.graph
    full = evaluator.faithfulness(range(graph.n_edges))
    assert full["f"] == pytest.approx(1.0)
    # the full circuit is the model; ablating every edge with the other prompt's outputs gives
    # the other prompt's metric
    assert full["m_model"] == pytest.approx(float(er.metric_run.mean()), abs=1e-4)
    assert full["m_empty"] == pytest.approx(float(er.metric_source.mean()), abs=1e-4)
    assert abs(full["m_model"] - full["m_empty"]) > 1e-2
    # ablating one key edge alone = exact patching of it
    edge = graph.edge("0.3", "2.kv1", "k")
    without = evaluator.metrics([[e for e in range(graph.n_edges) if e != edge]])[0]
    torch.testing.assert_close(without - er.metric_run, exact_scores(er, [[edge]])[:, 0],
                               atol=1e-4, rtol=1e-4)
    scores = attribute_edges(llama_model, llama_task, "eap", "noising", show_progress=False)
    circuit = Circuit.from_scores(scores, top=30)
    report = evaluator.faithfulness(circuit)
    assert 0 < report["n_edges"] <= 30 and report["f"] == report["f"]  # a number, not NaN
    curve = evaluator.curve(scores.mean("edges"), fractions=(0.1, 0.5, 1.0))
    assert curve["f"][-1] == pytest.approx(1.0)


def test_cli_edges_on_llama_folder(llama_model_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from attrscope.cli import app
    from attrscope.edges.graph import colon_label
    from attrscope.scores import Scores

    result = CliRunner().invoke(app, ["edges", "--model", str(llama_model_dir), "--task", "ioi",
                                      "--method", "eap", "--top", "20", "--n", "10",
                                      "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    scores = Scores.load(result_path(tmp_path, "eap", "denoising"))
    assert scores.graph == Graph(3, 4, 2) and scores["edges"].shape == (10, 190)
    listing = json.loads((tmp_path / "edges-eap-denoising-top.json").read_text())
    order = torch.argsort(scores.mean("edges").abs(), descending=True)[:20].tolist()
    assert [row["label"] for row in listing["top"]] == [scores.labels("edges")[i] for i in order]
    for row in listing["top"]:
        assert f"{row['edge']:<24} {row['mean_score']:+.4f}" in result.output
        assert row["edge"] == colon_label(row["label"])
    data = json.loads((tmp_path / "edges-eap-denoising-circuit.json").read_text())
    circuit = Circuit.from_dict(data)
    assert circuit.graph == scores.graph
    # the default selection: 20 edges that connect the input to the logits
    assert circuit.edges == connected_top(scores.graph, scores.mean("edges"), 20)[0]
    assert len(circuit.edges) == 20 and prune(scores.graph, circuit.edges) == circuit.edges
    assert f"f {data['faithfulness']['f']:.4f}" in result.output
    png = tmp_path / "edges-eap-denoising-circuit.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_inputs_out_of_range_are_refused():
    graph = Graph(3, 4, 2)
    assert graph.qkv_dest(0, 1, "k") < graph.n_attn_dests
    with pytest.raises(ValueError, match="'k' input: key/value head 3 is outside 0..1"):
        graph.qkv_dest(0, 3, "k")
    with pytest.raises(ValueError, match="'q' input: query head 4 is outside 0..3"):
        graph.qkv_dest(0, 4, "q")
    with pytest.raises(ValueError, match="which must be one of"):
        graph.attn_slot(0, "x")
