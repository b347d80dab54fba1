"""``attrscope path`` and ``attrscope counterfactual``, run in-process."""

import csv

import pytest
from typer.testing import CliRunner

import attrscope
from attrscope.analysis.counterfactual import prompt_ids
from attrscope.cli import app

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path):
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, path


def test_path_writes_tables_and_figures(random_model_dir, random_model, tmp_path):
    out = tmp_path / "path"
    result = runner.invoke(app, [
        "path", "--model", str(random_model_dir), "--component", "1.2", "--component", "2.0",
        "--n", "3", "--n-steps", "4", "--split-r", "0.5", "--out", str(out), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    steps = read_csv(out / "path-steps.csv")
    assert len(steps) == 2 * 3 * (4 + 2)  # components x samples x (steps + both ends)
    components = read_csv(out / "path-components.csv")
    assert [row["component"] for row in components] == ["1.2", "2.0"]
    survey = read_csv(out / "path-survey.csv")
    assert len(survey) == 3 * 4  # every head of the 3-layer, 4-head model
    # the table's endpoints are the exact patching scores of `attribute ap`
    task = attrscope.load_task("ioi", random_model, n=3, seed=0)
    ap = attrscope.attribute(random_model, task, "ap", "denoising", "heads", show_progress=False)
    for row in survey:
        layer, head = map(int, row["component"].split("."))
        assert float(row["ap_score"]) == pytest.approx(float(ap["heads"][:, layer, head].mean()), abs=1e-5)
        assert float(row["patch_score"]) == pytest.approx(float(row["ap_score"]), abs=1e-4)
    by_label = {row["component"]: row for row in survey}
    for row in components:
        assert float(row["grad_range"]) == pytest.approx(
            float(by_label[row["component"]]["grad_range"]), abs=1e-4, rel=1e-4)
    correlations = {row["correlation"]: float(row["value"]) for row in read_csv(out / "path-correlations.csv")}
    assert f"{correlations['pearson(grad_range, ap_score)']:+.3f}" in result.output
    for figure in ("path-curves.png", "path-survey.png"):
        assert_png(out / figure)
    page = (out / "path.html").read_text()
    assert page.index('id="summary"') < page.index('id="path-curves"') < page.index('id="path-survey-heatmap"')


def test_path_without_survey_and_for_neurons(random_model_dir, tmp_path):
    result = runner.invoke(app, [
        "path", "--model", str(random_model_dir), "--component", "0.95", "--kind", "neurons",
        "--direction", "noising", "--n", "2", "--n-steps", "2", "--no-survey",
        "--out", str(tmp_path), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "path-components.csv")
    assert [row["component"] for row in rows] == ["0.95"]
    assert not (tmp_path / "path-survey.csv").exists()
    assert {row["direction"] for row in read_csv(tmp_path / "path-steps.csv")} == {"noising"}
    page = (tmp_path / "path.html").read_text()
    assert "neuron 0.95" in page and 'id="path-survey-heatmap"' not in page


@pytest.mark.parametrize("args, expected", [
    (["--component", "9.1"], "layer 9 does not exist; the model has 3 layers (0-2)"),
    (["--component", "1.4"], "head 4 does not exist; the model has 4 heads per layer (0-3)"),
    (["--component", "1.200", "--kind", "neurons"], "neuron 200 does not exist"),
    (["--component", "one.two"], "not of the form LAYER.HEAD"),
])
def test_path_names_a_bad_component(random_model_dir, tmp_path, args, expected):
    result = runner.invoke(app, ["path", "--model", str(random_model_dir), *args,
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--component" in result.output and expected in result.output
    assert not any(tmp_path.iterdir())  # nothing written


def test_counterfactual_writes_tables_and_figure(embedded_model, tmp_path):
    pair = attrscope.load_task("ioi", embedded_model, n=1, seed=0).pairs[0]
    result = runner.invoke(app, [
        "counterfactual", "--component", "3.6", "--prompt", pair.clean, "--answer", pair.answer,
        "--distractor", pair.distractor, "--standard", pair.corrupted, "--max-changes", "2",
        "--max-perplexity-ratio", "1.5", "--n-iters", "2", "--n-candidates", "16", "--beam", "2",
        "--out", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    (summary,) = read_csv(tmp_path / "counterfactual.csv")
    assert summary["component"] == "3.6" and summary["clean"] == pair.clean
    found_ids = prompt_ids(embedded_model, summary["found"])
    clean_ids = prompt_ids(embedded_model, pair.clean)
    assert len(found_ids) == len(clean_ids)
    assert int(summary["n_changed"]) == sum(a != b for a, b in zip(found_ids, clean_ids)) <= 2
    assert float(summary["perplexity_ratio"]) <= 1.5
    scores = read_csv(tmp_path / "counterfactual-scores.csv")
    assert len(scores) == embedded_model.cfg.n_layers * embedded_model.cfg.n_heads
    (target,) = [row for row in scores if row["target"] == "True"]
    assert target["component"] == "3.6"
    assert float(target["score_found"]) == pytest.approx(float(summary["score"]), abs=1e-4)
    assert float(target["score_standard"]) == pytest.approx(float(summary["standard_score"]))
    history = read_csv(tmp_path / "counterfactual-history.csv")
    assert history[0]["iteration"] == "0" and len(history) <= 3
    assert_png(tmp_path / "counterfactual-scores.png")
    page = (tmp_path / "counterfactual.html").read_text()
    assert page.index('id="summary"') < page.index('id="counterfactual-heatmap"')
    assert summary["found"] in result.output


def test_counterfactual_refuses_bad_input(tmp_path):
    base = ["counterfactual", "--prompt", "When John and Mary went to the store, John gave a drink to",
            "--distractor", " John", "--out", str(tmp_path)]
    result = runner.invoke(app, [*base, "--component", "9.1", "--answer", " Mary"])
    assert result.exit_code == 2 and "the model has 4 layers (0-3)" in result.output
    result = runner.invoke(app, [*base, "--component", "1.2", "--answer", "Mary"])
    assert result.exit_code == 2 and "answer 'Mary' must be a single token" in result.output


@pytest.mark.parametrize("command", ["path", "counterfactual"])
def test_help_states_the_sign_conventions(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "denoising" in text and "noising" in text and "corrupted prompt" in text
