"""Notebook views of :class:`~attrscope.scores.Scores`: long-form DataFrames and an HTML summary.

pandas is an optional extra (``pip install 'attrscope[notebook]'``); only the DataFrame methods
need it, the HTML display does not.
"""

from __future__ import annotations

import base64
import html
import io

import torch

COLUMNS = ["sample", "kind", "layer", "index", "label", "score", "method", "direction"]


def pandas():
    """The pandas module, or an ImportError saying how to get it."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("DataFrames need pandas: pip install 'attrscope[notebook]' (or pandas)."
                          ) from None
    return pd


def _kind_columns(scores, kind: str, values: torch.Tensor) -> dict[str, list]:
    """Columns for ``values`` ``[rows, n_layers, n_units(, n_positions)]`` of one kind, flattened
    row-major; position-resolved scores get a ``position`` column (name or token index). Edges
    ``[rows, n_edges(, n_positions)]`` read as one layer (0) of ``n_edges`` units."""
    if kind == "edges":  # scores.EDGES; scores imports this module, not the other way round
        values = values.unsqueeze(1)
    rows, n_layers, n_units = values.shape[:3]
    positions = scores.position_labels or [None]
    n_pos = len(positions)
    per_row = n_layers * n_units * n_pos
    labels = scores.labels(kind)
    columns = {"kind": [kind] * (rows * per_row),
               "layer": torch.arange(n_layers).repeat_interleave(n_units * n_pos).repeat(rows).tolist(),
               "index": torch.arange(n_units).repeat_interleave(n_pos).repeat(n_layers * rows).tolist(),
               "label": labels * rows,
               "score": values.double().flatten().tolist()}
    if scores.position_labels is not None:
        columns["position"] = positions * (rows * n_layers * n_units)
    return columns


def _frame(scores, kinds, per_sample: bool):
    pd = pandas()
    kinds = scores.kinds if kinds is None else ([kinds] if isinstance(kinds, str) else list(kinds))
    parts = []
    for kind in kinds:
        values = scores[kind] if per_sample else scores.mean(kind).unsqueeze(0)
        columns = _kind_columns(scores, kind, values)
        if per_sample:
            per_row = values[0].numel()
            columns = {"sample": torch.arange(values.shape[0]).repeat_interleave(per_row).tolist(),
                       **columns}
        parts.append(pd.DataFrame(columns))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    frame["method"], frame["direction"] = scores.method, scores.direction
    return frame


def to_dataframe(scores, kinds=None):
    """Long form, one row per sample and component: sample, kind, layer, index (head, neuron or
    edge number), label (``L.U``, ``L.U@P`` or the edge label), score, method, direction; and
    ``position`` (its name or token index) for position-resolved scores."""
    return _frame(scores, kinds, per_sample=True)


def mean_frame(scores, kinds=None):
    """One row per component: the mean score over samples (NaN samples left out)."""
    return _frame(scores, kinds, per_sample=False)


def top_frame(scores, k: int = 10, by: str = "abs", kinds=None):
    """The ``k`` components of each kind with the largest mean score (``by`` as in
    :meth:`Scores.top`), largest first, with their rank."""
    frame = mean_frame(scores, kinds)
    key = {"abs": frame["score"].abs(), "pos": frame["score"], "neg": -frame["score"]}.get(by)
    if key is None:
        raise ValueError(f"by must be 'abs', 'pos' or 'neg', got {by!r}.")
    frame = frame.assign(_key=key).dropna(subset=["_key"])
    frame = frame.sort_values(["kind", "_key"], ascending=[True, False], kind="stable")
    frame = frame.groupby("kind", sort=False).head(k).drop(columns="_key")
    frame.insert(0, "rank", frame.groupby("kind").cumcount() + 1)
    return frame.reset_index(drop=True)


def heatmap_png(mean: torch.Tensor, title: str, unit: str) -> bytes:
    """A small layer x unit heatmap of ``mean`` ``[n_layers, n_units]`` as PNG bytes, on a
    colour scale symmetric about 0 (red positive, blue negative)."""
    from matplotlib.figure import Figure

    peak = float(mean.nan_to_num().abs().max()) or 1.0
    n_layers, n_units = mean.shape
    fig = Figure(figsize=(min(8.0, 1.5 + 0.35 * n_units), 0.9 + 0.3 * n_layers))
    ax = fig.subplots()
    image = ax.imshow(mean.float().numpy(), cmap="RdBu_r", vmin=-peak, vmax=peak, aspect="auto")
    ax.set_xlabel(unit)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def repr_html(scores) -> str:
    """Compact HTML: what was run, the shape of each kind, its top 5 components and a heatmap of
    the mean head (or first node kind's) scores."""
    from .normalize import describe

    meta = scores.meta
    rows = [("method", f"{scores.method} ({scores.direction})"), ("model", meta.get("model", "?")),
            ("task", (meta.get("task") or {}).get("name", "?")
             if isinstance(meta.get("task"), dict) else meta.get("task", "?"))]
    rows += [("normalised", describe(meta))] if describe(meta) else []
    for kind in scores.kinds:
        top = ", ".join(f"{label} {value:+.3g}" for label, value in scores.top(kind, 5))
        rows.append((f"{kind} {tuple(scores[kind].shape)}", f"top by |mean|: {top}"))
    table = "".join(f"<tr><th style='text-align:left'>{html.escape(str(a))}</th>"
                    f"<td style='text-align:left'>{html.escape(str(b))}</td></tr>" for a, b in rows)
    out = f"<div><strong>attrscope Scores</strong><table>{table}</table>"
    kind = next((k for k in ("heads", "neurons") if k in scores), None)
    if kind is not None:
        png = heatmap_png(scores.mean(kind), f"mean {kind} scores", kind[:-1])
        out += (f"<img alt='mean {kind} heatmap' src='data:image/png;base64,"
                f"{base64.b64encode(png).decode()}'/>")
    return out + "</div>"
