"""Circuits: selection without dangling nodes, and faithfulness by exact evaluation.

- pruning on a hand-built selection with dangling chains, and against a plain drop-until-stable
  loop on random selections;
- the full circuit gives the model's metric, the empty one with ``other`` ablation the other
  prompt's metric;
- ablating one edge equals exact edge patching of that edge (both directions);
- ablating every out-edge of some heads and an MLP equals ablating those nodes in the model with
  the node :class:`~attrscope.analysis.ablation.Ablator` (zero, mean, other): an independent
  implementation through the TransformerBridge's hooks.
"""

import pytest
import torch

from attrscope.analysis.ablation import Ablator, Component
from attrscope.edges.circuit import (Circuit, CircuitEvaluator, connected_top, dest_nodes, prune,
                                     ranked_edges, rule_words, shortest_connected_prefix,
                                     trim_connected)
from attrscope.edges.graph import Graph
from attrscope.edges.methods import EdgeRun, exact_scores


def prune_oracle(graph: Graph, edges: list[int]) -> list[int]:
    """Drop edges whose source has no kept in-edge (input excepted) or whose destination has no
    reading node with a kept out-edge (logits excepted), until nothing changes. A grouped-query
    key/value input is read by every head of its group."""
    node_of = dest_nodes(graph)
    src = lambda e: int(graph.source_index[e])  # noqa: E731
    dst = lambda e: node_of[int(graph.dest_index[e])]  # noqa: E731
    kept = set(edges)
    while True:
        drop = {e for e in kept
                if (src(e) != 0 and not any(src(e) in dst(f) for f in kept))
                or (dst(e) != [graph.n_sources]
                    and not any(src(f) in dst(e) for f in kept))}
        if not drop:
            return sorted(kept)
        kept -= drop


def test_prune_removes_dangling_chains():
    g = Graph(2, 2)
    chain = [g.edge("input", "0.0", "v"), g.edge("0.0", "1.1", "q"), g.edge("1.1", "logits"),
             g.edge("input", "1.1", "k"), g.edge("0.0", "logits")]
    dangling = [
        g.edge("input", "0.1", "q"), g.edge("0.1", "1.0", "k"),  # 1.0 reaches nothing: dropped
        g.edge("input", "mlp 0"), g.edge("0.1", "mlp 0"), g.edge("mlp 0", "logits"),  # kept
        g.edge("mlp 0", "mlp 1"),                                # mlp 1 reaches nothing: dropped
    ]
    kept = prune(g, chain + dangling)
    expected = sorted(chain + [g.edge("0.1", "mlp 0"), g.edge("mlp 0", "logits"),
                               g.edge("input", "mlp 0"), g.edge("input", "0.1", "q")])
    assert kept == expected
    # Without input -> mlp 0 and input -> 0.1, both the 0.1 -> mlp 0 -> logits chain goes.
    without = [e for e in chain + dangling
               if e not in (g.edge("input", "mlp 0"), g.edge("input", "0.1", "q"))]
    assert prune(g, without) == sorted(chain)
    assert prune(g, [g.edge("0.0", "1.1", "q")]) == []


@pytest.mark.parametrize("g", [Graph(3, 4), Graph(3, 4, 2)], ids=["mha", "gqa"])
def test_prune_equals_drop_until_stable_loop(g):
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        k = int(torch.randint(1, 120, (1,), generator=gen))
        chosen = torch.randperm(g.n_edges, generator=gen)[:k].tolist()
        kept = prune(g, chosen)
        assert kept == prune_oracle(g, chosen)
        assert set(kept) <= set(chosen) and prune(g, kept) == kept
    assert any(len(prune(g, torch.randperm(g.n_edges, generator=gen)[:60].tolist())) > 0
               for _ in range(5))


def test_top_and_threshold_selection():
    g = Graph(3, 4)
    mean = torch.randn(g.n_edges, generator=torch.Generator().manual_seed(1))
    top = Circuit.top(g, mean, 50)
    order = ranked_edges(mean)
    assert top.selected == sorted(order[:50])
    assert top.edges == prune(g, order[:50]) and set(top.edges) <= set(top.selected)
    t = float(mean.abs().sort(descending=True).values[49])
    thr = Circuit.threshold(g, mean, t)
    assert thr.selected == top.selected and thr.edges == top.edges
    with pytest.raises(ValueError, match="threshold"):
        Circuit.threshold(g, mean, -1.0)


@pytest.mark.parametrize("how", ["zero", "mean", "other"])
def test_full_and_empty_circuits(random_model, random_task, how):
    ev = CircuitEvaluator.for_task(random_model, random_task, how, run="clean")
    full, empty = ev.metrics([range(ev.graph.n_edges), []])
    torch.testing.assert_close(full, ev.er.metric_run, atol=1e-4, rtol=1e-4)
    report = ev.faithfulness(list(range(ev.graph.n_edges)))
    assert report["f"] == pytest.approx(1.0, abs=1e-6)
    if how == "other":
        torch.testing.assert_close(empty, ev.er.metric_source, atol=1e-4, rtol=1e-4)
    assert (full - empty).abs().max() > 1e-2


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_ablating_one_edge_equals_exact_edge_patching(random_model, random_task, direction):
    er = EdgeRun.prepare(random_model, random_task, direction)
    ev = CircuitEvaluator(er, "other", max_batch_rows=30)
    g = er.graph
    edges = [g.edge("input", "0.1", "q"), g.edge("0.2", "1.0", "k"), g.edge("0.3", "2.1", "v"),
             g.edge("1.1", "mlp 1"), g.edge("mlp 0", "mlp 2"), g.edge("2.3", "logits"),
             g.edge("input", "logits"), g.edge("mlp 1", "2.2", "q")]
    everything = set(range(g.n_edges))
    ablated = ev.metrics([sorted(everything - {e}) for e in edges]).T  # [n, len(edges)]
    exact = exact_scores(er, [[e] for e in edges])
    torch.testing.assert_close(ablated - er.metric_run[:, None], exact, atol=1e-4, rtol=1e-4)
    assert exact.abs().max() > 1e-2


@pytest.mark.parametrize("how", ["zero", "mean", "other"])
def test_ablating_out_edges_of_nodes_equals_node_ablation(random_model, random_task, how):
    ev = CircuitEvaluator.for_task(random_model, random_task, how, run="clean")
    g = ev.graph
    sources = {g.head_source(0, 1), g.head_source(1, 2), g.mlp_source(1)}
    kept = [e for e in range(g.n_edges) if int(g.source_index[e]) not in sources]
    d_mlp = int(random_model.cfg.d_mlp)
    nodes = [Component("heads", 0, 1), Component("heads", 1, 2)] + \
        [Component("neurons", 1, u) for u in range(d_mlp)]
    ablator = Ablator(random_model, random_task, how, run="clean")
    expected = ablator.metrics([nodes, []])
    got = ev.metrics([kept])[0]
    torch.testing.assert_close(got, expected[0], atol=1e-4, rtol=1e-4)
    assert (expected[0] - expected[1]).abs().max() > 1e-2


def test_curve_matches_single_circuits(random_model, random_task):
    ev = CircuitEvaluator.for_task(random_model, random_task, "other")
    mean = torch.randn(ev.graph.n_edges, generator=torch.Generator().manual_seed(2))
    curve = ev.curve(mean, fractions=(0.05, 0.2, 1.0))
    assert curve["f"][-1] == pytest.approx(1.0, abs=1e-6)
    assert all(s <= k for s, k in zip(curve["sizes"], curve["selected"]))
    assert curve["sizes"] == curve["selected"]  # connected circuits of the size asked for
    one = ev.faithfulness(Circuit.connected(ev.graph, mean, curve["selected"][1]))
    assert one["f"] == pytest.approx(curve["f"][1], abs=1e-5)
    assert one["n_edges"] == curve["sizes"][1]


@pytest.mark.parametrize("g", [Graph(3, 4), Graph(3, 4, 2), Graph(6, 2)],
                         ids=["mha", "gqa", "deep"])
def test_connected_top_gives_n_connected_edges_from_the_shortest_prefix(g):
    gen = torch.Generator().manual_seed(5)
    rules = {"score order": 0, "greedy": 0}
    for trial in range(12):
        mean = torch.randn(g.n_edges, generator=gen)
        order = ranked_edges(mean)
        for n in (1, 2, 7, 20, 45):
            edges, considered, how = connected_top(g, mean, n)
            assert prune_oracle(g, edges) == edges and set(edges) <= set(considered)
            assert len(edges) == n, (trial, n, len(edges))
            rules[how] += 1
            k = shortest_connected_prefix(g, order, n)
            # the shortest prefix of the ranking that holds n connected edges (the oracle prune)
            assert len(prune_oracle(g, order[:k])) >= n > len(prune_oracle(g, order[:k - 1]))
            if how == "score order":  # the prefix, trimmed to n
                assert considered == sorted(order[:k])
            else:  # trimming that prefix cannot reach n: every edge left holds another
                assert len(trim_connected(g, prune(g, order[:k]), n, mean)) > n
    assert rules["score order"] > 0 and rules["greedy"] > 0  # both rules are exercised
    with pytest.raises(ValueError, match="top n"):
        connected_top(g, mean, g.n_edges + 1)


def test_threshold_without_connected_edge_says_what_to_change():
    g = Graph(3, 4)
    mean = torch.zeros(g.n_edges)
    mean[g.edge("0.1", "1.1", "q")] = 1.0  # the strongest edge leads nowhere
    mean[g.edge("input", "0.1", "q")] = 0.5
    mean[g.edge("0.1", "logits")] = 0.25
    c = Circuit.threshold(g, mean, 0.4)
    assert c.edges == [] and len(c.selected) == 2
    assert "the top 3 edges (|score| >= 0.25)" in c.note and "lower --threshold" in c.note
    assert Circuit.connected(g, mean, 2).edges == sorted([g.edge("input", "0.1", "q"),
                                                           g.edge("0.1", "logits")])
    assert Circuit.threshold(g, mean, 0.2).note == ""


def test_edges_top_20_on_a_12_layer_model_is_a_connected_circuit_of_20_edges(tmp_path):
    """On a deep model the 20 edges of largest |score| rarely join the input to the logits; the
    default selection still gives 20 connected edges."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from typer.testing import CliRunner

    from attrscope.cli import app
    from tests.conftest import save_scaled_random_model, save_tokenizer

    folder = tmp_path / "deep"
    folder.mkdir()
    tok = save_tokenizer(folder)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=12, n_head=2,
                        n_inner=32, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    save_scaled_random_model(GPT2LMHeadModel, config, folder)
    result = CliRunner().invoke(app, ["edges", "--model", str(folder), "--n", "3", "--top", "20",
                                      "--no-faithfulness", "--out", str(tmp_path / "out"),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    circuit = Circuit.load_json(tmp_path / "out" / "edges-eap-denoising-circuit.json")
    assert circuit.graph.n_layers == 12
    assert len(circuit.edges) == 20 and prune_oracle(circuit.graph, circuit.edges) == circuit.edges
    assert circuit.rule in ("top 20 connected, score order", "top 20 connected, greedy")
    assert circuit.note == ""
    assert any(words in rule_words(circuit.rule) for words in ("down to 20", "until 20 edges"))
    assert circuit.nodes()[0] == "input" and circuit.nodes()[-1] == "logits"


def test_circuit_json_round_trip(tmp_path):
    g = Graph(3, 4)
    mean = torch.randn(g.n_edges, generator=torch.Generator().manual_seed(3))
    c = Circuit.top(g, mean, 120)
    assert 0 < len(c.edges) < len(c.selected)
    c.faithfulness = {"f": 0.5}
    back = Circuit.load_json(c.save_json(tmp_path / "c.json"))
    assert back.graph == g and back.edges == c.edges and back.selected == c.selected
    assert back.rule == c.rule and back.faithfulness == {"f": 0.5}
    torch.testing.assert_close(back.scores[c.selected], mean[c.selected])
    assert back.nodes() == c.nodes() and c.nodes()[0] == "input" and c.nodes()[-1] == "logits"


def test_circuits_per_pass_do_not_change_metrics(random_model, random_task):
    gen = torch.Generator().manual_seed(4)
    one = CircuitEvaluator.for_task(random_model, random_task, "mean", max_batch_rows=1)
    many = CircuitEvaluator(one.er, "mean", max_batch_rows=1000)
    circuits = [torch.randperm(one.graph.n_edges, generator=gen)[:k].tolist()
                for k in (10, 100, 200, 250)]
    torch.testing.assert_close(one.metrics(circuits), many.metrics(circuits), atol=1e-5,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        one.metrics([[one.graph.n_edges]])
    with pytest.raises(ValueError, match="Ablation"):
        CircuitEvaluator(one.er, "resample")
