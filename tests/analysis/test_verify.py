"""Verification rows and faithfulness curves against direct ablation."""

import numpy as np
import pytest
import torch

from attrscope.analysis.ablation import Ablator, Component, all_components
from attrscope.analysis.verify import (FRACTIONS, NullTest, curve_intervals, faithfulness_curve,
                                      faithfulness_note, null_comparison, null_sets,
                                      ranked_components, verdict, verification_rows)
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
    assert curve["f_low"][-1] == pytest.approx(1.0) == curve["f_high"][-1]  # f(model) is 1 always
    assert curve["cpr_low"] <= curve["cpr_high"] and len(curve["f_low"]) == len(FRACTIONS)


def test_curve_intervals_resample_prompts_and_renormalise():
    """Against a plain loop: draw prompts with replacement (the same draws), recompute m(model),
    m(empty), each m(circuit) and f, take percentiles."""
    g = torch.Generator().manual_seed(3)
    n, fractions, n_boot = 7, (0.1, 0.5, 1.0), 200
    metrics = torch.stack([2 + 0.3 * torch.randn(n, generator=g), 0.2 * torch.randn(n, generator=g),
                           1 + torch.randn(n, generator=g), 1.5 + torch.randn(n, generator=g),
                           2 + 0.3 * torch.randn(n, generator=g)]).double()  # model, empty, 3 circuits
    got = curve_intervals(metrics, fractions, n_boot=n_boot, seed=5)
    draws = torch.randint(0, n, (n_boot, n), generator=torch.Generator().manual_seed(5))
    f = torch.stack([(m[2:] - m[1]) / (m[0] - m[1]) for m in
                     (metrics[:, row].mean(1) for row in draws)])  # [B, F]
    expected = torch.quantile(f, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
    assert got["f_low"] == pytest.approx(expected[0].tolist())
    assert got["f_high"] == pytest.approx(expected[1].tolist())
    cpr = torch.trapezoid(f, torch.tensor(fractions, dtype=torch.float64), dim=1)
    assert got["cpr_low"] == pytest.approx(float(torch.quantile(cpr, 0.025)))
    assert all(lo < hi for lo, hi in zip(got["f_low"], got["f_high"]))  # prompts differ: width
    same = curve_intervals(metrics[:, :1].repeat(1, n), fractions, n_boot=50)
    assert same["f_low"] == pytest.approx(same["f_high"])  # identical prompts: no spread
    flat = curve_intervals(torch.ones(5, n, dtype=torch.float64), fractions, n_boot=20)
    assert np.isnan(flat["cpr_low"])  # m(model) = m(empty) in every resample: f undefined


def test_verification_rows_against_direct_ablation_and_the_null(random_model, random_task):
    ablator = Ablator(random_model, random_task, how="other", kinds=["heads"])
    results = {"ap denoising": _scores(random_model, "ap", "denoising", 1),
               "ig denoising": _scores(random_model, "ig", "denoising", 2)}
    called = {"ap": {"and": [{"layer": 0, "unit": 1}], "or": [{"layer": 2, "unit": 3}]}}
    rows = verification_rows(ablator, results, "heads", k=3, called=called,
                             test=NullTest(n_null=50, seed=0, n_boot=100))
    by_set = {(r["set"], r["source"]): r for r in rows}
    top = ranked_components(results["ap denoising"], "heads")[:3]
    row = by_set[("top 3", "ap denoising")]
    assert row["components"] == " ".join(c.label for c in top)
    fresh = Ablator(random_model, random_task, how="other", kinds=["heads"])
    per_sample = fresh.metrics([top])[0] - fresh.base
    assert row["metric_change"] == pytest.approx(float(per_sample.mean()), abs=1e-5)
    assert row["ci_low"] <= row["metric_change"] <= row["ci_high"]
    assert row["ci_low"] >= float(per_sample.min()) - 1e-6 and row["ci_high"] <= float(per_sample.max()) + 1e-6
    assert by_set[("AND-like", "ap")]["components"] == "0.1"
    assert by_set[("OR-like", "ap")]["components"] == "2.3"
    # size 1: 12 heads, so the null is every single head, exhaustively
    single = by_set[("AND-like", "ap")]
    assert single["exhaustive"] and single["n_null"] == 12
    every_head = fresh.metric_change([[c] for c in all_components("heads", random_model.cfg)])
    # A null set within rounding of the tested one ties with it (it is the tested set itself,
    # ablated in another batch): the product's tie rule, 1e-5 of the scale, decides, not rounding.
    tie = 1e-5 * max(1.0, float(every_head.abs().max()))
    larger = int((every_head.abs() >= abs(single["metric_change"]) - tie).sum())
    assert single["p_value"] == pytest.approx((1 + larger) / 13)
    assert single["effect_size"] == pytest.approx(
        (single["metric_change"] - float(every_head.mean())) / float(every_head.std()), rel=1e-4)
    # size 3: C(12, 3) = 220 > 50, so 50 random sets
    assert not row["exhaustive"] and row["n_null"] == 50
    assert row["verdict"].startswith(("confirmed", "indistinguishable"))
    assert f"50 random sets of size 3 (p = {row['p_value']:.3g}" in row["verdict"]
    random_rows = [r for r in rows if r["source"] == "random"]
    assert {r["size"] for r in random_rows} >= {1, 3}
    assert all(r["null_sd"] > 0 for r in random_rows)
    only = [r for r in rows if r["set"].startswith("top 3, not in")]
    for r in only:  # one-method-only sets are disjoint from the other method's top 3
        other = "ig denoising" if r["source"] == "ap denoising" else "ap denoising"
        other_top = {c.label for c in ranked_components(results[other], "heads")[:3]}
        assert not set(r["components"].split()) & other_top


def test_null_sets_are_distinct_seeded_and_exhaustive_when_few(random_model):
    cfg = random_model.cfg
    sets, exhaustive = null_sets("heads", cfg, 2, 100, seed=0)
    assert exhaustive and len(sets) == 66 and len({frozenset(s) for s in sets}) == 66
    sets, exhaustive = null_sets("heads", cfg, 4, 100, seed=0)
    assert not exhaustive and len(sets) == 100 and all(len(set(s)) == 4 for s in sets)
    assert sets == null_sets("heads", cfg, 4, 100, seed=0)[0]
    assert sets != null_sets("heads", cfg, 4, 100, seed=1)[0]


def test_a_null_set_within_rounding_of_the_tested_one_is_a_tie():
    # the tested set's own entry in an exhaustive null, off by float32 rounding either way
    for own in (1.0 - 3e-7, 1.0 + 3e-7):
        out = null_comparison(1.0, torch.tensor([own, 0.5, 0.2]))
        assert out["p_value"] == pytest.approx(2 / 4)
        assert out["percentile"] == pytest.approx(2 / 3)
    # a clearly smaller effect is not a tie
    assert null_comparison(1.0, torch.tensor([0.999, 0.5, 0.2]))["p_value"] == pytest.approx(1 / 4)


def test_null_comparison_and_verdict_words():
    null = torch.tensor([0.1, -0.2, 0.3, -0.4, 0.5, 0.0, 0.05, -0.05, 0.2, -0.1])
    out = null_comparison(-0.45, null)
    assert out["percentile"] == pytest.approx(0.9)  # |-0.45| beats 9 of 10
    assert out["p_value"] == pytest.approx(2 / 11)
    row = {"percentile": 0.9, "p_value": 2 / 11, "effect_size": -1.5, "exhaustive": False,
           "n_null": 10, "size": 5}
    assert verdict(row, 0.05) == ("indistinguishable from random sets: changes the metric more "
                                  "than 90 % of 10 random sets of size 5 (p = 0.182, -1.5 sd "
                                  "from their mean)")
    assert verdict({**row, "p_value": 0.01}, 0.05).startswith("confirmed")
    assert "more than every one of the 12 possible sets of size 5" in verdict(
        {**row, "percentile": 1.0, "exhaustive": True, "n_null": 12}, 0.05)
    assert "more than every one of 10 random sets of size 5" in verdict(
        {**row, "percentile": 1.0}, 0.05)


def test_faithfulness_note_explains_identical_curves():
    comps = [Component("heads", 0, i) for i in range(4)]
    same = {"a": comps, "b": comps[:2] + comps[3:1:-1]}
    note = faithfulness_note("heads", same, [1, 1, 2, 3, 4])
    assert "coincide at sizes 1, 2 of 4" in note and "1 of the 5 fractions round" in note
    assert "identical" in faithfulness_note("heads", {"a": comps, "b": list(comps)}, [1, 2, 4])
