"""``attrscope edges``: prints the top edges in the seed notebook's form and saves them."""

import json

import torch
from typer.testing import CliRunner

from attrscope.cli import app
from attrscope.edges.graph import colon_label
from attrscope.scores import Scores

runner = CliRunner()


def test_edges_prints_and_saves_the_top_edges(random_model_dir, tmp_path):
    result = runner.invoke(app, ["edges", "--model", str(random_model_dir), "--n", "4",
                                 "--method", "eap", "--top", "7", "--out", str(tmp_path),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    scores = Scores.load(tmp_path / "edges-eap-denoising.safetensors")
    assert scores["edges"].shape == (4, 1, 262)
    listing = json.loads((tmp_path / "edges-eap-denoising-top.json").read_text())
    assert len(listing["top"]) == 7
    means = scores.mean("edges")[0]
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
