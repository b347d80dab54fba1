"""Circuits of (edge, position) pairs (issue 23 item 4): selection from ``[n, n_edges, n_pos]``
scores, faithfulness with every other (edge, position) ablated in the one edge-ablation forward,
and the MIB/EAP-IG export by position.

- faithfulness: equal to a model written by hand from the weights (``oracles.
  edge_ablation_by_hand``) that ablates the same (edge, token) set, for ``each`` and named
  positions;
- identity: a circuit holding every position of some edges is the all-positions circuit of those
  edges (zero, mean and other ablation);
- connectivity: the rule across positions equals a drop-until-stable loop;
- the export names every (edge, position) pair as EAP-IG's positional graphs do and records the
  positions; the command line selects and evaluates by position.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from attrscope import Scores
from attrscope.api import attribute_edges
from attrscope.cli import app
from attrscope.edges.circuit import Circuit, CircuitEvaluator, dest_nodes
from attrscope.edges.graph import Graph
from attrscope.edges.mib import from_mib, to_mib
from attrscope.edges.positional import PositionCircuit, connected_pairs, prune_pairs
from attrscope.sites import resolve_positions
from oracles import edge_ablation_by_hand, one_length_task
from attrscope.cli.options import result_path

TOL = 1e-4


@pytest.fixture(scope="module")
def one_length(random_model):
    return one_length_task(random_model, n=3, seed=5)


def kept_by_token(keep: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
    """``[n, length, n_edges]``: edge e kept at token t of prompt i when some entry j with
    ``index[i, j] == t`` keeps it (``keep`` ``[n_edges, n_pos]``)."""
    n = index.shape[0]
    out = torch.zeros(n, length, keep.shape[0], dtype=torch.bool)
    for i in range(n):
        for j in range(index.shape[1]):
            out[i, int(index[i, j])] |= keep[:, j]
    return out


@pytest.mark.parametrize("setting", ["each", "S2,END"])
def test_faithfulness_by_position_equals_ablating_by_hand(random_model, one_length, setting):
    ev = CircuitEvaluator.for_task(random_model, one_length, "other", run="clean",
                                   max_batch_rows=6, positions=setting)
    graph, positions = ev.graph, resolve_positions(one_length, setting)
    seq = one_length.clean_tokens.shape[1]
    everything = torch.ones(seq, graph.n_edges, dtype=torch.bool).expand(one_length.n, -1, -1)
    torch.testing.assert_close(edge_ablation_by_hand(random_model, one_length, graph, everything),
                               ev.er.metric_run, atol=TOL, rtol=1e-4)  # the oracle is the model
    gen = torch.Generator().manual_seed(0)
    keeps = [torch.rand(graph.n_edges, positions.n_pos, generator=gen) < share
             for share in (0.3, 0.8)]
    got = ev.metrics(keeps)
    for keep, metric in zip(keeps, got):
        want = edge_ablation_by_hand(random_model, one_length, graph,
                                     kept_by_token(keep, positions.index, seq))
        torch.testing.assert_close(metric, want, atol=TOL, rtol=1e-4)
    # the pairs matter: a circuit is neither the model nor the empty circuit
    full, empty = ev.metrics([range(graph.n_edges), []])
    assert min((got[0] - full).abs().max(), (got[0] - empty).abs().max()) > 1e-3


@pytest.mark.parametrize("how", ["zero", "mean", "other"])
def test_every_position_of_some_edges_is_the_all_positions_circuit(random_model, one_length, how):
    ev = CircuitEvaluator.for_task(random_model, one_length, how, positions="each")
    g = ev.graph
    edges = torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(1))[:90].tolist()
    keep = torch.zeros(g.n_edges, ev.positions.n_pos, dtype=torch.bool)
    keep[edges] = True
    by_position, whole = ev.metrics([keep, edges])
    torch.testing.assert_close(by_position, whole, atol=1e-5, rtol=1e-5)
    assert (whole - ev.metrics([range(g.n_edges)])[0]).abs().max() > 1e-3


def prune_pairs_oracle(graph: Graph, n_pos: int, pairs: list[int]) -> list[int]:
    """Drop pairs whose source is not fed by a kept pair (inputs excepted) or whose destination
    is read by no node with a kept pair out (logits excepted), until nothing changes; a key or
    value input at p is read by its heads at every position >= p."""
    node_of = dest_nodes(graph)

    def source(x):
        e, p = divmod(x, n_pos)
        return int(graph.source_index[e]), p

    def readers(x):
        e, p = divmod(x, n_pos)
        dest = int(graph.dest_index[e])
        later = range(p, n_pos) if graph.dest_names[dest][1] in ("k", "v") else [p]
        return {(v, q) for v in node_of[dest] for q in later}

    kept = set(pairs)
    while True:
        drop = {x for x in kept
                if (source(x)[0] != 0 and not any(source(x) in readers(y) for y in kept))
                or (not any(v == graph.n_sources for v, _ in readers(x))
                    and not any(source(y) in readers(x) for y in kept))}
        if not drop:
            return sorted(kept)
        kept -= drop


@pytest.mark.parametrize("g", [Graph(2, 2), Graph(3, 4, 2)], ids=["mha", "gqa"])
def test_connected_by_position_equals_drop_until_stable_loop(g):
    gen = torch.Generator().manual_seed(0)
    n_pos, kept_some = 4, False
    for _ in range(30):
        k = int(torch.randint(5, 160, (1,), generator=gen))
        chosen = torch.randperm(g.n_edges * n_pos, generator=gen)[:k].tolist()
        kept = prune_pairs(g, n_pos, chosen)
        assert kept == prune_pairs_oracle(g, n_pos, chosen)
        assert prune_pairs(g, n_pos, kept) == kept
        kept_some |= bool(kept)
    assert kept_some
    # a key edge at an early position reaches its head's later outputs, not its earlier ones
    key = g.edge("input", "1.kv0" if g.group_size > 1 else "1.0", "k")
    out = g.edge("1.0", "logits")
    assert prune_pairs(g, n_pos, [key * n_pos + 1, out * n_pos + 3]) == \
        [key * n_pos + 1, out * n_pos + 3]
    assert prune_pairs(g, n_pos, [key * n_pos + 3, out * n_pos + 1]) == []


def test_selection_by_position(random_model, one_length):
    scores = attribute_edges(random_model, one_length, "eap", "noising", positions="each",
                             show_progress=False)
    mean = scores.mean("edges")
    n_pos = mean.shape[1]
    top = PositionCircuit.from_scores(scores, top=30)
    order = torch.argsort(mean.flatten().abs(), descending=True, stable=True)[:30]
    assert top.pairs == sorted(order.tolist()) and top.rule == "top 30 by position"
    assert top.label(top.pairs[0]).endswith(f" @{top.pairs[0] % n_pos}")
    t = float(mean.flatten().abs()[order[-1]])
    assert PositionCircuit.from_scores(scores, threshold=t).pairs == top.pairs
    connected = PositionCircuit.from_scores(scores, top=12, connected=True)
    assert len(connected.pairs) == 12 and not connected.note
    assert prune_pairs(scores.graph, n_pos, connected.pairs) == connected.pairs
    pairs, considered = connected_pairs(scores.graph, mean, 12)
    assert pairs == connected.pairs and set(pairs) <= set(considered)
    back = PositionCircuit.from_dict(json.loads(json.dumps(connected.as_dict())))
    assert (back.pairs, back.selected, back.positions, back.rule) == \
        (connected.pairs, connected.selected, connected.positions, connected.rule)
    assert float(back.scores.flatten()[pairs[0]]) == pytest.approx(float(mean.flatten()[pairs[0]]))
    ev = CircuitEvaluator.for_task(random_model, one_length, positions="S2,END")
    with pytest.raises(ValueError, match=r"Circuit 0 is a \[n_edges, n_pos\] mask of shape"):
        ev.metrics([connected.keep()])  # 'each' pairs on an S2,END evaluator
    named = attribute_edges(random_model, one_length, "eap", positions="S2,END",
                            show_progress=False)
    with pytest.raises(ValueError, match="connected circuit by position needs positions='each'"):
        PositionCircuit.from_scores(named, top=5, connected=True)
    with pytest.raises(ValueError, match="selecting a circuit needs edge scores over all"):
        Circuit.from_scores(named, top=5)


def test_mib_export_by_position(random_model, one_length):
    scores = attribute_edges(random_model, one_length, "eap", positions="S2,END",
                             show_progress=False)
    circuit = PositionCircuit.from_scores(scores, top=10)
    data = json.loads(json.dumps(to_mib(scores, circuit, d_model=48)))
    graph, mean = scores.graph, scores.mean("edges")
    assert data["n_pos"] == 2 and len(data["edges"]) == 2 * graph.n_edges
    assert data["attrscope"]["positions"] == {"setting": ["S2", "END"], "labels": ["S2", "END"]}
    e = graph.edge("0.2", "1.0", "q")
    entry = data["edges"]["a0.h2_1->a1.h0_1<q>"]
    assert entry["score"] == pytest.approx(float(mean[e, 1]))
    assert entry["in_graph"] == (e * 2 + 1 in circuit.pairs)
    kept = {name for name, info in data["edges"].items() if info["in_graph"]}
    assert len(kept) == 10
    assert all(name.split("->")[0].rsplit("_", 1)[1] == name.split("->")[1].split("<")[0]
               .rsplit("_", 1)[1] for name in data["edges"])  # both ends at one position
    assert data["nodes"]["logits_0"]["in_graph"] and "a2.h3_1" in data["nodes"]
    back, kept = from_mib(data, "g.json")  # read back: the same numbers, pairs and positions
    torch.testing.assert_close(back["edges"][0], mean)
    assert kept.pairs == circuit.pairs and back.position_labels == ["S2", "END"]
    assert back.labels("edges") == scores.labels("edges")
    data["edges"]["a0.h1_0->a1.h0_1<k>"] = {"score": 1.0, "in_graph": False}  # across positions
    with pytest.raises(ValueError, match=r"a0.h1_0->a1.h0_1<k>.*at one of its 2 positions"):
        from_mib(data, "g.json")


def test_cli_edges_by_position(random_model_dir, random_model, tmp_path):
    import csv

    task = one_length_task(random_model, n=3, seed=5)
    task_file = tmp_path / "pairs.csv"
    with open(task_file, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clean", "corrupted", "answer", "distractor"])
        for pair in task.pairs:
            writer.writerow([pair.clean, pair.corrupted, pair.answer, pair.distractor])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "edges", "--model", str(random_model_dir), "--task", str(task_file), "--n", "3",
        "--method", "eap", "--direction", "noising", "--positions", "each", "--top", "15",
        "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "15 (edge, position) pairs" in result.output and " f " in result.output
    scores = Scores.load(result_path(out, "eap", "noising"))
    circuit = json.loads((out / "edges-eap-noising-circuit.json").read_text())
    assert circuit["n_pairs"] == 15 and circuit["pairs"][0]["label"].rsplit(" @", 1)[1].isdigit()
    top = PositionCircuit.from_scores(scores, top=15, connected=True)  # each: connected
    assert [r["label"] for r in circuit["pairs"]] == [top.label(x) for x in top.pairs]
    assert circuit["rule"] == "top 15 connected, by position"
    ev = CircuitEvaluator.for_task(random_model, task, "other", positions="each")
    assert circuit["faithfulness"]["f"] == pytest.approx(ev.faithfulness(top.keep())["f"],
                                                         abs=1e-5)
    mib = json.loads((out / "edges-eap-noising-mib.json").read_text())
    assert mib["n_pos"] == scores["edges"].shape[-1]
    assert (out / "edges-eap-noising-positions.html").exists()
