"""``attrscope edit`` and ``edit --compare``, in-process on the embedded task model."""

import csv
import json

import pytest
from typer.testing import CliRunner

import attrscope
from attrscope.cli import app
from attrscope.tasks.facts import capital_facts, write_facts
from attrscope.cli.options import result_path

runner = CliRunner()


def test_edit_writes_a_loadable_model_and_its_record(tmp_path):
    result = runner.invoke(app, ["edit", "--n", "2", "--target", "atp:top5%", "--out",
                                 str(tmp_path), "--no-progress", "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "model" / "edit.json").read_text())
    assert record["target"] == "atp:top5%" and len(record["facts"]) == 2
    assert f"{record['n_parameters_changed']:,} of" in result.output
    assert "after:  efficacy" in result.output
    assert attrscope.load_model(str(tmp_path / "model")).cfg.n_layers == 4


def test_compare_writes_the_table_and_random_matches_the_size(tmp_path):
    facts = write_facts(capital_facts(3, seed=5), tmp_path / "facts.json")
    result = runner.invoke(app, [
        "edit", "--compare", "--facts", str(facts), "--target", "atp:top5%", "--target",
        "random:atp:top5%", "--steps", "5", "--out", str(tmp_path), "--no-progress",
        "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "edit-compare.csv")))
    assert [r["target"] for r in rows] == ["none (unedited)", "atp:top5%", "random:atp:top5%"]
    assert rows[1]["parameters_changed"] == rows[2]["parameters_changed"] != "0"
    assert (rows[1]["heads"], rows[1]["neurons"]) == (rows[2]["heads"], rows[2]["neurons"])
    page = (tmp_path / "edit-compare.html").read_text()
    assert "random:atp:top5%" in page and "specificity" in page
    per_fact = json.loads((tmp_path / "edit-compare.json").read_text())["rows"][1]["facts"]
    assert len(per_fact) == 3


@pytest.mark.parametrize("args, expected", [
    (["--target", "ig:top200%"], "--target part 'ig:top200%'"),
    (["--target", "ig:top10%", "--target", "all"], "give one --target without --compare"),
    (["--facts", "missing.json"], "missing.json: no such fact file"),
    (["--stop-prob", "1.5"], "a probability in (0, 1]"),
    (["--target", "random:eap:top10%"], "'eap' is not a node method"),
    (["--neutral", "missing.txt"], "--neutral missing.txt: no such file"),
])
def test_bad_edit_options_fail_in_one_line(tmp_path, args, expected):
    result = runner.invoke(app, ["edit", *args, "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 2
    assert expected in result.output and "Traceback" not in result.output
    assert "loading model" not in result.output  # refused before the model is loaded


def test_counterfact_answers_without_a_space_are_refused_naming_the_fact(tmp_path):
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([{"case_id": 9, "requested_rewrite": {
        "prompt": "We visited {}, the capital of", "subject": "Paris",
        "target_new": {"str": "Germany"}, "target_true": {"str": "France"}}}]))
    result = runner.invoke(app, ["edit", "--facts", str(path), "--target", "all", "--out",
                                 str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 2
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "fact '9': target_true: answer 'France'" in error[0]
    assert "--add-space" in error[0]


def test_edges_takes_a_latent_aware_direction_and_exports_its_circuit(tmp_path):
    """On the planted model the latent-mean circuit of the top 12 edges holds the AND and OR
    heads' edges, which the noising direction alone ranks near 0 (the OR pair)."""
    from attrscope import Scores

    result = runner.invoke(app, [
        "edges", "--model", "attrscope-planted", "--task", "planted", "--method", "exact",
        "--direction", "latent-mean", "--n", "8", "--top", "12", "--out", str(tmp_path),
        "--no-progress"])
    assert result.exit_code == 0, result.output
    combined = Scores.load(result_path(tmp_path, "exact", "latent-mean"))
    noising = Scores.load(result_path(tmp_path, "exact", "noising"))
    assert combined.meta["combined"]["how"] == "latent-mean"
    top = {label for label, _ in combined.top("edges", 12)}
    assert {f"0.{h} -> mlp 0" for h in range(4)} <= top
    assert not {"0.2 -> mlp 0", "0.3 -> mlp 0"} & {label for label, _ in noising.top("edges", 12)}
    mib = json.loads((tmp_path / "edges-exact-latent-mean-mib.json").read_text())
    assert mib["edges"]["a0.h2->m0"]["in_graph"]


def test_edit_help_renders():
    result = runner.invoke(app, ["edit", "--help"])
    assert result.exit_code == 0, result.output
    assert "--target" in result.output and "--compare" in result.output


def test_edit_refuses_to_overwrite_a_folder_that_is_not_an_edit(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["edit", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 2 and "is not an edited model" in result.output
    assert "loading model" not in result.output
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"
