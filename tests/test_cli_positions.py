"""``attrscope attribute`` and ``attrscope compare`` with sites and positions (issue 23),
in-process on the embedded model: ``--positions each`` on a task file of prompts of one length,
``--positions S2,END`` on IOI; both write the layer x position heatmaps."""

import csv
import re
from collections import Counter

from typer.testing import CliRunner

import attrscope
from attrscope import Scores
from attrscope.cli import app
from attrscope.cli.options import result_path

runner = CliRunner()


def one_length_file(model, path) -> int:
    """A task file of IOI pairs of one token length; returns that length."""
    pool = attrscope.load_task("ioi", model, n=40, seed=11)
    length = Counter(pool.answer_pos.tolist()).most_common(1)[0][0]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clean", "corrupted", "answer", "distractor"])
        for pair, at in zip(pool.pairs, pool.answer_pos.tolist()):
            if at == length:
                writer.writerow([pair.clean, pair.corrupted, pair.answer, pair.distractor])
    return length + 1


def test_positions_each_on_a_file_of_one_length(embedded_model, tmp_path):
    task_file = tmp_path / "pairs.csv"
    seq = one_length_file(embedded_model, task_file)
    result = runner.invoke(app, [
        "attribute", "--task", str(task_file), "--n", "3", "--method", "ap,atp",
        "--direction", "denoising", "--components", "resid_pre,attn_out,heads",
        "--positions", "each", "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    L = embedded_model.cfg.n_layers
    for method in ("ap", "atp"):
        scores = Scores.load(result_path(tmp_path / "out", method, "denoising"))
        assert scores["resid_pre"].shape == (3, L + 1, 1, seq)
        assert scores["heads"].shape == (3, L, embedded_model.cfg.n_heads, seq)
        page = (tmp_path / "out" / f"{method}-denoising-positions.html").read_text()
        assert "resid_pre: layer x position" in page and "heads: head x position" in page
        assert f"resid_pre 0 at position {seq - 1} (token" in page
    assert "layer x position heatmaps" in result.output


def test_named_positions_on_ioi(tmp_path):
    result = runner.invoke(app, [
        "attribute", "--task", "ioi", "--n", "4", "--method", "ap", "--direction", "noising",
        "--components", "resid_pre,q", "--positions", "S2,END", "--out", str(tmp_path),
        "--no-progress", "--top", "3"])
    assert result.exit_code == 0, result.output
    scores = Scores.load(result_path(tmp_path, "ap", "noising"))
    assert scores.position_labels == ["S2", "END"] and scores["q"].shape[-1] == 2
    assert "@S2" in result.output or "@END" in result.output
    page = (tmp_path / "ap-noising-positions.html").read_text()
    assert ">S2<br>" in page and ">END<br>" in page and "95 % interval" in page


def test_bad_positions_are_one_line_before_any_run(tmp_path):
    result = runner.invoke(app, [
        "attribute", "--task", "ioi", "--n", "4", "--method", "atp", "--components", "resid_pre",
        "--positions", "S2,S9", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code != 0 and "unknown position(s) ['S9']" in result.output
    result = runner.invoke(app, [
        "attribute", "--task", "ioi", "--n", "6", "--method", "atp", "--components", "resid_pre",
        "--positions", "each", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code != 0 and "one length" in result.output
    result = runner.invoke(app, [
        "attribute", "--task", "ioi", "--n", "4", "--components", "resid_mid", "--out",
        str(tmp_path), "--no-progress"])
    assert result.exit_code != 0 and "resid_mid" in result.output
    assert not list(tmp_path.rglob("*.safetensors"))


def test_compare_with_sites_at_named_positions(tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(app, [
        "compare", "--task", "ioi", "--n", "4", "--method", "ap,atp,atpstar",
        "--components", "resid_pre,attn_out,heads", "--positions", "S2,END", "--n-boot", "50",
        "--n-random", "5", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: atpstar")]
    assert len(notes) == 1 and notes[0].startswith("note: atpstar leaves out resid_pre, "
                                                   "attn_out, heads:")
    assert "not verified" not in result.output
    for kind in ("resid_pre", "attn_out", "heads"):
        assert f"verifying {kind} by ablation (other)" in result.output
        dashboard = [line for line in result.output.splitlines()
                     if line.startswith(f"{kind} noising ")]
        # ap and atp: two top-k sets of each kind and direction, tested against random sets
        assert len(dashboard) == 1
        assert re.search(r" top [0-2]/2, other [0-9]+/[0-9]+ ", dashboard[0])
    with open(out / "tables" / "verification.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["kind"] for r in rows} == {"resid_pre", "attn_out", "heads"}
    top = [r for r in rows if r["kind"] == "resid_pre" and r["set"].startswith("top ")]
    assert top and all(re.fullmatch(r"(\d+@(S2|END) ?)+", r["components"]) for r in top)
    html = (out / "report.html").read_text()
    assert 'id="heatmap-resid_pre"' in html and "by position" in html
    with open(out / "tables" / "mean_scores_heads.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["component"] for r in rows} >= {"3.1@S2", "3.1@END"}
    assert set(rows[0]) >= {"ap denoising", "atp noising"} and "atpstar denoising" not in rows[0]
    assert (out / "figures" / "positions_heads.png").exists()


def test_compare_refuses_an_unknown_position_before_any_run(tmp_path):
    result = runner.invoke(app, [
        "compare", "--task", "ioi", "--n", "4", "--method", "ap,atp", "--components",
        "resid_pre", "--positions", "S2,S9", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code != 0 and "unknown position(s) ['S9']" in result.output
    assert "computed" not in result.output and "Traceback" not in result.output
