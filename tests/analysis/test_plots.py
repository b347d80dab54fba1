"""Figures checked, not trusted: every figure of the ``compare`` report (the interactive plotly
ones and the PNG ones) is built, and its traces and titles are compared with the pairs, results
and directions it claims to show, derived here from the comparison independently of the figure
code."""

import re

import matplotlib.pyplot as plt
import pytest
import torch

from attrscope.analysis import plots
from attrscope.analysis.report import figures


def _pairs(c, kind, direction):
    """(method a, method b) of every agreement of ``kind`` whose two results are both of
    ``direction``, by their labels ``"method direction"``."""
    out = []
    for a in c.agreements:
        (ma, da), (mb, db) = a["a"].split(" "), a["b"].split(" ")
        if a["kind"] == kind and da == db == direction:
            out.append((ma, mb, a))
    return out


def _directions(c):
    return sorted({d for _, d in c.results})


def _subplot_titles(fig) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def test_plotly_figures_show_what_they_claim(comparison_and_log):
    c, _, _ = comparison_and_log
    figs = {div: fig for _, div, fig in plots.report_figures(c)}
    directions = _directions(c)
    assert directions == ["denoising", "noising"]
    for kind in c.kinds:
        heat = figs[f"heatmap-{kind}"]
        expected = {f"{m} {d}" for (m, d), s in c.results.items() if kind in s.kinds}
        assert sorted(t.name for t in heat.data) == sorted(expected)
        assert set(_subplot_titles(heat)) == expected
        for t in heat.data:
            m, d = t.name.split(" ")
            torch.testing.assert_close(torch.tensor(t.z), c.results[(m, d)].mean(kind).float(),
                                       atol=1e-6, rtol=0)
        for d in directions:
            pairs = _pairs(c, kind, d)
            assert len(pairs) == 3, (kind, d)  # ap, atp, ig: three pairs per direction
            fig = figs[f"scatter-{kind}-{d}"]
            assert d in fig.layout.title.text and kind in fig.layout.title.text
            titles = _subplot_titles(fig)
            assert len(titles) == len(pairs)
            points = [t for t in fig.data if t.name != "y = x"]
            assert len(points) == len(pairs) and len(fig.data) == 2 * len(pairs)
            for title, trace, (ma, mb, a) in zip(titles, points, pairs):
                rho = a["correlations"]["spearman_of_means"].value
                assert title == f"{ma} vs {mb}: rho {rho:+.2f}"
                assert trace.name == f"{ma} vs {mb} {d}"
                # the points are this direction's means, not the other direction's
                assert list(trace.x) == pytest.approx(
                    c.results[(ma, d)].mean(kind).flatten().tolist())
                assert list(trace.y) == pytest.approx(
                    c.results[(mb, d)].mean(kind).flatten().tolist())
        analysis = c.latent[kind]
        asym = figs[f"asymmetry-{kind}"]
        assert [t.name for t in asym.data] == list(analysis["asymmetry"])
        for m in analysis["latent"]:
            (trace,) = figs[f"contrast-{kind}-{m}"].data
            assert list(trace.x) == pytest.approx(analysis["asymmetry"][m]["value"].flatten().tolist())
        faith = figs[f"faithfulness-{kind}"]
        curves = [r for (r, kd) in c.faithfulness if kd == kind]
        lines = [t for t in faith.data if t.mode == "lines+markers"]
        assert [t.name.split(" (CPR")[0] for t in lines] == curves
        assert len(faith.data) == 2 * len(curves)  # each with its interval band
        verification = figs[f"verification-{kind}"]
        shown = [r for r in c.verification[kind] if r["source"] != "random"]
        assert len(verification.data) == 2
        assert list(verification.data[1].y) == [f"{r['set']} [{r['source']}]" for r in shown]
    assert len(figs) == len(plots.report_figures(c))  # every div id is unique


def test_png_figures_show_what_they_claim(comparison_and_log):
    c, _, _ = comparison_and_log
    built = {stem: fig for stem, _, fig in figures(c)}
    try:
        for kind in c.kinds:
            for d in _directions(c):
                pairs = _pairs(c, kind, d)
                for stem in (f"scatter_{kind}_{d}", f"bland_altman_{kind}_{d}"):
                    fig = built[stem]
                    axes = [ax for ax in fig.axes if ax.get_title()]
                    assert len(axes) == len(pairs), stem
                    assert f"{kind}, {d}" in fig._suptitle.get_text()
                    for ax, (ma, mb, a) in zip(axes, pairs):
                        assert ax.get_xlabel().startswith(ma) or stem.startswith("bland")
                        if stem.startswith("scatter"):
                            rho = a["correlations"]["spearman_of_means"].value
                            assert re.search(rf"rho={rho:.2g}\b", ax.get_title())
                            assert ax.get_ylabel() == f"{mb} mean score"
                        else:
                            assert ax.get_title().startswith(f"{ma} - {mb}:")
        heat = built["heads_heatmaps"]
        titles = sorted(ax.get_title() for ax in heat.axes if ax.get_title())
        assert titles == sorted(f"{m} {d}" for m, d in c.results)
    finally:
        for fig in built.values():
            plt.close(fig)
