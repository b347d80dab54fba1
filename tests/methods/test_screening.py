"""Screened exact patching (``ap`` with ``screen``): the verified units against plain exact
patching and the one-unit-per-forward oracle, the audit's false-negative interval against the
truth on the embedded model (where every unit can be patched exactly) and against scipy's
hypergeometric distribution."""

import pytest
import torch
from scipy.stats import hypergeom

import attrscope
from attrscope import HEADS, NEURONS
from attrscope.methods.screening import (audit_summary, choose_units, false_negative_interval)
from oracles import patch_one_unit_per_forward

TOL = 1e-4


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_per_layer_units_match_the_oracle(random_model, random_task, direction):
    chosen = {"neurons": {0: [95, 3], 2: [40]}, "heads": {1: [2]}}
    scores = attrscope.attribute(random_model, random_task, "ap", direction, units=chosen,
                                 show_progress=False, max_batch_rows=5)
    assert scores.meta["settings"]["units"] == {"neurons": {0: [3, 95], 2: [40]}, "heads": {1: [2]}}
    for kind, spec in (("neurons", NEURONS), ("heads", HEADS)):
        values = scores[kind]
        for layer in range(random_model.cfg.n_layers):
            units = sorted(chosen[kind].get(layer, []))
            others = [u for u in range(values.shape[2]) if u not in units]
            assert torch.isnan(values[:, layer, others]).all()
            if units:
                reference = patch_one_unit_per_forward(random_model, random_task, direction, spec,
                                                       layer, units)
                torch.testing.assert_close(values[:, layer, units], reference, atol=TOL, rtol=0)


@pytest.mark.parametrize("units, message", [
    ({"neurons": {3: [1]}}, r"3 is not a layer of this model"),
    ({"neurons": {0: [96]}}, r"units\['neurons'\]\[0\]: neuron index 96 is out of range"),
    ({"neurons": {0: []}}, r"names no unit"),
])
def test_bad_per_layer_units_are_refused(random_model, random_task, units, message):
    with pytest.raises(ValueError, match=message):
        attrscope.attribute(random_model, random_task, "ap", "noising", units=units,
                            show_progress=False)


@pytest.mark.parametrize("settings, message", [
    ({"screen": "eap"}, r"screen='eap': choose one of atp, atpstar, ig"),
    ({"screen": "atp", "screen_top_k": 0}, r"screen_top_k=0: give a whole number >= 1"),
    ({"screen": "atp", "screen_audit": -1}, r"screen_audit=-1"),
    ({"screen": "atp", "units": {"heads": [1]}}, r"cannot be combined"),
])
def test_bad_screen_settings_are_refused(random_model, random_task, settings, message):
    with pytest.raises(ValueError, match=message):
        attrscope.attribute(random_model, random_task, "ap", "noising", show_progress=False,
                            **settings)


@pytest.mark.parametrize("screen", ["atp", "ig"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_verified_units_equal_plain_exact_patching(random_model, random_task, direction, screen):
    """Exact where verified (to 1e-4 of plain ``ap``), NaN elsewhere, the screened top = the
    top-K of the screen method run on its own, and the screen's scores kept as extras."""
    top_k, n_audit = 7, 9
    screened = attrscope.attribute(random_model, random_task, "ap", direction, screen=screen,
                                   screen_top_k=top_k, screen_audit=n_audit, show_progress=False)
    plain = attrscope.attribute(random_model, random_task, "ap", direction, show_progress=False)
    cheap = attrscope.attribute(random_model, random_task, screen, direction, show_progress=False)
    info = screened.meta["screening"]
    assert info["screen"] == screen and info["top_k"] == top_k
    for kind in ("heads", "neurons"):
        mark = screened.extras[f"exact.{kind}"]
        verified = mark > 0
        values = screened[kind]
        assert torch.isnan(values[:, ~verified]).all()
        torch.testing.assert_close(values[:, verified], plain[kind][:, verified], atol=TOL, rtol=0)
        ranking = cheap[kind].mean(0).abs().flatten()
        expected_top = torch.argsort(ranking, descending=True, stable=True)[:top_k]
        assert set(torch.nonzero(mark.flatten() == 1).flatten().tolist()) == set(expected_top.tolist())
        assert int((mark == 2).sum()) == min(n_audit, mark.numel() - top_k)
        torch.testing.assert_close(screened.extras[f"screen.{kind}"], cheap[kind].float(),
                                   atol=TOL, rtol=0)
        summary = info["kinds"][kind]
        assert summary["exact"] == int(verified.sum())
        assert summary["unverified"] == int((~verified).sum())
    assert info["kinds"]["neurons"]["unverified"] > 0  # the test exercises the NaN marking


def test_screen_larger_than_the_model_is_plain_exact_patching(random_model, random_task):
    screened = attrscope.attribute(random_model, random_task, "ap", "denoising", "heads",
                                   screen="atp", screen_top_k=5, screen_audit=100,
                                   show_progress=False)
    plain = attrscope.attribute(random_model, random_task, "ap", "denoising", "heads",
                                show_progress=False)
    torch.testing.assert_close(screened["heads"], plain["heads"], atol=TOL, rtol=0)
    fn = screened.meta["screening"]["kinds"]["heads"]["false_negatives"]
    assert (fn["estimate"], fn["low"], fn["high"]) == (0.0, 0, 0)


@pytest.mark.parametrize("above, draws, population", [
    (0, 50, 2000), (1, 70, 2000), (3, 100, 500), (10, 40, 60), (0, 5, 10), (5, 5, 10)])
def test_false_negative_interval_inverts_the_hypergeometric_tails(above, draws, population):
    """The interval of D = F + above is exactly the set the two 2.5 % tails do not reject
    (scipy's hypergeometric distribution as the oracle)."""
    estimate, low, high = false_negative_interval(above, draws, population, 0.95)
    assert estimate == pytest.approx(above * (population - draws) / draws)

    def p_at_most(d):  # P(X <= above | D = d)
        return hypergeom.cdf(above, population, d, draws)

    def p_at_least(d):
        return hypergeom.sf(above - 1, population, d, draws)

    d_low, d_high = low + above, high + above
    assert p_at_least(d_low) >= 0.025 and p_at_most(d_high) >= 0.025
    assert d_low == above or p_at_least(d_low - 1) < 0.025
    assert d_high == above + population - draws or p_at_most(d_high + 1) < 0.025


@pytest.fixture(scope="module")
def embedded_exact_and_atp(embedded_model, embedded_task):
    exact = attrscope.attribute(embedded_model, embedded_task, "ap", "denoising", "neurons",
                                show_progress=False)["neurons"].mean(0).flatten()
    cheap = attrscope.attribute(embedded_model, embedded_task, "atp", "denoising", "neurons",
                                show_progress=False)["neurons"].mean(0).abs().flatten()
    return exact, cheap


@pytest.mark.parametrize("screen, top_k", [("atp", 20), ("atp", 60), ("random", 20)])
def test_false_negative_interval_covers_the_truth_on_the_embedded_model(
        embedded_model, embedded_exact_and_atp, screen, top_k):
    """Every neuron of the embedded model patched exactly gives the true number of unverified
    neurons above the threshold; over 20 audit seeds the 95 % interval must cover it (an exact
    interval covers at least 95 % of the time; 16 of 20 allows for chance). A random ranking
    stands for a poor screen that misses many."""
    exact, cheap = embedded_exact_and_atp
    if screen == "random":
        cheap = torch.rand(cheap.numel(), generator=torch.Generator().manual_seed(7))
    n_audit = 300
    covered, truths = 0, []
    for seed in range(20):
        top, audit = choose_units(cheap, top_k, n_audit, seed)
        mark = torch.zeros(exact.numel(), dtype=torch.uint8)
        mark[top], mark[audit] = 1, 2
        seen = torch.where(mark > 0, exact, torch.full_like(exact, float("nan")))
        summary = audit_summary(seen, mark, top_k, NEURONS, embedded_model.cfg.d_mlp)
        truth = int((exact.abs()[mark == 0] > summary["threshold"]).sum())
        fn = summary["false_negatives"]
        covered += fn["low"] <= truth <= fn["high"]
        truths.append(truth)
    assert max(truths) > 0  # the screen misses some: the interval is tested on real misses
    assert covered >= 16, (covered, truths)


@pytest.mark.parametrize("screen", ["atp", "ig"])
@pytest.mark.parametrize("kinds, positions", [
    (["resid_pre", "heads", "q"], ["S2", "END"]),
    (["attn_out", "neurons"], "each"),
    (["mlp_out", "v"], "all"),
])
def test_screened_cells_on_every_site_and_position_equal_plain_ap(embedded_model, kinds,
                                                                   positions, screen):
    """With sites and positions the screen ranks (unit, position) cells: exactly the top-K and
    the audit cells are patched, each equal (1e-4) to plain ap without screening at that
    (unit, position); every other cell is NaN; the top-K is the screen method's own top-K
    at the same positions, run on its own."""
    from oracles import one_length_task

    task = (one_length_task(embedded_model, n=3) if positions == "each"
            else attrscope.load_task("ioi", embedded_model, n=4, seed=2))
    top_k, n_audit = 6, 5
    direction = "noising" if screen == "ig" else "denoising"
    screened = attrscope.attribute(embedded_model, task, "ap", direction, kinds,
                                   positions=positions, screen=screen, screen_top_k=top_k,
                                   screen_audit=n_audit, show_progress=False)
    plain = attrscope.attribute(embedded_model, task, "ap", direction, kinds, positions=positions,
                                show_progress=False)
    cheap = attrscope.attribute(embedded_model, task, screen, direction, kinds,
                                positions=positions, show_progress=False)
    info = screened.meta["screening"]
    for kind in kinds:
        mark = screened.extras[f"exact.{kind}"]
        assert mark.shape == plain[kind].shape[1:]  # [layers, units(, positions)]
        verified = mark > 0
        assert int(verified.sum()) == min(top_k + n_audit, mark.numel())
        assert torch.isnan(screened[kind][:, ~verified]).all()
        torch.testing.assert_close(screened[kind][:, verified], plain[kind][:, verified],
                                   atol=TOL, rtol=0)
        ranking = cheap[kind].float().mean(0).abs().flatten()
        expected_top = torch.argsort(ranking, descending=True, stable=True)[:top_k]
        assert set(torch.nonzero(mark.flatten() == 1).flatten().tolist()) == set(expected_top.tolist())
        labels = plain.labels(kind)
        assert info["kinds"][kind]["screened_top"] == \
            [labels[i] for i in sorted(expected_top.tolist())]
    assert screened.meta["positions"]["labels"] == plain.meta["positions"]["labels"] \
        if positions != "all" else "positions" not in screened.meta


def test_atpstar_cannot_screen_positions(embedded_model, embedded_task):
    with pytest.raises(ValueError, match=r"^screen=atpstar cannot rank positions"):
        attrscope.attribute(embedded_model, embedded_task, "ap", "denoising", "heads",
                            positions=["S2"], screen="atpstar", show_progress=False)
