"""Direction asymmetry, latent AND/OR sets, and the AND/OR toy experiment."""

import pytest
import torch

from attrscope.analysis.latent import asymmetry, asymmetry_values, latent_components
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


def test_latent_sets_split_by_sign_and_differ():
    den = torch.tensor([[[0.1, 3.0, 0.0, 2.5]]])
    noi = torch.tensor([[[-3.0, -0.2, 0.0, -0.1]]])
    sets = latent_components(*_pair(den, noi), "heads", k=4)
    and_set = {e["component"] for e in sets["and"]}
    or_set = {e["component"] for e in sets["or"]}
    assert and_set == {"0.0"} and or_set == {"0.1", "0.3"}  # 0.2 has asymmetry 0: neither
    assert not and_set & or_set


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
