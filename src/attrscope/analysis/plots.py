"""Interactive plotly figures of a :class:`~attrscope.analysis.compare.Comparison`, for the HTML
report (plotly.js is embedded once by the report, so every figure works offline).

- :func:`score_heatmaps`: layer x unit heatmaps of every result; hovering a cell shows the
  component and every result's mean score, 95 % interval over prompts and rank;
- :func:`scatter_figure`: per-component mean scores of each pair of methods, hover names the
  component;
- :func:`asymmetry_figure`: the asymmetry of every method run in both directions with interval
  bars and the threshold lines; :func:`contrast_figure`: patching against IG asymmetry;
- :func:`faithfulness_figure`, :func:`verification_figure`.

Layer axes are integer layers (tick every layer).
"""

from __future__ import annotations

import plotly.colors
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .agreement import abs_ranks, bootstrap_weights, component_labels

UNIT_NAMES = {"heads": "head", "neurons": "neuron"}


def score_intervals(values: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over samples of ``values`` ``[n, C]`` and its percentile bootstrap interval: three
    ``[C]`` tensors (mean, low, high)."""
    x = values.double()
    n = x.shape[0]
    means = bootstrap_weights(n, n_boot, seed) @ x / n  # [B, C]
    tail = (1 - level) / 2
    q = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0)
    return x.mean(0), q[0], q[1]


def figure_div(fig: go.Figure, div_id: str) -> str:
    """``fig`` as an empty HTML div with id ``div_id`` and its JSON beside it, for the report
    page's script to draw (templates/base.html: figures near the screen first, the rest one at
    a time after the page has loaded, so that the page answers at once)."""
    height = fig.layout.height or 450
    spec = fig.to_json().replace("</", "<\\/")  # a "</script>" inside a string stays JSON
    return (f'<div id="{div_id}" class="plot" style="min-height:{height}px"></div>'
            f'<script type="application/json" data-plot="{div_id}">{spec}</script>')


def hover_table(c, kind: str, n_boot: int, seed: int) -> list[str]:
    """Per component (layer-major), an HTML hover text: the component and, for every result, its
    mean score [95 % interval] and rank by |mean| (1 = largest)."""
    c = c.of_kind(kind)
    first = next(iter(c.results.values()))[kind]
    n_layers, n_units = first.shape[1:]
    labels = component_labels(n_layers, n_units)
    lines = [[f"<b>{UNIT_NAMES.get(kind, kind)} {lab}</b>"] for lab in labels]
    for (m, d), s in c.results.items():
        mean, low, high = score_intervals(s[kind].reshape(s[kind].shape[0], -1), n_boot, seed)
        ranks = abs_ranks(mean)
        for i in range(len(labels)):
            lines[i].append(f"{m} {d}: {mean[i]:+.3g} [{low[i]:+.3g}, {high[i]:+.3g}] "
                            f"rank {int(ranks[i])}")
    return ["<br>".join(parts) for parts in lines]


def score_heatmaps(c, kind: str, n_boot: int = 200, seed: int = 0,
                   max_hover_cells: int = 512) -> go.Figure:
    """Layer x unit heatmaps: one row of panels per method, one column per direction, one
    symmetric colour scale per method. Up to ``max_hover_cells`` components, hovering a cell
    shows every result's score, interval and rank; above, the panel's own score."""
    c = c.of_kind(kind)
    methods = list(dict.fromkeys(m for m, _ in c.results))
    directions = list(dict.fromkeys(d for _, d in c.results))
    first = next(iter(c.results.values()))[kind]
    n_layers, n_units = first.shape[1:]
    if n_layers * n_units <= max_hover_cells:
        hover = hover_table(c, kind, n_boot, seed)
        text = [hover[layer * n_units:(layer + 1) * n_units] for layer in range(n_layers)]
        template = "%{text}<extra></extra>"
    else:  # every result's numbers in every cell would make the report tens of MB
        text = None
        template = f"{UNIT_NAMES.get(kind, kind)} %{{y}}.%{{x}}: %{{z:+.3g}}<extra>%{{fullData.name}}</extra>"
    fig = make_subplots(rows=len(methods), cols=len(directions), shared_yaxes=True,
                        subplot_titles=[f"{m} {d}" for m in methods for d in directions],
                        vertical_spacing=0.12 / max(1, len(methods) - 1) if len(methods) > 1 else 0.1)
    for i, m in enumerate(methods):
        peak = max(float(c.results[(m, d)].mean(kind).abs().max()) for d in directions
                   if (m, d) in c.results) or 1.0
        for j, d in enumerate(directions):
            if (m, d) not in c.results:
                continue
            z = c.results[(m, d)].mean(kind).tolist()
            fig.add_trace(go.Heatmap(
                z=z, x=list(range(n_units)), y=list(range(n_layers)), text=text,
                hovertemplate=template, name=f"{m} {d}", colorscale="RdBu", reversescale=True,
                zmin=-peak, zmax=peak, showscale=j == len(directions) - 1,
                colorbar={"len": 0.9 / len(methods), "y": 1 - (i + 0.5) / len(methods),
                          "title": {"text": m}}), row=i + 1, col=j + 1)
            fig.update_yaxes(title_text="layer", tickmode="linear", dtick=1, row=i + 1, col=j + 1)
            last_row = i == len(methods) - 1  # one axis title, under the bottom row
            fig.update_xaxes(title_text=UNIT_NAMES.get(kind, kind) if last_row else None,
                             dtick=1 if n_units <= 32 else None, row=i + 1, col=j + 1)
    fig.update_layout(height=260 * len(methods) + 80, margin={"t": 50, "b": 40},
                      title=f"Mean {kind} scores (hover: every result's score, interval, rank)")
    return fig


def kind_heatmaps(c, kind: str, seed: int) -> go.Figure:
    """:func:`score_heatmaps`, or for position-resolved results the layer x position and
    unit-by-position grids of :func:`attrscope.analysis.position_maps.position_heatmaps`."""
    results = c.of_kind(kind).results
    if not positioned(c, kind):
        return score_heatmaps(c, kind, seed=seed)
    from .position_maps import position_heatmaps

    return position_heatmaps(results, kind)


def direction_pairs(c, kind: str, direction: str) -> list[dict]:
    """The agreements of ``kind`` between two results of ``direction`` (labels ``"m d"``)."""
    return [a for a in c.agreements if a["kind"] == kind
            and a["a"].split()[1] == direction and a["b"].split()[1] == direction]


def scatter_figure(c, kind: str, direction: str) -> go.Figure | None:
    """Mean scores of each pair of methods in ``direction``, hover naming the component (None
    without such a pair)."""
    c = c.of_kind(kind)
    # by the direction word, not a suffix: "denoising" ends with "noising"
    pairs = direction_pairs(c, kind, direction)
    if not pairs:
        return None
    labels = next(iter(c.of_kind(kind).results.values())).labels(kind)
    fig = make_subplots(rows=1, cols=len(pairs), subplot_titles=[
        f"{a['a'].split()[0]} vs {a['b'].split()[0]}: rho "
        f"{a['correlations']['spearman_of_means'].value:+.2f}" for a in pairs])
    for j, a in enumerate(pairs):
        ma, mb = a["a"].split()[0], a["b"].split()[0]
        x = c.results[(ma, direction)].mean(kind).flatten().tolist()
        y = c.results[(mb, direction)].mean(kind).flatten().tolist()
        fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", text=labels, marker={"size": 5},
                                   hovertemplate=f"{UNIT_NAMES.get(kind, kind)} %{{text}}<br>"
                                   f"{ma}: %{{x:.3g}}<br>{mb}: %{{y:.3g}}<extra></extra>",
                                   name=f"{ma} vs {mb} {direction}", showlegend=False),
                      row=1, col=j + 1)
        lim = max(max(map(abs, x)), max(map(abs, y))) or 1.0
        fig.add_trace(go.Scatter(x=[-lim, lim], y=[-lim, lim], mode="lines", hoverinfo="skip",
                                 line={"color": "grey", "dash": "dash", "width": 1},
                                 name="y = x", showlegend=False), row=1, col=j + 1)
        fig.update_xaxes(title_text=f"{ma} mean score", row=1, col=j + 1)
        fig.update_yaxes(title_text=f"{mb} mean score", row=1, col=j + 1)
    fig.update_layout(height=380, title=f"{kind}, {direction}: per-component mean scores")
    return fig


def _top_asymmetric(analysis: dict, n: int) -> list[int]:
    """Indices (layer-major) of the ``n`` components with the largest |asymmetry| of any
    patching method."""
    patching = [m for m in analysis["asymmetry"] if m != analysis["detector"]] or list(analysis["asymmetry"])
    peak = torch.stack([analysis["asymmetry"][m]["value"].flatten().abs() for m in patching]).amax(0)
    return torch.argsort(peak, descending=True, stable=True)[:n].tolist()


def asymmetry_figure(analysis: dict, labels: list[str], n: int = 25) -> go.Figure:
    """Asymmetry of the ``n`` most asymmetric components for every method, with interval bars
    and the +-threshold lines (outside them and with a bar clear of 0: called)."""
    order = _top_asymmetric(analysis, n)
    names = [labels[i] for i in order]
    fig = go.Figure()
    for m, est in analysis["asymmetry"].items():
        value = est["value"].flatten()[order]
        low, high = est["low"].flatten()[order], est["high"].flatten()[order]
        fig.add_trace(go.Scatter(
            x=names, y=value.tolist(), mode="markers", name=m,
            error_y={"type": "data", "symmetric": False, "array": (high - value).tolist(),
                     "arrayminus": (value - low).tolist()},
            customdata=torch.stack([low, high], 1).tolist(),
            hovertemplate=f"{m} %{{x}}: %{{y:+.3f}} [%{{customdata[0]:+.3f}}, "
                          "%{customdata[1]:+.3f}]<extra></extra>"))
    t = analysis["threshold"]
    for y in (t, -t):
        fig.add_hline(y=y, line_dash="dot", line_color="crimson")
    fig.add_hline(y=0, line_color="black", line_width=1)
    fig.update_layout(height=400, title=f"Direction asymmetry of the {len(order)} most asymmetric "
                      f"{analysis['kind']} (< 0 AND-like, > 0 OR-like; dotted: threshold +-{t:g})",
                      xaxis={"type": "category", "title": "component (layer.unit)"},
                      yaxis={"title": "asymmetry (share of the largest mean |score|)"})
    return fig


def contrast_figure(analysis: dict, labels: list[str], method: str) -> go.Figure:
    """The seed's contrast: ``method``'s asymmetry (x) against IG's (y), both with interval
    bars; latent candidates sit far from x = 0 on the line y = 0."""
    est, ig = analysis["asymmetry"][method], analysis["asymmetry"][analysis["detector"]]
    x, y = est["value"].flatten(), ig["value"].flatten()

    def bars(e, v):
        return {"type": "data", "symmetric": False, "array": (e["high"].flatten() - v).tolist(),
                "arrayminus": (v - e["low"].flatten()).tolist(), "thickness": 0.6}

    fig = go.Figure(go.Scatter(
        x=x.tolist(), y=y.tolist(), mode="markers", text=labels, error_x=bars(est, x),
        error_y=bars(ig, y), marker={"size": 5}, name=f"{method} vs ig",
        hovertemplate=f"%{{text}}<br>{method}: %{{x:+.3f}}<br>ig: %{{y:+.3f}}<extra></extra>"))
    t = analysis["threshold"]
    for v in (t, -t):
        fig.add_vline(x=v, line_dash="dot", line_color="crimson")
    fig.update_layout(height=420, title=f"{analysis['kind']}: {method} asymmetry against ig "
                      "asymmetry (latent: beyond a dotted line, ig interval containing 0)",
                      xaxis={"title": f"{method} asymmetry"}, yaxis={"title": "ig asymmetry"})
    return fig


def faithfulness_figure(c, kind: str) -> go.Figure:
    c = c.of_kind(kind)
    return faithfulness_curves({result: curve for (result, kd), curve in c.faithfulness.items()
                                if kd == kind}, kept_name(c, kind))


def positioned(c, kind: str) -> bool:
    """Whether ``c``'s results of ``kind`` have a position axis (``positions`` other than all).
    Edges by position are shown as edge x position heatmaps; over all positions, edges have
    their circuits' faithfulness only (too many for a heatmap)."""
    results = c.of_kind(kind).results
    return bool(results) and next(iter(results.values())).position_labels is not None


def kept_name(c, kind: str) -> str:
    """What a circuit of ``kind`` keeps: (edge, position) pairs for edges by position."""
    from ..scores import EDGES

    return "(edge, position) pairs" if kind == EDGES and positioned(c, kind) else kind


def faithfulness_curves(curves: dict[str, dict], kind: str) -> go.Figure:
    """Faithfulness f against the fraction of ``kind`` kept, one line per named curve (a dict
    with fractions, sizes, f and cpr, as :func:`~attrscope.analysis.verify.faithfulness_curve`
    and :meth:`~attrscope.edges.circuit.CircuitEvaluator.curve` return)."""
    fig = go.Figure()
    colours = plotly.colors.qualitative.Plotly
    for i, (result, curve) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        x = list(curve["fractions"])
        has_band = "f_low" in curve  # curves saved before intervals existed have none
        if has_band:
            fig.add_trace(go.Scatter(
                x=x + x[::-1], y=list(curve["f_high"]) + list(curve["f_low"])[::-1],
                fill="toself", fillcolor=colour, opacity=0.22, line={"width": 0},
                hoverinfo="skip", showlegend=False, legendgroup=result,
                name=f"{result} (95 % band)"))
        interval = (f" [{curve['cpr_low']:.3f}, {curve['cpr_high']:.3f}]" if has_band else "")
        fig.add_trace(go.Scatter(
            x=x, y=curve["f"], mode="lines+markers", legendgroup=result, line={"color": colour},
            customdata=[[size, lo, hi] for size, lo, hi in zip(
                curve["sizes"], curve.get("f_low", curve["f"]), curve.get("f_high", curve["f"]))],
            name=f"{result} (CPR {curve['cpr']:.3f}{interval})",
            hovertemplate=f"{result}<br>%{{customdata[0]}} kept (%{{x:.1%}}): f = %{{y:.3f}}"
                          + (" [%{customdata[1]:.3f}, %{customdata[2]:.3f}]" if has_band else "")
                          + "<extra></extra>"))
    fig.add_hline(y=1, line_dash="dash", line_color="grey")
    fig.update_layout(height=380, title=f"Faithfulness of {kind} circuits (bands: 95 % "
                      "bootstrap intervals over prompts)",
                      xaxis={"type": "log", "title": f"fraction of {kind} kept"},
                      yaxis={"title": "faithfulness f"})
    return fig


def verification_figure(rows: list[dict], kind: str) -> go.Figure:
    """Each ablated set's mean metric change with its interval over prompts; grey: the middle
    95 % of same-size random sets."""
    sets = [r for r in rows if r["source"] != "random"]
    names = [f"{r['set']} [{r['source']}]" for r in sets]
    nulls = {r["size"]: r for r in rows if r["source"] == "random"}
    value = [r["metric_change"] for r in sets]
    fig = go.Figure()
    fig.add_trace(go.Bar(
        y=names, x=[nulls[r["size"]]["ci_high"] - nulls[r["size"]]["ci_low"] for r in sets],
        base=[nulls[r["size"]]["ci_low"] for r in sets], orientation="h", name="random sets "
        "(middle 95 %)", marker_color="rgba(150,150,150,0.45)", hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        y=names, x=value, mode="markers", name="ablated set", marker={"color": "#3b6ea8"},
        error_x={"type": "data", "symmetric": False,
                 "array": [r["ci_high"] - r["metric_change"] for r in sets],
                 "arrayminus": [r["metric_change"] - r["ci_low"] for r in sets]},
        text=[r["verdict"] for r in sets],
        hovertemplate="%{y}: %{x:+.3g}<br>%{text}<extra></extra>"))
    fig.update_layout(height=28 * len(sets) + 140, barmode="overlay",
                      title=f"Verification of {kind} by ablation (clean run)",
                      xaxis={"title": "mean metric change when ablated"},
                      yaxis={"autorange": "reversed", "type": "category"},
                      margin={"l": 260})
    return fig



def report_figures(c) -> list[tuple[str, str, go.Figure]]:
    """Every interactive figure of the ``compare`` report, in page order: (section, div id,
    figure). Sections: scores, agreement, asymmetry, verification, faithfulness."""
    from ..components import KINDS

    directions = list(dict.fromkeys(d for _, d in c.results))
    seed = c.settings.get("seed", 0)
    out = [("scores", f"heatmap-{kind}", kind_heatmaps(c, kind, seed))
           for kind in c.kinds if kind in KINDS or positioned(c, kind)]
    for kind in c.kinds:
        for d in directions:
            fig = scatter_figure(c, kind, d)
            if fig is not None:
                out.append(("agreement", f"scatter-{kind}-{d}", fig))
    for kind, analysis in c.latent.items():
        labels = next(iter(c.of_kind(kind).results.values())).labels(kind)
        out.append(("asymmetry", f"asymmetry-{kind}", asymmetry_figure(analysis, labels)))
        if analysis["detector"]:
            out += [("asymmetry", f"contrast-{kind}-{m}", contrast_figure(analysis, labels, m))
                    for m in analysis["latent"]]
    out += [("verification", f"verification-{kind}", verification_figure(rows, kind))
            for kind, rows in c.verification.items()]
    out += [("faithfulness", f"faithfulness-{kind}", faithfulness_figure(c, kind))
            for kind in c.kinds if any(kd == kind for _, kd in c.faithfulness)]
    return out
