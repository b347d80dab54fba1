"""Direction asymmetry, latent AND/OR sets, and the AND/OR toy experiment."""

import pytest
import torch

from attrscope.analysis.latent import (asymmetry, asymmetry_intervals, asymmetry_scale,
                                      asymmetry_values, latent_analysis, latent_components)
from attrscope.analysis.toy import integrated_gradients, patching, toy_experiment, train_gate
from attrscope.scores import Scores


def _pair(den, noi, method="ap"):
    make = lambda v, d: Scores(values={"heads": v}, meta={"method": method, "direction": d})  # noqa: E731
    return make(den, "denoising"), make(noi, "noising")


def test_asymmetry_sign_and_normalisation_by_max_abs():
    # component 0: AND-like (noising effect larger), 1: OR-like, 2: symmetric.
    den = torch.tensor([[[0.1, -2.0, 1.0]], [[0.1, -2.0, 1.0]]])
    noi = torch.tensor([[[-4.0, 0.0, -1.0]], [[-4.0, 0.0, -1.0]]])
    values = asymmetry_values(den, noi)
    assert values[0].tolist() == pytest.approx([(0.1 - 4.0) / 4.0, 2.0 / 4.0, 0.0])
    # all scores negative: a signed maximum would flip signs; max |.| keeps them
    values_neg = asymmetry_values(-den.abs(), -noi.abs())
    assert values_neg[0, 0] < 0 and values_neg[0, 1] > 0


def test_asymmetry_interval_equals_recomputing_each_resample():
    g = torch.Generator().manual_seed(0)
    den, noi = torch.randn(9, 2, 3, generator=g), torch.randn(9, 2, 3, generator=g)
    est = asymmetry_intervals(den, noi, n_boot=40, seed=3, level=0.9)
    torch.testing.assert_close(est["value"], asymmetry_values(den, noi))
    draws = torch.randint(0, 9, (40, 9), generator=torch.Generator().manual_seed(3))
    scale = asymmetry_scale(den, noi)  # held at the full-data value
    per_resample = torch.stack([(den[d].abs() - noi[d].abs()).double().mean(0) / scale
                                for d in draws])
    q = torch.quantile(per_resample.flatten(1), torch.tensor([0.05, 0.95], dtype=torch.float64), dim=0)
    torch.testing.assert_close(est["low"].flatten(), q[0])
    torch.testing.assert_close(est["high"].flatten(), q[1])
    assert (est["low"] <= est["value"]).all() and (est["value"] <= est["high"]).all()


def _sets(values_d, values_n, method="ap"):
    return _pair(torch.tensor(values_d, dtype=torch.float32),
                 torch.tensor(values_n, dtype=torch.float32), method)


def test_calls_need_an_interval_clear_of_zero_and_the_threshold():
    # 4 samples, 4 heads: 0 AND-like and steady; 1 OR-like and steady; 2 OR-like on average but
    # noisy (interval contains 0); 3 steady but tiny (below the threshold).
    den = [[[0.0, 3.0, 6.0, 1.02]], [[0.1, 3.1, -0.0, 1.03]], [[0.0, 2.9, 5.0, 1.02]], [[0.1, 3.0, 0.0, 1.03]]]
    noi = [[[-3.0, 0.0, 0.0, -1.0]], [[-3.1, -0.1, 4.0, -1.0]], [[-2.9, 0.0, 0.0, -1.0]], [[-3.0, 0.0, 4.0, -1.0]]]
    sets = latent_components(*_sets(den, noi), "heads", min_asymmetry=0.1, n_boot=200)
    assert [e["component"] for e in sets["and"]] == ["0.0"]
    assert [e["component"] for e in sets["or"]] == ["0.1"]
    e = sets["and"][0]
    assert e["low"] <= e["asymmetry"] <= e["high"] < 0
    # with no threshold the steady tiny asymmetry of 0.3 is called too
    loose = latent_components(*_sets(den, noi), "heads", min_asymmetry=0.0, n_boot=200)
    assert {e["component"] for e in loose["or"]} == {"0.1", "0.3"}


def test_latent_analysis_contrasts_patching_with_ig_and_gives_ig_no_sets():
    den = [[[0.0, 3.0, 0.0]], [[0.1, 3.1, 0.2]], [[0.0, 2.9, 0.1]]]
    noi = [[[-3.0, 0.0, -0.1]], [[-3.1, -0.1, -0.2]], [[-2.9, 0.0, 0.0]]]
    ig_den = [[[1.5, 3.0, 0.0]], [[1.6, 3.1, 0.1]], [[1.4, 2.9, 0.1]]]  # head 1: ig asymmetric too
    ig_noi = [[[-1.5, 0.0, 0.0]], [[-1.6, -0.1, -0.1]], [[-1.4, 0.0, 0.0]]]
    results = {}
    for m, (d, n) in (("ap", (den, noi)), ("ig", (ig_den, ig_noi))):
        results[(m, "denoising")], results[(m, "noising")] = _sets(d, n, m)
    analysis = latent_analysis(results, "heads", n_boot=200)
    assert set(analysis["calls"]) == {"ap"} and analysis["detector"] == "ig"
    assert [e["component"] for e in analysis["calls"]["ap"]["and"]] == ["0.0"]
    assert [e["component"] for e in analysis["calls"]["ap"]["or"]] == ["0.1"]
    latent = analysis["latent"]["ap"]
    assert [e["component"] for e in latent["and"]] == ["0.0"]  # ig symmetric there
    assert latent["or"] == []  # ig asymmetric as well: not latent
    closest = analysis["closest"]["ap"]
    assert closest[0]["component"] == "0.1" and "patching - IG asymmetry" in closest[0]["why"]
    assert abs(closest[0]["contrast"]) < 1e-9 and closest[0]["contrast_call"] == 0
    assert latent["and"][0]["contrast"] == pytest.approx(latent["and"][0]["asymmetry"] - latent["and"][0]["ig_value"])
    # ig a little less asymmetric than ap (clearly nonzero, close to it): not latent either
    results[("ig", "denoising")], results[("ig", "noising")] = _sets(
        [[[0.1, 3.0, 0.0]], [[0.2, 3.1, 0.2]], [[0.1, 2.9, 0.1]]], noi, "ig")
    near = latent_analysis(results, "heads", n_boot=200)
    assert near["latent"]["ap"] == {"and": [], "or": []}
    # nothing latent when ig is asymmetric everywhere; candidates are still listed
    results[("ig", "denoising")], results[("ig", "noising")] = _sets(den, noi, "ig")
    none = latent_analysis(results, "heads", n_boot=200)
    assert none["latent"]["ap"] == {"and": [], "or": []}
    assert [e["component"] for e in none["closest"]["ap"][:2]] == ["0.0", "0.1"]


def test_asymmetry_refuses_wrong_order_or_methods():
    d, n = _pair(torch.ones(1, 1, 2), torch.ones(1, 1, 2))
    with pytest.raises(ValueError, match="denoising result first"):
        asymmetry(n, d, "heads")
    other = Scores(values={"heads": torch.ones(1, 1, 2)}, meta={"method": "ig", "direction": "noising"})
    with pytest.raises(ValueError, match="one method"):
        asymmetry(d, other, "heads")


def test_toy_and_or_patching_disagrees_by_direction_and_ig_is_antisymmetric():
    results = toy_experiment(seed=0)
    for gate, expected_sign in (("and", -1), ("or", +1)):
        r = results[gate]
        assert r["outputs"][(1.0, 1.0)] > 0.95 and r["outputs"][(0.0, 0.0)] < 0.05
        ap_asym, ig_asym = r["asymmetry"]["ap"], r["asymmetry"]["ig"]
        assert (expected_sign * ap_asym > 0.5).all(), (gate, ap_asym)
        assert ig_asym.abs().max() < 1e-5, (gate, ig_asym)
        ig_d, ig_n = r["scores"][("ig", "denoising")], r["scores"][("ig", "noising")]
        torch.testing.assert_close(ig_n, -ig_d, atol=1e-6, rtol=0)


def test_toy_methods_against_direct_evaluation():
    net = train_gate("and", seed=1)
    f = lambda a, b: float(net(torch.tensor([[float(a), float(b)]])).detach())  # noqa: E731
    ap = patching(net, "denoising")
    assert float(ap[0, 0]) == pytest.approx(f(1, 0) - f(0, 0), abs=1e-6)
    assert float(patching(net, "noising")[0, 1]) == pytest.approx(f(1, 0) - f(1, 1), abs=1e-6)
    ig = integrated_gradients(net, "denoising", n_steps=64)
    assert float(ig.sum()) == pytest.approx(f(1, 1) - f(0, 0), abs=1e-4)  # completeness
    with pytest.raises(ValueError, match="gate must be"):
        train_gate("xor")


def test_bootstrap_intervals_in_blocks_of_components_equal_all_at_once():
    """The bootstrap runs a block of components at a time (memory): the same resamples, so the
    same intervals as one [n_boot, C] matrix."""
    from attrscope.analysis.agreement import bootstrap_weights
    from attrscope.analysis.latent import mean_intervals

    x = torch.randn(7, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    blocked = mean_intervals(x, torch.Size([5, 10]), 200, 3, 0.95, block=7)
    means = bootstrap_weights(7, 200, 3) @ x / 7
    q = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
    torch.testing.assert_close(blocked["low"], q[0].reshape(5, 10), atol=1e-12, rtol=0)
    torch.testing.assert_close(blocked["high"], q[1].reshape(5, 10), atol=1e-12, rtol=0)
    assert (blocked["low"] < blocked["high"]).all()
