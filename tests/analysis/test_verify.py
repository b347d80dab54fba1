"""Verification rows and faithfulness curves against direct ablation."""

import numpy as np
import pytest
import torch

from attrscope.analysis.ablation import Ablator
from attrscope.analysis.verify import FRACTIONS, faithfulness_curve, ranked_components, verification_rows
from attrscope.scores import Scores


def _scores(random_model, method, direction, seed):
    cfg = random_model.cfg
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(5, cfg.n_layers, cfg.n_heads, generator=g)
    return Scores(values={"heads": values}, meta={"method": method, "direction": direction})


def test_faithfulness_matches_direct_ablation(random_model, random_task):
    ablator = Ablator(random_model, random_task, how="mean", kinds=["heads"])
    scores = _scores(random_model, "ap", "denoising", 0)
    curve = faithfulness_curve(ablator, scores, "heads")
    ranked = ranked_components(scores, "heads")
    assert len(ranked) == 12 and curve["sizes"][-1] == 12 and curve["sizes"][0] == 1
    m_model = float(Ablator(random_model, random_task, how="mean", kinds=["heads"]).metrics([[]]).mean())
    m_empty = float(Ablator(random_model, random_task, how="mean", kinds=["heads"]).metrics([ranked]).mean())
    keep3 = float(Ablator(random_model, random_task, how="mean", kinds=["heads"]).metrics([ranked[2:]]).mean())
    assert curve["m_model"] == pytest.approx(m_model, abs=1e-5)
    assert curve["m_empty"] == pytest.approx(m_empty, abs=1e-5)
    i2 = curve["sizes"].index(2)
    assert curve["f"][i2] == pytest.approx((keep3 - m_empty) / (m_model - m_empty), abs=1e-4)
    assert curve["f"][-1] == pytest.approx(1.0, abs=1e-6)  # the whole model is the full circuit
    assert curve["cpr"] == pytest.approx(np.trapezoid(curve["f"], FRACTIONS), abs=1e-9)
    assert curve["cmd"] == pytest.approx(np.trapezoid(np.abs(1 - np.array(curve["f"])), FRACTIONS), abs=1e-9)


def test_verification_rows(random_model, random_task):
    ablator = Ablator(random_model, random_task, how="other", kinds=["heads"])
    results = {"ap denoising": _scores(random_model, "ap", "denoising", 1),
               "ig denoising": _scores(random_model, "ig", "denoising", 2)}
    latent = {"ap": {"and": [{"layer": 0, "unit": 1}], "or": [{"layer": 2, "unit": 3}]}}
    rows = verification_rows(ablator, results, "heads", k=3, latent=latent, n_random=4, seed=0)
    by_set = {(r["set"], r["source"]): r for r in rows}
    top = ranked_components(results["ap denoising"], "heads")[:3]
    row = by_set[("top 3", "ap denoising")]
    assert row["components"] == " ".join(c.label for c in top)
    fresh = Ablator(random_model, random_task, how="other", kinds=["heads"])
    assert row["metric_change"] == pytest.approx(float(fresh.metric_change([top])[0]), abs=1e-5)
    assert by_set[("latent AND", "ap")]["components"] == "0.1"
    assert by_set[("latent OR", "ap")]["components"] == "2.3"
    random_rows = [r for r in rows if r["source"] == "random"]
    assert {r["size"] for r in random_rows} >= {1, 3}
    assert all(r["sd_over_random_sets"] >= 0 for r in random_rows)
    assert any(r["sd_over_random_sets"] > 0 for r in random_rows)
    only = [r for r in rows if r["set"].startswith("top 3, not in")]
    for r in only:  # one-method-only sets are disjoint from the other method's top 3
        other = "ig denoising" if r["source"] == "ap denoising" else "ap denoising"
        other_top = {c.label for c in ranked_components(results[other], "heads")[:3]}
        assert not set(r["components"].split()) & other_top
