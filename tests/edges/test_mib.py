"""EAP-IG / MIB graph JSON: names, import of a file written in that format, and round trips."""

import json

import pytest
import torch

from attrscope.edges.circuit import Circuit
from attrscope.edges.graph import Graph
from attrscope.edges.mib import (edge_from_mib, edge_names, from_mib, load_mib_json,
                                 save_mib_json, to_mib)
from attrscope.scores import Scores
from attrscope.cli.options import result_path

# A 1-layer, 2-head model's graph, written by hand as EAP-IG's Graph.to_json writes it: every
# edge, scores, and a circuit input -> a0.h1 (v) -> m0 -> logits.
FIXTURE = {
    "cfg": {"n_layers": 1, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8},
    "nodes": {"input": {"in_graph": True}, "a0.h0": {"in_graph": False},
              "a0.h1": {"in_graph": True}, "m0": {"in_graph": True},
              "logits": {"in_graph": True}},
    "edges": {
        "input->a0.h0<q>": {"score": 0.1, "in_graph": False},
        "input->a0.h0<k>": {"score": -0.2, "in_graph": False},
        "input->a0.h0<v>": {"score": 0.3, "in_graph": False},
        "input->a0.h1<q>": {"score": 0.0, "in_graph": False},
        "input->a0.h1<k>": {"score": 0.05, "in_graph": False},
        "input->a0.h1<v>": {"score": 1.5, "in_graph": True},
        "input->m0": {"score": -0.4, "in_graph": False},
        "a0.h0->m0": {"score": 0.25, "in_graph": False},
        "a0.h1->m0": {"score": -2.0, "in_graph": True},
        "input->logits": {"score": 0.01, "in_graph": False},
        "a0.h0->logits": {"score": 0.02, "in_graph": False},
        "a0.h1->logits": {"score": 0.5, "in_graph": False},
        "m0->logits": {"score": 3.0, "in_graph": True},
    },
}


def test_names_follow_the_format():
    assert edge_from_mib("a5.h5->a8.h6<q>") == "5.5 -> 8.6 (q)"
    assert edge_from_mib("input->a1.h2<k>") == "input -> 1.2 (k)"
    assert edge_from_mib("a0.h1->m0") == "0.1 -> mlp 0"
    assert edge_from_mib("m11->logits") == "mlp 11 -> logits"
    names = edge_names(Graph(1, 2))
    assert sorted(names) == sorted(FIXTURE["edges"]) and len(names) == Graph(1, 2).n_edges
    with pytest.raises(ValueError, match="not an EAP-IG/MIB node"):
        edge_from_mib("L0H1->m0")


def test_a_file_in_the_format_loads_and_round_trips(tmp_path):
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(FIXTURE))
    scores, circuit = load_mib_json(path)
    graph = scores.graph
    assert graph == Graph(1, 2)
    assert scores["edges"][0, graph.edge("0.1", "mlp 0")].item() == pytest.approx(-2.0)
    assert scores["edges"][0, graph.edge("input", "0.0", "k")].item() == pytest.approx(-0.2)
    assert [graph.labels[e] for e in circuit.edges] == [
        "input -> 0.1 (v)", "0.1 -> mlp 0", "mlp 0 -> logits"]
    assert circuit.nodes() == ["input", "0.1", "mlp 0", "logits"]
    # written back: the same nodes, edges, scores and in_graph as the hand-written file
    out = to_mib(scores, circuit)
    assert out["cfg"] == FIXTURE["cfg"] and out["nodes"] == FIXTURE["nodes"]
    assert out["edges"].keys() == FIXTURE["edges"].keys()
    for name, info in FIXTURE["edges"].items():
        assert out["edges"][name]["in_graph"] == info["in_graph"], name
        assert out["edges"][name]["score"] == pytest.approx(info["score"]), name


def test_attrscope_edge_scores_round_trip(tmp_path, random_model, random_task):
    from attrscope.api import attribute_edges

    scores = attribute_edges(random_model, random_task, "eap", show_progress=False)
    circuit = Circuit.from_scores(scores, top=20)
    path = save_mib_json(tmp_path / "eap.json", scores, circuit, d_model=random_model.cfg.d_model)
    data = json.loads(path.read_text())
    assert data["cfg"]["d_model"] == 48 and data["attrscope"]["method"] == "eap"
    back, back_circuit = load_mib_json(path)
    torch.testing.assert_close(back["edges"][0], scores.mean("edges"))
    assert back_circuit.edges == circuit.edges and back_circuit.nodes() == circuit.nodes()


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="missing key"):
        from_mib({"cfg": {}}, "g.json")
    wrong = json.loads(json.dumps(FIXTURE))
    wrong["edges"]["m0->a0.h0<q>"] = {"score": 1.0, "in_graph": False}  # upstream edge
    with pytest.raises(ValueError, match=r"g.json: edge\(s\) \['m0->a0.h0<q>'\]"):
        from_mib(wrong, "g.json")
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        load_mib_json(tmp_path / "x.json")
    gqa = Scores(values={"edges": torch.zeros(1, Graph(1, 4, 2).n_edges)},
                 meta={"graph": Graph(1, 4, 2).as_dict()})
    with pytest.raises(ValueError, match="grouped-query"):
        to_mib(gqa, d_model=8)
    with pytest.raises(ValueError, match="d_model"):
        to_mib(Scores(values={"edges": torch.zeros(1, 13)}, meta={"graph": {"n_layers": 1, "n_heads": 2}}))


def test_cli_edges_writes_the_mib_graph(random_model_dir, tmp_path):
    from typer.testing import CliRunner

    from attrscope.cli import app

    result = CliRunner().invoke(app, ["edges", "--model", str(random_model_dir), "--n", "2",
                                      "--top", "10", "--no-faithfulness", "--out", str(tmp_path),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    scores, circuit = load_mib_json(tmp_path / "edges-eap-denoising-mib.json")
    saved = Scores.load(result_path(tmp_path, "eap", "denoising"))
    torch.testing.assert_close(scores["edges"][0], saved.mean("edges"))
    listed = json.loads((tmp_path / "edges-eap-denoising-circuit.json").read_text())
    assert [circuit.graph.labels[e] for e in circuit.edges] == [r["label"] for r in listed["edges"]]
