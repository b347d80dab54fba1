"""Node methods on a grouped-query-attention (Llama-architecture) model against plain oracles.

``llama_model`` (tests/conftest.py): 3 layers, 4 query heads sharing 2 key/value heads, RMSNorm,
rotary positions, SwiGLU. ``hook_z`` has one entry per *query* head, so heads are scored per query
head as on any model; the runner patches through the bridge's hooks (no GPT-2 fast path).
"""

import pytest
import torch

import attrscope
from attrscope import HEADS, NEURONS
from oracles import (gradient_times_difference, integrated_gradients_loop,
                     patch_one_unit_per_forward)

TOL = 1e-4
KINDS = [HEADS, NEURONS]


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_ap_matches_one_unit_per_forward(llama_model, llama_task, direction):
    heads = attrscope.attribute(llama_model, llama_task, "ap", direction, "heads",
                                show_progress=False, max_batch_rows=15)  # 3 copies: 4 = 3 + 1
    neurons = attrscope.attribute(llama_model, llama_task, "ap", direction, "neurons",
                                  show_progress=False)
    scores = {"heads": heads["heads"], "neurons": neurons["neurons"]}
    assert scores["heads"].shape == (5, 3, 4) and scores["neurons"].shape == (5, 3, 96)
    for kind, units in ((HEADS, list(range(4))), (NEURONS, list(range(0, 96, 7)) + [95])):
        for layer in range(llama_model.cfg.n_layers):
            reference = patch_one_unit_per_forward(llama_model, llama_task, direction, kind,
                                                   layer, units)
            torch.testing.assert_close(scores[kind.name][:, layer, units], reference, atol=TOL,
                                       rtol=0)
    assert scores["heads"].abs().max() > 1e-2 and scores["neurons"].abs().max() > 1e-2


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_atp_matches_autograd_oracle(llama_model, llama_task, direction):
    scores = attrscope.attribute(llama_model, llama_task, "atp", direction, ("heads", "neurons"),
                                 show_progress=False)
    for kind in KINDS:
        for layer in range(llama_model.cfg.n_layers):
            reference = gradient_times_difference(llama_model, llama_task, direction, kind, layer)
            torch.testing.assert_close(scores[kind.name][:, layer], reference, atol=TOL, rtol=TOL)
    assert scores["heads"].abs().max() > 1e-2


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_ig_matches_plain_quadrature_loop(llama_model, llama_task, direction):
    n_steps = 6
    scores = attrscope.attribute(llama_model, llama_task, "ig", direction, ("heads", "neurons"),
                                 show_progress=False, n_steps=n_steps)
    for kind in KINDS:
        for layer in range(llama_model.cfg.n_layers):
            reference = integrated_gradients_loop(llama_model, llama_task, direction, kind, layer,
                                                  n_steps)
            torch.testing.assert_close(scores[kind.name][:, layer], reference, atol=TOL, rtol=TOL)
    # ig is not atp here: the comparison above is not between two gradient-at-run estimates
    atp = attrscope.attribute(llama_model, llama_task, "atp", direction, "heads",
                              show_progress=False)
    assert (atp["heads"] - scores["heads"]).abs().max() > 1e-3


def test_atpstar_under_grouped_query_attention(llama_model, llama_task):
    """The QK fix reads the block adapter's attention (each query head its key/value head), so
    it runs under grouped-query attention; without it atpstar (no GradDrop) is atp."""
    fixed = attrscope.attribute(llama_model, llama_task, "atpstar", "noising", "heads",
                                show_progress=False, graddrop=False)
    assert all(torch.isfinite(fixed.extras[f"qk.{t}.heads"]).all() for t in ("query", "key"))
    star = attrscope.attribute(llama_model, llama_task, "atpstar", "noising", show_progress=False,
                               qk_fix=False, graddrop=False)
    atp = attrscope.attribute(llama_model, llama_task, "atp", "noising", show_progress=False)
    for kind in ("heads", "neurons"):
        torch.testing.assert_close(star[kind], atp[kind], atol=1e-5, rtol=1e-5)
