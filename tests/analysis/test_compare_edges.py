"""``compare`` with node and edge methods together, on the grouped-query (Llama-style) fixture."""


from attrscope.analysis.compare import compare
from attrscope.analysis.report import write_report
from attrscope.cli import app
from typer.testing import CliRunner


def test_compare_node_and_edge_methods_on_llama(llama_model, llama_task, tmp_path):
    c = compare(llama_model, llama_task, ("ap", "atp", "eap"), k=5, n_boot=20, n_random=2,
                show_progress=False, log=lambda line: None)
    assert c.kinds == ["heads", "neurons", "edges"]
    edge_pairs = [a for a in c.agreements if a["kind"] == "edges"]
    assert edge_pairs == []  # one edge method: nothing to agree with
    assert ("eap", "edges") in c.asymmetries and "edges" in c.latent
    curve = c.faithfulness[("eap denoising", "edges")]
    assert abs(curve["f"][-1] - 1.0) < 1e-4  # every edge kept: the model itself
    node_pairs = {(a["a"], a["b"]) for a in c.agreements if a["kind"] == "heads"}
    assert ("ap denoising", "atp denoising") in node_pairs
    paths = write_report(c, tmp_path)
    assert "edges" in paths["report"].read_text()
    import csv

    with open(tmp_path / "tables" / "dashboard.csv") as f:
        edges = [r for r in csv.DictReader(f) if r["kind"] == "edges"]
    assert [r["direction"] for r in edges] == ["denoising", "noising"]
    from attrscope.edges.graph import colon_label

    top = c.results[("eap", "denoising")].top("edges", 5)
    # one edge method: its own top k, the edges by name ("3:5 -> logits")
    assert edges[0]["agreed"].split(", ") == [colon_label(label) for label, _ in top]
    assert edges[0]["verification"] == "by circuit faithfulness"


def test_compare_cli_takes_edge_methods(llama_model_dir, tmp_path):
    result = CliRunner().invoke(app, [
        "compare", "--model", str(llama_model_dir), "--n", "4", "--method", "ap,atp,eap",
        "--components", "heads", "--top-k", "3", "--n-boot", "20", "--n-random", "2",
        "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.html").exists()
