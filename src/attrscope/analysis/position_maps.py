"""The page of a position-resolved result (``positions="each"`` or named positions): for each
site a layer x position heatmap (sites with one unit per layer: ``resid_pre``, ``attn_out``,
``mlp_out``) or a unit-by-position grid, one row per ``L.U`` (heads, q, k, v; for neurons the
rows with the largest scores), the named positions (or token indices) and the sample prompt's
tokens on the position axis. Hovering a cell shows the component, the position and its token in
the first prompt, the mean score and its 95 % interval over the prompts.

One self-contained HTML string, no script and no external files (:func:`position_page`).
"""

from __future__ import annotations

import html
import math

import torch

from ..components import KINDS
from ..scores import EDGES

MAX_ROWS = 48  # rows of a unit-by-position grid (the largest by |mean score| when there are more)


def _colour(value: float, peak: float) -> str:
    """Red for positive, blue for negative, white at 0, on a scale symmetric about 0."""
    if not math.isfinite(value) or peak <= 0:
        return "#eeeeee"
    t = max(-1.0, min(1.0, value / peak))
    fade = int(255 * (1 - abs(t)))
    return f"rgb(255,{fade},{fade})" if t >= 0 else f"rgb({fade},{fade},255)"


def _interval(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and half-width of the normal 95 % interval over the samples (axis 0), NaN-aware."""
    mean = values.nanmean(0)
    count = (~values.isnan()).sum(0).clamp(min=1)
    centred = torch.where(values.isnan(), torch.zeros_like(values), values - mean)
    var = centred.pow(2).sum(0) / (count - 1).clamp(min=1)
    return mean, 1.96 * (var / count).sqrt()


def _grid(kind: str, rows: list[tuple[str, torch.Tensor, torch.Tensor]], positions: list[str],
          tokens: list[str]) -> str:
    """One table: a row per component (label, mean ``[P]``, half-width ``[P]``)."""
    peak = max((float(m.nan_to_num().abs().max()) for _, m, _ in rows), default=0.0)
    head = "".join(f"<th title='{html.escape(repr(tok))}'>{html.escape(str(p))}<br>"
                   f"<span class='tok'>{html.escape(tok)}</span></th>"
                   for p, tok in zip(positions, tokens))
    body = []
    for label, mean, half in rows:
        cells = []
        for j, (position, tok) in enumerate(zip(positions, tokens)):
            value, width = float(mean[j]), float(half[j])
            hover = (f"{kind} {label} at position {position} (token {tok!r} in the first prompt): "
                     f"mean score {value:+.4g} ± {width:.2g} (95 % interval)")
            cells.append(f"<td style='background:{_colour(value, peak)}' "
                         f"title='{html.escape(hover)}'></td>")
        body.append(f"<tr><th>{html.escape(label)}</th>{''.join(cells)}</tr>")
    unit = "edge" if kind == EDGES else KINDS[kind].unit
    return (f"<table class='map'><tr><th>{html.escape(unit)}</th>{head}</tr>"
            f"{''.join(body)}</table><p class='scale'>colour: mean score, red positive, blue "
            f"negative, full colour at |{peak:.3g}|</p>")


def kind_rows(scores, kind: str) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(label, mean [P], half-width [P])`` per component of ``kind``: every layer of a
    per-layer site, else every ``L.U`` (the MAX_ROWS largest by max |mean| when more)."""
    values = scores[kind].float()  # [n, layers, units, P]
    mean, half = _interval(values)
    if kind == EDGES:
        rows = [(label, mean[0, e], half[0, e]) for e, label in enumerate(scores.graph.labels)]
    else:
        spec = KINDS[kind]
        rows = [(spec.unit_label(layer, unit), mean[layer, unit], half[layer, unit])
                for layer in range(mean.shape[0]) for unit in range(mean.shape[1])]
    if len(rows) > MAX_ROWS:
        keep = sorted(range(len(rows)), key=lambda i: -float(rows[i][1].nan_to_num().abs().max()))
        rows = [rows[i] for i in sorted(keep[:MAX_ROWS])]
    return rows


def position_page(scores) -> str:
    """The HTML page of a position-resolved :class:`~attrscope.scores.Scores`."""
    meta = scores.meta
    positions = [str(p) for p in scores.position_labels]
    tokens = list(meta["positions"].get("sample_tokens") or [""] * len(positions))
    task = meta.get("task", {})
    task_name = task.get("name", "?") if isinstance(task, dict) else str(task)
    sections = []
    for kind in scores.kinds:
        rows = kind_rows(scores, kind)
        per_layer = kind != EDGES and KINDS[kind].per_layer
        unit = "edge" if kind == EDGES else KINDS[kind].unit
        what = ("layer x position" if per_layer else f"{unit} x position" + (
            f" (the {MAX_ROWS} largest)" if len(rows) == MAX_ROWS and
            scores[kind].shape[1] * scores[kind].shape[2] > MAX_ROWS else ""))
        sections.append(f"<h2>{html.escape(kind)}: {what}</h2>" + _grid(kind, rows, positions, tokens))
    title = (f"{scores.method} ({scores.direction}) by position: {meta.get('model', '?')}, "
             f"task {task_name}")
    style = ("body{font-family:sans-serif;margin:1.5em}table.map{border-collapse:collapse}"
             "table.map td{width:1.6em;height:1.1em;border:1px solid #fff}"
             "table.map th{font-size:70%;font-weight:normal;padding:0 .3em;text-align:right}"
             ".tok{color:#555}.scale{font-size:80%;color:#555}")
    sign = html.escape(str(meta.get("sign_convention", "")))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{sign}</p><p>metric: {html.escape(str(meta.get('metric', '')))}; positions: "
            f"{html.escape(str(meta['positions']['setting']))}</p>{''.join(sections)}</body></html>")


def write_position_page(scores, path) -> None:
    """Write :func:`position_page` to ``path`` (through a temporary file, atomically)."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(position_page(scores))
    os.replace(tmp, path)
