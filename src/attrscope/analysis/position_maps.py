"""The page of a position-resolved result (``positions="each"`` or named positions): for each
site a layer x position heatmap (sites with one unit per layer: ``resid_pre``, ``attn_out``,
``mlp_out``) or a unit-by-position grid, one row per ``L.U`` (heads, q, k, v; for neurons and
edges the rows with the largest scores), the named positions (or token indices) and the first
prompt's tokens on the position axis. Hovering a cell shows the component, the position and its
token, the mean score and its 95 % interval over the prompts; every cell is also in a table
(sort, filter, CSV).

Rendered from ``templates/positions.html`` (:mod:`attrscope.analysis.pages`); the page needs no
script of its own and no plotly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..components import KINDS
from ..files import write_bytes
from ..scores import EDGES
from .pages import render, table

MAX_ROWS = 48  # rows of a unit-by-position grid (the largest by |mean score| when there are more)


def colour(value: float, peak: float) -> str:
    """Red for positive, blue for negative, white at 0, on a scale symmetric about 0."""
    if not math.isfinite(value) or peak <= 0:
        return "#eeeeee"
    t = max(-1.0, min(1.0, value / peak))
    fade = int(255 * (1 - abs(t)))
    return f"rgb(255,{fade},{fade})" if t >= 0 else f"rgb({fade},{fade},255)"


def interval(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and half-width of the normal 95 % interval over the samples (axis 0), NaN-aware."""
    mean = values.nanmean(0)
    count = (~values.isnan()).sum(0).clamp(min=1)
    centred = torch.where(values.isnan(), torch.zeros_like(values), values - mean)
    var = centred.pow(2).sum(0) / (count - 1).clamp(min=1)
    return mean, 1.96 * (var / count).sqrt()


def kind_rows(scores, kind: str) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(label, mean [P], half-width [P])`` per component of ``kind``: every layer of a
    per-layer site, else every ``L.U`` or edge (the MAX_ROWS largest by max |mean| when more)."""
    mean, half = interval(scores[kind].float())  # [layers, units, P], edges [n_edges, P]
    if kind == EDGES:
        rows = [(label, mean[e], half[e]) for e, label in enumerate(scores.graph.labels)]
    else:
        spec = KINDS[kind]
        rows = [(spec.unit_label(layer, unit), mean[layer, unit], half[layer, unit])
                for layer in range(mean.shape[0]) for unit in range(mean.shape[1])]
    if len(rows) > MAX_ROWS:
        keep = sorted(range(len(rows)), key=lambda i: -float(rows[i][1].nan_to_num().abs().max()))
        rows = [rows[i] for i in sorted(keep[:MAX_ROWS])]
    return rows


def section(scores, kind: str, positions: list[str], tokens: list[str]) -> dict:
    """One site's grid: rows of (label, cells of (colour, hover text)) and its table."""
    rows = kind_rows(scores, kind)
    unit = "edge" if kind == EDGES else KINDS[kind].unit
    per_layer = kind != EDGES and KINDS[kind].per_layer
    total = scores[kind][0, ..., 0].numel()  # components: every axis but samples and positions
    what = "layer x position" if per_layer else f"{unit} x position" + (
        f" (the {MAX_ROWS} largest of {total})" if total > MAX_ROWS else "")
    peak = max((float(m.nan_to_num().abs().max()) for _, m, _ in rows), default=0.0)
    grid, cells_table = [], []
    for label, mean, half in rows:
        cells = []
        for j, (position, tok) in enumerate(zip(positions, tokens)):
            value, width = float(mean[j]), float(half[j])
            cells.append((colour(value, peak),
                          f"{kind} {label} at position {position} (token {tok!r} in the first "
                          f"prompt): mean score {value:+.4g} ± {width:.2g} (95 % interval)"))
            cells_table.append({"component": label, "position": position, "token": tok,
                                "mean": value, "±95%": width})
        grid.append((label, cells))
    return {"kind": kind, "what": what, "unit": unit, "rows": grid, "peak": peak,
            "table": table(cells_table, name=f"{kind}-by-position")}


def position_page(scores) -> str:
    """The HTML page of a position-resolved :class:`~attrscope.scores.Scores`."""
    meta = scores.meta
    positions = [str(p) for p in scores.position_labels]
    tokens = list(meta["positions"].get("sample_tokens") or [""] * len(positions))
    task = meta.get("task", {})
    task_name = task.get("name", "?") if isinstance(task, dict) else str(task)
    title = (f"{scores.method} ({scores.direction}) by position: {meta.get('model', '?')}, "
             f"task {task_name}")
    return render("positions.html", title=title, sign=str(meta.get("sign_convention", "")),
                  metric=str(meta.get("metric", "")), setting=str(meta["positions"]["setting"]),
                  positions=list(zip(positions, tokens)),
                  sections=[section(scores, kind, positions, tokens) for kind in scores.kinds])


def position_heatmaps(results: dict, kind: str):
    """A plotly figure for ``compare``'s report: one panel per ``(method, direction)`` result of
    ``results`` (position-resolved :class:`~attrscope.scores.Scores`), rows as in
    :func:`kind_rows` (every layer of a one-unit site: layer x position; every ``L.U`` of
    heads, q, k, v; the largest of neurons and of edges: edge x position), columns the named
    positions (or token indices) with the first prompt's tokens. Hover: the component, the
    position and its token, the mean score and its 95 % interval; one symmetric colour scale
    per panel."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    first = next(iter(results.values()))
    positions = [str(p) for p in first.position_labels]
    tokens = list(first.meta["positions"].get("sample_tokens") or [""] * len(positions))
    x = [f"{p}<br>{tok!r}" for p, tok in zip(positions, tokens)]
    panels = {key: kind_rows(s, kind) for key, s in results.items()}
    heights = [max(len(rows), 2) for rows in panels.values()]
    fig = make_subplots(rows=len(panels), cols=1, row_heights=heights,
                        subplot_titles=[f"{m} {d}" for m, d in panels],
                        vertical_spacing=min(0.3 / len(panels), 0.08))
    for i, ((m, d), rows) in enumerate(panels.items()):
        peak = max((float(mean.nan_to_num().abs().max()) for _, mean, _ in rows), default=0) or 1.0
        text = [[f"{kind} {label} at position {p} (token {tok!r} in the first prompt): mean "
                 f"score {float(mean[j]):+.4g} ± {float(half[j]):.2g} (95 % interval)"
                 for j, (p, tok) in enumerate(zip(positions, tokens))]
                for label, mean, half in rows]
        fig.add_trace(go.Heatmap(
            z=[[float(v) for v in mean] for _, mean, _ in rows], x=x,
            y=[label for label, _, _ in rows], text=text, name=f"{m} {d}",
            hovertemplate="%{text}<extra>%{fullData.name}</extra>", colorscale="RdBu",
            reversescale=True, zmin=-peak, zmax=peak, showscale=False), row=i + 1, col=1)
        fig.update_yaxes(type="category", autorange="reversed", row=i + 1, col=1,
                         title_text=row_title(kind))
    fig.update_xaxes(type="category")
    fig.update_layout(height=int(18 * sum(heights) + 110 * len(panels) + 60),
                      margin={"t": 60, "b": 40},
                      title=f"Mean {kind} scores by position (hover: component, token, score, "
                            "95 % interval; red positive, blue negative)")
    return fig


def row_title(kind: str) -> str:
    """What a row of ``kind``'s position grid is: a layer, a unit or an edge."""
    if kind == EDGES:
        return "edge"
    return "layer" if KINDS[kind].per_layer else KINDS[kind].unit


def write_position_page(scores, path) -> Path:
    """Write :func:`position_page` to ``path`` atomically (the one atomic writer)."""
    return write_bytes(Path(path), position_page(scores).encode())
