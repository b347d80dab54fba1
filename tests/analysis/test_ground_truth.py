"""The planted-circuit model: its hand-set behaviour, the shipped weights equal the build script's,
and each method's and the latent detector's precision/recall against the ground truth."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import attrscope
from attrscope.analysis.compare import compare
from attrscope.analysis.ground_truth import evaluate, load_ground_truth, precision_recall
from attrscope.models import PLANTED_MODEL_DIR

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def planted():
    model = attrscope.load_model("attrscope-planted")
    return model, attrscope.load_task("planted", model, n=6, seed=1)


@pytest.fixture(scope="module")
def scored(planted):
    model, task = planted
    c = compare(model, task, ("ap", "atp", "ig"), k=5, n_boot=100, n_random=20,
                show_progress=False, log=lambda _: None)
    return c, {(r["kind"], r["who"], r["what"]): r for r in evaluate(c, load_ground_truth())}


def test_the_planted_model_computes_and_plus_or_plus_single(planted):
    model, task = planted
    with torch.no_grad():
        clean = task.metric(model(task.clean_tokens))
        corrupted = task.metric(model(task.corrupted_tokens))
    torch.testing.assert_close(clean, torch.full_like(clean, 2.95), atol=0.05, rtol=0)
    assert corrupted.abs().max() < 1e-3


def test_shipped_weights_are_what_the_build_script_makes(tmp_path):
    spec = importlib.util.spec_from_file_location("build_planted", ROOT / "scripts" / "build_planted_model.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    out = build.build(tmp_path)
    from safetensors.torch import load_file

    shipped, rebuilt = load_file(PLANTED_MODEL_DIR / "model.safetensors"), load_file(out / "model.safetensors")
    assert shipped.keys() == rebuilt.keys()
    assert all(torch.equal(shipped[k], rebuilt[k]) for k in shipped)
    assert load_ground_truth(out) == load_ground_truth()


def test_precision_and_recall_against_the_planted_truth(scored):
    _, rows = scored
    pr = lambda kind, who, what: (rows[(kind, who, what)]["precision"], rows[(kind, who, what)]["recall"])  # noqa: E731
    # The detector (ap asymmetry, ig contrast) finds exactly the planted AND and OR heads.
    assert pr("heads", "latent (ap)", "AND components") == (1.0, 1.0)
    assert pr("heads", "latent (ap)", "OR components") == (1.0, 1.0)
    # Patching sees each gate from one side only; ig sees all five; atp's gradients vanish at
    # the gates' flat ends and keep only the single-path head.
    assert pr("heads", "ap denoising", "relevant components") == (1.0, 0.6)
    assert rows[("heads", "ap denoising", "relevant components")]["predicted"] == "0.2 0.3 0.4"
    assert pr("heads", "ap noising", "relevant components") == (1.0, 0.6)
    assert rows[("heads", "ap noising", "relevant components")]["predicted"] == "0.0 0.1 0.4"
    for d in ("denoising", "noising"):
        assert pr("heads", f"ig {d}", "relevant components") == (1.0, 1.0)
        assert pr("heads", f"atp {d}", "relevant components") == (1.0, 0.2)
        for m in ("ap", "atp", "ig"):
            assert pr("neurons", f"{m} {d}", "relevant components") == (1.0, 1.0)
    # atp's asymmetry calls nothing, so its detector predicts nothing (precision undefined)
    p, r = pr("heads", "latent (atp)", "AND components")
    assert math.isnan(p) and r == 0.0


def test_the_report_says_which_heads_are_latent(scored):
    from attrscope.analysis.report import summary_lines

    c, _ = scored
    (latent,) = [line for line in summary_lines(c) if line.startswith("latent AND/OR: ")]
    assert "heads AND 0.0 (ap), AND 0.1 (ap), OR 0.2 (ap), OR 0.3 (ap)" in latent
    lines = summary_lines(c, verbose=True)
    assert "  ap: called AND 0.0 AND 0.1 OR 0.2 OR 0.3; latent: 0.0 0.1 0.2 0.3" in lines
    assert any(line.startswith("  ground truth heads    latent (ap)      AND components") and
               line.endswith("precision 1 recall 1") for line in lines)


def test_precision_recall_edge_cases():
    assert precision_recall({"a", "b"}, {"b", "c", "d"})["precision"] == 0.5
    assert precision_recall({"a", "b"}, {"b", "c", "d"})["recall"] == pytest.approx(1 / 3)
    assert math.isnan(precision_recall(set(), {"a"})["precision"])
