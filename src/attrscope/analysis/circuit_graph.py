"""The interactive circuit graph of an edge circuit (plotly, for the ``attrscope edges`` report).

Nodes sit where :func:`attrscope.edges.circuit.node_positions` puts them (the static PNG's
layout): input at the bottom, each layer's heads in a row above it and its MLP in a column at
the right, the logits on top. Every edge is a directed curve from its source to its destination
node, ending in an arrowhead:

- its *colour and dash* name the destination input: query (blue, solid), key (orange, dashed),
  value (green, dotted), MLP or logits (grey, solid); the legend toggles each input;
- its *width* grows with |mean score|;
- a diamond at its middle is coloured by the signed mean score (colour bar) and, hovered, shows
  the edge's name, mean score with its 95 % interval over prompts, and its rank.

Edges bend by an amount that depends on the input (q least, v most), so that the q, k and v
edges between the same two nodes, and long edges passing a node of the same column, stay
apart. Hovering a node lists its edges in and out of the circuit.
"""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go
import torch

from ..edges.circuit import Circuit, node_positions
from ..edges.graph import colon_label
from .agreement import abs_ranks
from .plots import figure_div

# destination input -> (colour, dash, legend name, bend as a share of the edge's length)
INPUT_STYLES = {"q": ("#1f5fa8", "solid", "into a query (q)", 0.08),
                "k": ("#e07b00", "dash", "into a key (k)", 0.16),
                "v": ("#2c9a3a", "dot", "into a value (v)", 0.24),
                None: ("#6b6b6b", "solid", "into an MLP or the logits", 0.10)}
WIDTH_PX, ROW_PX, NODE_RADIUS_PX = 1000, 46, 15


def _canvas(graph) -> tuple[float, float, float, float]:
    """Pixels per data unit along x and y, and the x and y ranges' lower ends."""
    x_low, x_high = -1.0, graph.n_heads + 1.5
    return (WIDTH_PX / (x_high - x_low), ROW_PX, x_low, -0.7)


def figure_height(graph) -> int:
    _, _, _, y_low = _canvas(graph)
    return int(ROW_PX * (2.0 * graph.n_layers + 1.7 - y_low)) + 90


def edge_curve(start: tuple[float, float], end: tuple[float, float], bend: float, scale: tuple[
        float, float], points: int = 14) -> tuple[list[float], list[float], tuple[float, float]]:
    """A quadratic Bezier from ``start`` to just before ``end`` (the arrowhead stops at the
    node's rim), bent sideways by ``bend`` x its length on screen; returns its x and y points
    and its middle point. ``scale``: pixels per data unit along x and y."""
    sx, sy = scale
    (x0, y0), (x1, y1) = (start[0] * sx, start[1] * sy), (end[0] * sx, end[1] * sy)
    length = math.hypot(x1 - x0, y1 - y0) or 1.0
    nx, ny = -(y1 - y0) / length, (x1 - x0) / length  # unit normal on screen
    cx, cy = (x0 + x1) / 2 + nx * bend * length, (y0 + y1) / 2 + ny * bend * length
    stop = max(0.5, 1 - NODE_RADIUS_PX / length)  # the Bezier's parameter where it meets the rim
    ts = [stop * i / (points - 1) for i in range(points)]

    def at(t: float) -> tuple[float, float]:
        a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t ** 2
        return (a * x0 + b * cx + c * x1) / sx, (a * y0 + b * cy + c * y1) / sy

    xs, ys = zip(*(at(t) for t in ts))
    return list(xs), list(ys), at(0.5)


def _edge_stats(mean: torch.Tensor, rank: torch.Tensor, per_sample: torch.Tensor | None,
                edges: list[int]) -> dict:
    """Per edge of ``edges``: its mean score ``mean[e]``, its ``rank[e]`` and its 95 % interval
    over prompts (None without ``per_sample`` ``[n, n_edges]``)."""
    from .plots import score_intervals

    low = high = None
    if per_sample is not None and edges:  # only the drawn edges: a whole graph's would be GBs
        _, low, high = score_intervals(per_sample[:, edges])
    return {e: {"score": float(mean[e]), "rank": int(rank[e]),
                "low": None if low is None else float(low[i]),
                "high": None if high is None else float(high[i])} for i, e in enumerate(edges)}


def _node_hover(circuit: Circuit, shown: list[int]) -> dict[str, str]:
    g = circuit.graph
    into: dict[str, list[str]] = {}
    out: dict[str, list[str]] = {}
    for e in shown:
        source = g.source_names[int(g.source_index[e])]
        dest, which = g.dest_names[int(g.dest_index[e])]
        name = colon_label(g.labels[e])
        out.setdefault(source, []).append(name)
        into.setdefault(dest, []).append(name)
    hover = {}
    for node in set(into) | set(out):
        lines = [f"<b>{html.escape(node)}</b>"]
        for title, edges in (("in", into.get(node, [])), ("out", out.get(node, []))):
            if edges:
                lines.append(f"{len(edges)} edge(s) {title}: " + ", ".join(edges[:6])
                             + (" ..." if len(edges) > 6 else ""))
        hover[node] = "<br>".join(lines)
    return hover


def _grouped_inputs(fig: go.Figure, circuit: Circuit, shown: list[int], pos: dict) -> None:
    """Grouped-query attention: a key/value input read by a group of heads is a small square
    (``l.kv{g}``), joined by thin grey lines to the heads of its group in the circuit."""
    g = circuit.graph
    shared = sorted({int(g.dest_index[e]) for e in shown
                     if len(g.dest_heads(int(g.dest_index[e]))) > 1})
    nodes = set(circuit.nodes())
    xs, ys, names = [], [], []
    for dest in shared:
        name = g.dest_names[dest][0]
        for head in g.dest_heads(dest):
            if g.source_names[head] in nodes:
                xs += [pos[name][0], pos[g.source_names[head]][0], None]
                ys += [pos[name][1], pos[g.source_names[head]][1], None]
        names.append(name)
    if not names:
        return
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "#999999", "width": 1},
                             hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in names], y=[pos[n][1] for n in names], mode="markers", text=names,
        marker={"symbol": "square", "size": 12, "color": "white", "line": {"color": "#777777"}},
        hovertemplate="%{text}: a key/value input shared by its group's heads<extra></extra>",
        name="shared key/value inputs"))


def circuit_figure(circuit: Circuit, per_sample: torch.Tensor | None = None,
                   max_edges: int = 300, div_id: str = "circuit-graph") -> str:
    """:func:`circuit_plot` as an HTML div (plotly.js not included)."""
    return figure_div(circuit_plot(circuit, per_sample, max_edges), div_id)


def circuit_plot(circuit: Circuit, per_sample: torch.Tensor | None = None,
                 max_edges: int = 300) -> go.Figure:
    """The interactive graph of ``circuit``'s kept edges (at most ``max_edges``, the largest
    |score| first): one arrow trace per edge, largest |score| first, then the trace
    ``"edge score (hover)"`` of their middle points. per_sample: ``[n, n_edges]`` scores per
    prompt, for the intervals in the hover (optional)."""
    g = circuit.graph
    pos = node_positions(g)
    sx, sy, x_low, y_low = _canvas(g)
    mean = circuit.scores if circuit.scores is not None else torch.ones(g.n_edges)
    rank = abs_ranks(mean.nan_to_num())
    shown = sorted(circuit.edges, key=lambda e: int(rank[e]))[:max_edges]
    stats = _edge_stats(mean, rank, per_sample, shown)
    biggest = max((abs(stats[e]["score"]) for e in shown), default=0.0) or 1.0
    fig = go.Figure()
    # the other nodes, faint, so that the layout by layer reads even for a small circuit
    inside = set(circuit.nodes()) | {g.dest_names[int(g.dest_index[e])][0] for e in shown}
    outside = [name for name in pos if name not in inside]
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in outside], y=[pos[n][1] for n in outside], mode="markers",
        marker={"size": 9, "color": "#eeeeee", "line": {"color": "#cccccc", "width": 1}},
        text=outside, hovertemplate="%{text} (not in the circuit)<extra></extra>",
        name="nodes outside the circuit"))
    legend_done: set = set()
    mid_x, mid_y, mid_score, mid_text = [], [], [], []
    for e in shown:
        source = g.source_names[int(g.source_index[e])]
        dest, which = g.dest_names[int(g.dest_index[e])]
        colour, dash, legend, bend = INPUT_STYLES[which]
        xs, ys, middle = edge_curve(pos[source], pos[dest], bend, (sx, sy))
        s = stats[e]
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers", legendgroup=legend, name=legend,
            showlegend=legend not in legend_done, hoverinfo="skip",
            legendrank=100 + list(INPUT_STYLES).index(which),  # q, k, v, other in the legend
            line={"color": colour, "dash": dash, "width": 1 + 5 * abs(s["score"]) / biggest},
            marker={"symbol": "arrow", "angleref": "previous", "color": colour,
                    "size": [0] * (len(xs) - 1) + [9 + 5 * abs(s["score"]) / biggest]}))
        legend_done.add(legend)
        mid_x.append(middle[0])
        mid_y.append(middle[1])
        mid_score.append(s["score"])
        interval = "" if s["low"] is None else f" [{s['low']:+.4g}, {s['high']:+.4g}]"
        mid_text.append(f"<b>{html.escape(colon_label(g.labels[e]))}</b><br>mean score "
                        f"{s['score']:+.4g}{interval}<br>rank {s['rank']} of {g.n_edges} by "
                        f"|mean score|")
    fig.add_trace(go.Scatter(
        x=mid_x, y=mid_y, mode="markers", text=mid_text, name="edge score (hover)",
        hovertemplate="%{text}<extra></extra>",
        marker={"symbol": "diamond", "size": 9, "color": mid_score, "colorscale": "RdBu",
                "reversescale": True, "cmin": -biggest, "cmax": biggest,
                "line": {"color": "#333333", "width": 0.5},
                "colorbar": {"title": {"text": "mean score"}, "len": 0.6}}))
    _grouped_inputs(fig, circuit, shown, pos)
    nodes = [n for n in circuit.nodes() if n in pos]
    hover = _node_hover(circuit, shown)
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers+text",
        text=[{"input": "in", "logits": "out"}.get(n, n.replace("mlp ", "m")) for n in nodes],
        hovertext=[hover.get(n, n) for n in nodes], hovertemplate="%{hovertext}<extra></extra>",
        textfont={"size": 10}, name="nodes of the circuit",
        marker={"size": 2 * NODE_RADIUS_PX + 2, "color": "white",
                "line": {"color": "black", "width": 1.5}}))
    ticks = [0.0] + [2.0 * layer + 1 for layer in range(g.n_layers)] + [2.0 * g.n_layers + 1]
    labels = ["input"] + [f"layer {layer}" for layer in range(g.n_layers)] + ["logits"]
    fig.update_layout(
        height=figure_height(g), margin={"l": 70, "r": 20, "t": 60, "b": 30},
        title=f"Circuit ({html.escape(circuit.rule)}): {len(shown)} of {len(circuit.edges)} edges "
              "shown; width ~ |score|, hover a diamond for the edge",
        plot_bgcolor="white", hovermode="closest",
        legend={"orientation": "h", "y": -0.02, "yanchor": "top"},
        xaxis={"range": [x_low, g.n_heads + 1.5], "showgrid": False, "zeroline": False,
               "tickvals": list(range(g.n_heads)) + [g.n_heads + 0.3],
               "ticktext": [f"h{h}" for h in range(g.n_heads)] + ["MLP"], "side": "top"},
        yaxis={"range": [y_low, 2.0 * g.n_layers + 1.7], "tickvals": ticks, "ticktext": labels,
               "showgrid": True, "gridcolor": "#f2f2f2", "zeroline": False})
    return fig
