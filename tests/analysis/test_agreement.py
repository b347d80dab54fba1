"""Agreement statistics against scipy and hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from attrscope.analysis.agreement import (
    agreement, average_ranks, bland_altman, bootstrap_weights, disagreements, jaccard, pearson,
    pooled_bootstrap, pooled_bootstrap_direct, spearman, top_k_mask)
from attrscope.scores import Scores


def _with_ties(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x[x.abs() < 0.4] = 0.0  # many exact ties at zero, as in real scores
    return x


def test_ranks_and_correlations_match_scipy():
    x, y = _with_ties((6, 40), 0), _with_ties((6, 40), 1) + 0.5 * _with_ties((6, 40), 0)
    for i in range(6):
        np.testing.assert_allclose(average_ranks(x[i]).numpy(), stats.rankdata(x[i].numpy()))
        assert float(pearson(x[i], y[i])) == pytest.approx(stats.pearsonr(x[i], y[i])[0], abs=1e-12)
        assert float(spearman(x[i], y[i])) == pytest.approx(stats.spearmanr(x[i], y[i])[0], abs=1e-12)
    assert math.isnan(float(pearson(torch.ones(5, dtype=torch.float64), y[0, :5])))


def test_pooled_bootstrap_equals_recomputing_each_resample():
    x, y = _with_ties((7, 9), 2), _with_ties((7, 9), 3) + _with_ties((7, 9), 2)
    weights = bootstrap_weights(7, 12, seed=5)
    assert torch.equal(weights.sum(1), torch.full((12,), 7.0, dtype=torch.float64))
    g = torch.Generator().manual_seed(5)
    draws = torch.randint(0, 7, (12, 7), generator=g)  # the same draws bootstrap_weights made
    for ranked, oracle in ((False, stats.pearsonr), (True, stats.spearmanr)):
        fast = pooled_bootstrap(x, y, weights, ranked)
        direct = pooled_bootstrap_direct(x, y, weights, ranked)
        expected = [oracle(x[d].flatten().numpy(), y[d].flatten().numpy())[0] for d in draws]
        np.testing.assert_allclose(fast.numpy(), expected, atol=1e-10)
        np.testing.assert_allclose(direct.numpy(), expected, atol=1e-10)


def test_jaccard_is_per_sample_and_empty_union_is_undefined():
    a = torch.tensor([[3.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, -5.0, 4.0, 0.0]])
    ma, mb = top_k_mask(a, 2), top_k_mask(b, 2)
    assert not ma[1].any() and not mb[1].any()  # zeros are never selected
    j = jaccard(ma, mb)
    assert j[0] == pytest.approx(1 / 3)  # {0, 2} vs {0, 1}
    assert math.isnan(float(j[1]))  # empty union: undefined, not 1
    assert j[2] == pytest.approx(1 / 3)  # {1, 0} vs {1, 2}


def _scores(values, method="ap", direction="denoising", task=None):
    return Scores(values={"heads": values}, meta={"method": method, "direction": direction,
                                                  "task": task or {"name": "t", "n": values.shape[0]}})


def test_agreement_reports_undefined_samples_and_refuses_mismatches():
    a = torch.randn(5, 2, 3)
    b = a.clone()
    a[4] = 0.0
    b[4] = 0.0
    result = agreement(_scores(a), _scores(b, "ig"), "heads", k=2, n_boot=50)
    assert result["jaccard_undefined_samples"] == 1
    assert result["jaccard"].value == pytest.approx(1.0)
    assert result["correlations"]["pearson_of_means"].value == pytest.approx(1.0)
    low, high = result["correlations"]["spearman_per_sample"].low, result["correlations"]["spearman_per_sample"].high
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)
    with pytest.raises(ValueError, match="different shapes"):
        agreement(_scores(a), _scores(torch.randn(5, 2, 4)), "heads")
    with pytest.raises(ValueError, match="different tasks"):
        agreement(_scores(a), _scores(b, task={"name": "other", "n": 5}), "heads")
    with pytest.raises(ValueError, match="no 'neurons'"):
        agreement(_scores(a), _scores(b), "neurons")


def test_bland_altman_scales_each_method_by_its_own_max():
    a = torch.tensor([2.0, -4.0, 1.0], dtype=torch.float64)
    b = torch.tensor([10.0, -20.0, 0.0], dtype=torch.float64)
    ba = bland_altman(a, b)
    np.testing.assert_allclose(ba["difference"].numpy(), [0.0, 0.0, 0.25])
    assert ba["bias"] == pytest.approx(0.25 / 3)
    sd = np.std([0.0, 0.0, 0.25], ddof=1)
    assert ba["sd"] == pytest.approx(sd)
    assert ba["upper_limit"] == pytest.approx(0.25 / 3 + 1.959963984540054 * sd)


def test_disagreements_lists_components_high_in_one_low_in_other():
    a = torch.tensor([5.0, 4.0, 0.1, 0.0])
    b = torch.tensor([5.0, 0.0, 0.2, 3.0])
    rows = disagreements(a, b, ["0.0", "0.1", "1.0", "1.1"], k=2)
    found = {r["component"]: r for r in rows}
    assert set(found) == {"0.1", "1.1"}
    assert found["0.1"]["high_in"] == "a" and found["0.1"]["rank_b"] == 4
    assert found["1.1"]["high_in"] == "b" and found["1.1"]["score_b"] == 3.0


@pytest.mark.parametrize("name", ["pearson", "spearman"])
def test_correlation_of_resampled_means_in_blocks_equals_all_at_once(name):
    from attrscope.analysis import agreement as ag

    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(6, 40, generator=gen), torch.randn(6, 40, generator=gen)
    weights = ag.bootstrap_weights(6, 150, 0)
    corr = getattr(ag, name)
    whole = corr((weights @ a.double()) / 6, (weights @ b.double()) / 6)
    blocked = ag._of_resampled_means(corr, a.double(), b.double(), weights, block=11)
    torch.testing.assert_close(blocked, whole, atol=1e-12, rtol=0)
    assert blocked.shape == (150,) and blocked.std() > 0
