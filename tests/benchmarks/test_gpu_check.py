"""benchmarks/gpu_check.py and benchmarks/real_shapes.py run on the CPU with a tiny shape: every
registered method is timed, checked against a CPU float32 recomputation and written to JSON."""

import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import attrscope  # noqa: E402
import gpu_check  # noqa: E402
import real_shapes  # noqa: E402


def test_gpu_check_runs_every_method_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    summary = gpu_check.main(["--device", "cpu", "--shapes", "tiny", "--n", "3", "--n-check", "2",
                              "--cache", str(tmp_path / "models"), "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(summary))
    rows = summary["shapes"][0]["methods"]
    assert [r["method"] for r in rows] == list(attrscope.methods.METHODS)
    for row in rows:
        assert row["syncs"] is None  # counted on CUDA only
        assert row["seconds"] >= 0 and row["peak_gib"] >= 0
        assert row["max_rel_diff"] == pytest.approx(0.0, abs=1e-5) and row["ok"]
    assert summary["all_ok"]


def test_the_check_sees_a_difference(tmp_path):
    """The comparison can fail: a perturbed result is reported relative to the reference."""
    reference = torch.tensor([[1.0, -2.0, float("nan")]])
    assert gpu_check.relative_difference(reference + 0.1, reference) == pytest.approx(0.05)
    assert gpu_check.relative_difference(reference, reference) == 0.0


def test_first_samples_keeps_the_task(tmp_path):
    model = attrscope.load_model(str(real_shapes.save_shape("tiny", tmp_path / "tiny")))
    task = attrscope.load_task("ioi", model, n=4)
    part = gpu_check.first_samples(task, 2)
    assert part.n == 2 and task.n == 4 and len(part.pairs) == 2
    torch.testing.assert_close(part.clean_tokens, task.clean_tokens[:2])


def test_real_shapes_benchmark_runs_on_a_tiny_shape(tmp_path):
    rows = real_shapes.main(["--shape", "tiny", "--n", "2", "--methods", "atp,ig,ap",
                             "--ref-samples", "1", "--ig-ref-layers", "0", "--cache",
                             str(tmp_path), "--json", str(tmp_path / "rows.json")])
    assert [r["method"] for r in rows] == ["atp", "ig", "ap"]
    assert all(r["estimate_s"] > 0 and r["seconds"] > 0 for r in rows)
    ig = next(r for r in rows if r["method"] == "ig")
    assert ig["max_abs_diff"] < 1e-4 and "captum" in ig["reference"]
    ap = next(r for r in rows if r["method"] == "ap")
    assert ap["max_abs_diff"] < 1e-4 and "transformer_lens" in ap["reference"]
