"""Notebook views of Scores (DataFrames, HTML) and the public attrscope.compare."""

import builtins

import pytest
import torch

import attrscope
from attrscope import Scores


@pytest.fixture
def scores():
    # 2 samples, 2 layers, 3 heads: sample 0 = -5..0, sample 1 = 1..6
    return Scores(values={"heads": torch.arange(12.0).view(2, 2, 3) - 5},
                  meta={"method": "atp", "direction": "noising", "model": "m", "task": {"name": "t"}})


def test_to_dataframe_is_long_form(scores):
    frame = scores.to_dataframe()
    assert list(frame.columns) == ["sample", "kind", "layer", "index", "label", "score", "method",
                                   "direction"]
    assert len(frame) == 12
    row = frame[(frame["sample"] == 1) & (frame["layer"] == 1) & (frame["index"] == 2)].iloc[0]
    assert row["label"] == "1.2" and row["score"] == 6.0 and row["method"] == "atp"
    assert set(frame["direction"]) == {"noising"}


def test_mean_and_top_as_dataframes(scores):
    mean = scores.mean()
    assert mean.loc[mean["label"] == "0.1", "score"].item() == pytest.approx(-1.0)  # (-4 + 2) / 2
    top = scores.top(2)
    assert top["label"].tolist() == ["1.2", "0.0"] and top["score"].tolist() == [3.0, -2.0]
    assert top["rank"].tolist() == [1, 2]
    assert scores.top("heads", 2) == [("1.2", 3.0), ("0.0", -2.0)]  # the list form is unchanged
    assert scores.top(1, by="neg")["label"].tolist() == ["0.0"]


def test_edge_scores_have_edge_labels():
    from attrscope.edges.graph import Graph

    graph = Graph(1, 2)
    edges = Scores(values={"edges": torch.arange(float(graph.n_edges)).view(1, -1)},
                   meta={"graph": graph.as_dict()})
    frame = edges.to_dataframe()
    assert frame["label"].tolist() == graph.labels and frame["index"].tolist()[-1] == graph.n_edges - 1


def test_html_summary_has_the_top_components_and_a_heatmap(scores):
    page = scores._repr_html_()
    assert "atp (noising)" in page and "1.2 +3" in page
    assert "data:image/png;base64," in page


def test_without_pandas_the_error_says_which_extra(scores, monkeypatch):
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match=r"attrscope\[notebook\]"):
        scores.to_dataframe()
    assert "<table>" in scores._repr_html_()  # the display does not need pandas


def test_public_compare_returns_a_comparison(random_model_dir, tmp_path):
    from attrscope.models import as_bridge
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(random_model_dir, local_files_only=True)
    log = []
    c = attrscope.compare(hf, "ioi", methods=("ap", "atp"), components=("heads",), n=3, k=3,
                          n_boot=20, n_random=2, show_progress=False, log=log.append)
    assert set(c.results) == {(m, d) for m in ("ap", "atp") for d in ("denoising", "noising")}
    assert any(line.startswith("verifying heads by ablation") for line in log)  # progress
    assert "ap/atp" in c.summary() and "rho" in c.summary()  # the dashboard as text
    frame = c.to_dataframe()
    assert len(frame) == 4 * 3 * 3 * 4 and set(frame["method"]) == {"ap", "atp"}
    assert len(c.agreement()) == 2
    assert "heads_heatmaps" in c.figures and "<figure>" in c.figures._repr_html_()
    paths = c.save_report(tmp_path / "report")
    assert paths["report"].exists() and (tmp_path / "report" / "figures" / "heads_heatmaps.png").exists()
    assert c.results[("ap", "noising")].meta["model"] == as_bridge(hf).cfg.model_name
