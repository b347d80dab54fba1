"""``attrscope edges``: prints the top edges in the seed notebook's form and saves them."""

import json

import pytest

import torch
from typer.testing import CliRunner

from attrscope.cli import app
from attrscope.edges.graph import colon_label
from attrscope.scores import Scores
from attrscope.cli.options import result_path

runner = CliRunner()


def test_edges_prints_and_saves_the_top_edges(random_model_dir, tmp_path):
    result = runner.invoke(app, ["edges", "--model", str(random_model_dir), "--n", "4",
                                 "--method", "eap", "--top", "7", "--out", str(tmp_path),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    scores = Scores.load(result_path(tmp_path, "eap", "denoising"))
    assert scores["edges"].shape == (4, 262)
    listing = json.loads((tmp_path / "edges-eap-denoising-top.json").read_text())
    assert len(listing["top"]) == 7
    means = scores.mean("edges")
    labels = scores.labels("edges")
    order = torch.argsort(means.abs(), descending=True)[:7].tolist()
    assert [row["label"] for row in listing["top"]] == [labels[i] for i in order]
    for row in listing["top"]:
        assert f"{row['edge']:<24} {row['mean_score']:+.4f}" in result.output
        assert row["edge"] == colon_label(row["label"])


def test_edges_rejects_bad_options(random_model_dir, tmp_path):
    result = runner.invoke(app, ["edges", "--model", str(random_model_dir), "--method", "ig",
                                 "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "--method" in result.output and "eap-ig" in result.output


def test_edges_saves_the_circuit_and_prints_faithfulness(random_model_dir, tmp_path):
    from attrscope.edges.circuit import Circuit, connected_top, prune

    result = runner.invoke(app, ["edges", "--model", str(random_model_dir), "--n", "4",
                                 "--method", "eap", "--top", "60", "--ablation", "zero",
                                 "--curve", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    scores = Scores.load(result_path(tmp_path, "eap", "denoising"))
    data = json.loads((tmp_path / "edges-eap-denoising-circuit.json").read_text())
    circuit = Circuit.from_dict(data)
    assert circuit.edges == connected_top(scores.graph, scores.mean("edges"), 60)[0]
    assert prune(scores.graph, circuit.edges) == circuit.edges
    assert data["n_edges"] == len(circuit.edges) == 60 and circuit.rule.startswith("top 60 connected")
    assert Circuit.from_dict(json.loads(json.dumps(circuit.as_dict()))).as_dict() == data
    for row in data["edges"]:
        assert row["input"] in ("q", "k", "v", None)
        assert row["score"] == pytest.approx(float(scores.mean("edges")[scores.graph.edge(
            row["source"], row["dest"], row["input"])]), abs=1e-6)
    report = data["faithfulness"]
    assert report["ablation"] == "zero"
    assert f"f {report['f']:.4f}" in result.output and "CPR" in result.output
    png = tmp_path / "edges-eap-denoising-circuit.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    page = (tmp_path / "edges-eap-denoising.html").read_text()  # the report, next to them
    assert page.index('id="summary"') < page.index('id="circuit-graph"')
    assert 'id="faithfulness-edges"' in page and f"f = {report['f']:.3f}" in page


def test_edges_threshold_circuit(random_model_dir, tmp_path):
    result = runner.invoke(app, ["edges", "--model", str(random_model_dir), "--n", "3",
                                 "--method", "eap", "--threshold", "0", "--no-faithfulness",
                                 "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "edges-eap-denoising-circuit.json").read_text())
    assert data["rule"] == "|score| >= 0" and data["n_edges"] == data["n_selected"] == 262
    bad = runner.invoke(app, ["edges", "--model", str(random_model_dir), "--ablation", "resample",
                              "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "--ablation" in bad.output


def test_edges_circuit_faithfulness_on_the_corrupted_run(random_model_dir, tmp_path):
    import attrscope
    from attrscope.edges.methods import EdgeRun

    result = runner.invoke(app, ["edges", "--model", str(random_model_dir), "--n", "4",
                                 "--method", "eap", "--top", "30", "--circuit-run", "corrupted",
                                 "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "edges-eap-denoising-circuit.json").read_text())["faithfulness"]
    assert report["run"] == "corrupted" and "corrupted run" in result.output
    model = attrscope.load_model(str(random_model_dir))
    er = EdgeRun.prepare(model, attrscope.load_task("ioi", model, n=4), "denoising")
    assert report["m_model"] == pytest.approx(float(er.metric_run.mean()), abs=1e-4)
    assert report["m_empty"] == pytest.approx(float(er.metric_source.mean()), abs=1e-4)
    bad = runner.invoke(app, ["edges", "--model", str(random_model_dir), "--circuit-run", "both"])
    assert bad.exit_code != 0 and "--circuit-run" in bad.output


def test_edges_takes_the_methods_settings_from_the_registry(random_model_dir, tmp_path):
    """--definition is generated from eap-ig-act's declared settings, reaches the method and is
    recorded; a setting the chosen method does not take is refused before the model loads."""
    assert "--definition" in runner.invoke(app, ["edges", "--help"]).output
    result = runner.invoke(app, ["edges", "--model", str(random_model_dir), "--n", "2",
                                 "--method", "eap-ig-act", "--definition", "eap-ig", "--n-steps", "2",
                                 "--top", "5", "--no-faithfulness", "--out", str(tmp_path),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    scores = Scores.load(result_path(tmp_path, "eap-ig-act", "denoising"))
    assert scores.meta["settings"]["definition"] == "eap-ig"
    assert scores.meta["settings"]["n_steps"] == 2
    mib = json.loads((tmp_path / "edges-eap-ig-act-denoising-mib.json").read_text())
    assert mib["attrscope"]["settings"]["definition"] == "eap-ig"  # which definition, for MIB
    refused = runner.invoke(app, ["edges", "--method", "eap", "--definition", "eap-ig",
                                  "--out", str(tmp_path)])
    assert refused.exit_code == 2 and "--definition" in refused.output


def test_attribute_reuses_the_edges_commands_result(random_model_dir, tmp_path):
    """One result identity: ``edges`` stores under the keyed name ``attribute`` looks for, so
    ``attribute --resume`` in the same folder reuses it instead of computing again."""
    common = ["--model", str(random_model_dir), "--n", "3", "--method", "eap", "--direction",
              "denoising", "--out", str(tmp_path), "--no-progress"]
    first = runner.invoke(app, ["edges", *common, "--top", "3"])
    assert first.exit_code == 0, first.output
    stored = result_path(tmp_path, "eap", "denoising")
    assert stored.parent.name == "results" and stored.name.startswith("eap-denoising-")
    again = runner.invoke(app, ["attribute", *common, "--resume"])
    assert again.exit_code == 0, again.output
    assert f"eap denoising: reusing {stored}" in again.output
    assert result_path(tmp_path, "eap", "denoising") == stored
