"""Half precision: every method on a bfloat16 / float16 model against a float32 oracle.

The oracle is a float32 computation of the same weights: the saved folder loaded in float32 with
every parameter rounded to the half dtype (loading the folder in float32 as it is would also
measure the rounding of the weights, which no computation can undo: see docs/precision.md).
Target (issue 17): Spearman >= 0.99 over the mean scores and max error <= 2 % of the largest
|score|, for GPT-2 and Llama fixtures (tests/families.py). n = 4 prompts, a sixteenth of the
neurons, few IG steps.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

import attrscope
from attrscope import arch
from attrscope.edges.methods import check_reproduces
from attrscope.engine import verification_tolerance
from families import build

METHODS = ["ap", "atp", "ig", "atpstar", "eap", "exact"]
SETTINGS = {"ap": {"units": {"neurons": list(range(0, 256, 16))}}, "ig": {"n_steps": 5},
            "exact": {"max_batch_rows": 512}}


def scores(model, method: str):
    task = attrscope.load_task("ioi", model, n=4, seed=3)
    components = "edges" if method in ("eap", "exact") else "heads,neurons"
    return attrscope.attribute(model, task, method, "denoising", components, show_progress=False,
                               **SETTINGS.get(method, {}))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def folder(request, tmp_path_factory):
    """A tiny random model of the family, saved."""
    folder = tmp_path_factory.mktemp(f"precision_{request.param}")
    build(request.param, folder)
    return folder


def float32_oracle(folder, dtype: str, methods=METHODS) -> dict:
    """{method: scores} of the float32 model whose weights are rounded to ``dtype``."""
    model = attrscope.load_model(str(folder))
    with torch.no_grad():
        for p in arch.hf_model(model).parameters():
            p.copy_(p.to(getattr(torch, dtype)).float())
    return {method: scores(model, method) for method in methods}


def agreement(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(Spearman, max error / max |want|) of the sample-mean scores, over the scored entries."""
    got, want = got.mean(0).flatten().double(), want.mean(0).flatten().double()
    scored = ~torch.isnan(want)
    got, want = got[scored], want[scored]
    return (float(spearmanr(got.numpy(), want.numpy()).statistic),
            float((got - want).abs().max() / want.abs().max()))


# float16 checks one method per path (patched suffix, adapter gradient, edge forward) to keep CI short.
@pytest.mark.parametrize("dtype, methods", [("bfloat16", METHODS), ("float16", ["ap", "atp", "exact"])])
def test_half_precision_models_match_a_float32_oracle(folder, dtype, methods):
    oracle = float32_oracle(folder, dtype, methods)
    model = attrscope.load_model(str(folder), dtype=dtype)
    assert arch.compute_dtype(model) == torch.float32
    for method in methods:
        result = scores(model, method)
        assert result.meta["compute_dtype"] == "torch.float32"
        assert result.meta.get("engine") == "suffix_forward", result.meta  # one engine, every method
        for kind, want in oracle[method].values.items():
            rho, error = agreement(result.values[kind], want)
            assert rho >= 0.99 and error <= 0.02, f"{method} {kind}: Spearman {rho:.4f}, error {error:.4f}"


def test_computing_in_half_precision_is_worse_and_recorded(folder):
    """compute_dtype=bfloat16 keeps the fast path (checked with bfloat16's tolerance) and is
    recorded; its ap error is larger than the float32 compute's (which is what the default buys)."""
    oracle = float32_oracle(folder, "bfloat16", ["ap"])
    errors = {}
    for compute in ("bfloat16", "float32"):
        model = attrscope.load_model(str(folder), dtype="bfloat16", compute_dtype=compute)
        result = scores(model, "ap")
        assert result.meta["compute_dtype"] == f"torch.{compute}"
        assert result.meta["engine"] == "suffix_forward", result.meta.get("fast_path_unavailable")
        errors[compute] = agreement(result.values["heads"], oracle["ap"].values["heads"])[1]
    assert errors["float32"] < errors["bfloat16"]


def test_tolerance_scales_with_the_dtype_and_refusals_name_it():
    tols = [verification_tolerance(d) for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)]
    assert tols == sorted(tols)
    with pytest.raises(RuntimeError, match=r"bfloat16 model's metric.*--dtype float32"):
        check_reproduces(torch.ones(3), torch.zeros(3), torch.bfloat16, torch.float32)
    check_reproduces(torch.ones(3) * 1.01, torch.ones(3), torch.bfloat16)  # within bfloat16's
