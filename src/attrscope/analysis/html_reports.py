"""HTML reports of ``attrscope edges``, ``attrscope path`` and ``attrscope counterfactual``,
rendered from the shared templates like the ``compare`` report (:mod:`attrscope.analysis.pages`):
a written findings summary first (``<section id="summary">``), then interactive plotly figures
(plotly.min.js beside the page, or embedded), then collapsed tables (sort, filter, CSV).

- :func:`write_edges_report`: the circuit graph (:mod:`~attrscope.analysis.circuit_graph`), the
  faithfulness curve when one was computed, and the table of the selected edges;
- :func:`write_path_report`: metric and dm/dalpha along the path of each chosen component with
  95 % intervals over prompts, and, with the survey, layer x unit heatmaps of every unit's path
  summaries and their scatter against the exact patching score;
- :func:`write_counterfactual_report`: the clean and found prompts with the changed tokens
  marked, heatmaps of every component's patching score with the found prompt and the standard
  corruption, and the search history.

Only results are read here; nothing is computed that the commands do not print.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..edges.circuit import rule_words
from ..edges.graph import colon_label
from .agreement import abs_ranks
from .pages import figure, fmt, render, table, write_page
from .plots import faithfulness_curves, figure_div, score_intervals


def _domain_end(fig: go.Figure, j: int) -> float:
    """Right end (paper coordinates) of subplot column ``j``'s x axis, where its colour bar goes."""
    return fig.layout[f"xaxis{j + 1 if j else ''}"].domain[1]


def unit_heatmaps(panels: dict[str, torch.Tensor], unit: str, div_id: str, title: str,
                  hover: list[str] | None = None, mark: tuple[int, int] | None = None,
                  symmetric: bool = True) -> str:
    """One layer x unit heatmap per named ``[n_layers, n_units]`` panel, side by side. ``hover``:
    one HTML text per component (layer-major) shown in every panel (default: the panel's value);
    ``mark``: (layer, unit) outlined in every panel; ``symmetric``: diverging colours around 0
    (else a sequential scale from the panel's minimum)."""
    n_layers, n_units = next(iter(panels.values())).shape
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, subplot_titles=list(panels),
                        horizontal_spacing=0.09)
    text = None if hover is None else [hover[layer * n_units:(layer + 1) * n_units]
                                       for layer in range(n_layers)]
    for j, (name, values) in enumerate(panels.items()):
        peak = float(values.nan_to_num().abs().max()) or 1.0
        scale = ({"colorscale": "RdBu", "reversescale": True, "zmin": -peak, "zmax": peak}
                 if symmetric else {"colorscale": "Viridis"})
        fig.add_trace(go.Heatmap(
            z=values.tolist(), x=list(range(n_units)), y=list(range(n_layers)), text=text,
            name=name, hovertemplate=("%{text}" if text else f"{unit} %{{y}}.%{{x}}: %{{z:+.4g}}")
            + "<extra></extra>", colorbar={"x": _domain_end(fig, j) + 0.005, "xanchor": "left",
                                           "len": 0.9, "thickness": 10}, **scale),
            row=1, col=j + 1)
        fig.update_xaxes(title_text=unit, dtick=1 if n_units <= 32 else None, row=1, col=j + 1)
        if mark is not None:
            layer, u = mark
            fig.add_shape(type="rect", x0=u - 0.5, x1=u + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                          line={"color": "black", "width": 3}, row=1, col=j + 1)
    fig.update_yaxes(title_text="layer", tickmode="linear", dtick=1, row=1, col=1)
    fig.update_layout(height=max(320, 28 * n_layers + 160), title=title,
                      margin={"t": 70, "b": 40})
    return figure_div(fig, div_id)


# -- edges -------------------------------------------------------------------------------------
def edge_rows(scores, circuit, limit: int = 2000) -> list[dict]:
    """The circuit's selected edges, largest |mean score| first (at most ``limit``): rank, edge,
    source, destination, input, mean score and 95 % interval over prompts, and whether the edge
    is kept (connected to the input and the logits)."""
    g = circuit.graph
    mean = scores.mean("edges")
    chosen = sorted(circuit.selected, key=lambda e: (-abs(float(mean[e])), e))[:limit]
    if not chosen:
        return []
    _, low, high = score_intervals(scores["edges"][:, chosen])
    kept = set(circuit.edges)
    rows = []
    for i, e in enumerate(chosen):
        dest, which = g.dest_names[int(g.dest_index[e])]
        rows.append({"rank": i + 1, "edge": colon_label(g.labels[e]),
                     "source": g.source_names[int(g.source_index[e])], "dest": dest,
                     "input": which or "-", "mean_score": float(mean[e]),
                     "ci_low": float(low[i]), "ci_high": float(high[i]),
                     "in_circuit": "yes" if e in kept else "no (dangling)"})
    return rows


def edges_context(scores, circuit, curve: dict | None = None, top: int = 5,
                  max_edges: int = 300) -> dict:
    """What the edges report shows (templates/edges.html)."""
    g = circuit.graph
    mean = scores.mean("edges")
    counts = {w or "other": sum(1 for e in circuit.edges
                                if g.dest_names[int(g.dest_index[e])][1] == w)
              for w in ("q", "k", "v", None)}
    total = float(mean.abs().sum())
    share = float(mean[circuit.edges].abs().sum()) / total if circuit.edges and total > 0 \
        else None
    rows = edge_rows(scores, circuit)
    graph_div = None
    if circuit.edges:
        from .circuit_graph import circuit_figure

        graph_div = figure(circuit_figure(circuit, scores["edges"], max_edges))
    curve_div = figure(figure_div(faithfulness_curves(
        {f"{scores.method} {scores.direction}": curve}, "edges"), "faithfulness-edges")) \
        if curve else None
    return {"scores": scores, "circuit": circuit, "graph": g, "task": scores.meta.get("task") or {},
            "model": scores.meta.get("model", "?"), "nodes": circuit.nodes(), "counts": counts,
            "share": share, "faithfulness": circuit.faithfulness, "curve": curve,
            "best": edge_rows(scores, circuit, limit=top), "graph_div": graph_div,
            "curve_div": curve_div, "rows": table(rows, name="edges"),
            "rule_words": rule_words(circuit.rule),
            "rows_note": (f" (the {len(rows)} largest; all in the -circuit.json)"
                          if len(rows) < len(circuit.selected) else ""),
            "sign": scores.meta.get("sign_convention", "")}


def render_edges_report(scores, circuit, curve: dict | None = None, max_edges: int = 300,
                        plotly_js: str | None = None) -> str:
    return render("edges.html", title=f"attrscope edges: {scores.method} {scores.direction}",
                  plotly_js=plotly_js, **edges_context(scores, circuit, curve, 5, max_edges))


def write_edges_report(path: Path, scores, circuit, curve: dict | None = None,
                       self_contained: bool = False) -> Path:
    """Write the HTML report of an edge result and its circuit to ``path`` and return it
    (``plotly.min.js`` beside it, or embedded when ``self_contained``).

    :param scores: edge scores (``attribute_edges``), per prompt, for the intervals.
    :param circuit: the :class:`~attrscope.edges.circuit.Circuit` selected from them, with its
        ``faithfulness`` when it was evaluated.
    :param curve: :meth:`~attrscope.edges.circuit.CircuitEvaluator.curve`'s result, or None.
    """
    return write_page(path, "edges.html", title=f"attrscope edges: {scores.method} "
                      f"{scores.direction}", self_contained=self_contained,
                      **edges_context(scores, circuit, curve))


# -- path --------------------------------------------------------------------------------------
def _unit_name(kind: str) -> str:
    return kind[:-1] if kind.endswith("s") else kind


def path_figure(paths: Sequence, div_id: str = "path-curves") -> str:
    """Mean metric and dm/dalpha against alpha per component, with 95 % bootstrap intervals
    over prompts (bands); hover gives the component, alpha, value and interval."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=["task metric m(alpha)", "dm/dalpha"])
    colours = ["#1f5fa8", "#e07b00", "#2c9a3a", "#b5002e", "#6a3d9a", "#8c564b"]
    for i, p in enumerate(paths):
        colour = colours[i % len(colours)]
        name = f"{_unit_name(p.kind)} {p.component}"
        alphas = p.alphas.tolist()
        for row, values in ((1, p.metric), (2, p.grad)):
            mean, low, high = score_intervals(values)
            fig.add_trace(go.Scatter(x=alphas + alphas[::-1], y=high.tolist() + low.tolist()[::-1],
                                     fill="toself", fillcolor=colour, opacity=0.18,
                                     line={"width": 0}, hoverinfo="skip", showlegend=False,
                                     legendgroup=name), row=row, col=1)
            fig.add_trace(go.Scatter(
                x=alphas, y=mean.tolist(), mode="lines+markers", name=name, legendgroup=name,
                showlegend=row == 1, line={"color": colour}, marker={"size": 4},
                customdata=torch.stack([low, high], 1).tolist(),
                hovertemplate=f"{name}, alpha %{{x:.3f}}: %{{y:+.4g}} [%{{customdata[0]:+.4g}}, "
                              "%{customdata[1]:+.4g}]<extra></extra>"), row=row, col=1)
    fig.update_xaxes(title_text="alpha (0: the run, 1: the component patched)", row=2, col=1)
    direction = paths[0].direction if paths else ""
    fig.update_layout(height=620, title=f"Only the component moves ({direction}); bands: 95 % "
                      "interval of the mean over prompts", hovermode="closest")
    return figure_div(fig, div_id)


def _survey_panels(survey) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Layer x unit maps of the survey's per-unit quantities, and a hover text per unit."""
    n_layers = max(p.layer for p in survey.paths) + 1
    n_units = max(p.unit for p in survey.paths) + 1
    quantities = ("ap_score", "grad_range", "output_range", "saturation")
    panels = {q: torch.full((n_layers, n_units), float("nan")) for q in quantities}
    hover = [""] * (n_layers * n_units)
    for p, row in zip(survey.paths, survey.rows):
        for q in quantities:
            panels[q][p.layer, p.unit] = row[q]
        hover[p.layer * n_units + p.unit] = f"<b>{_unit_name(survey.kind)} {row['component']}</b>" \
            + "".join(f"<br>{k}: {fmt(v, 4)}" for k, v in row.items() if k != "component")
    return panels, hover


def survey_scatter(survey, div_id: str = "path-survey-scatter") -> str:
    """Gradient and output range of every unit against its mean exact patching score; hover
    names the unit."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=[
        f"{q} (Pearson r {survey.correlations[f'pearson({q}, ap_score)']:+.2f})"
        for q in ("grad_range", "output_range")])
    names = [row["component"] for row in survey.rows]
    score = [row["ap_score"] for row in survey.rows]
    for j, q in enumerate(("grad_range", "output_range")):
        fig.add_trace(go.Scatter(x=score, y=[row[q] for row in survey.rows], mode="markers",
                                 text=names, showlegend=False, hovertemplate=(
                                     f"{_unit_name(survey.kind)} %{{text}}<br>ap score "
                                     f"%{{x:+.4g}}<br>{q}: %{{y:.4g}}<extra></extra>")),
                      row=1, col=j + 1)
        fig.update_xaxes(title_text="mean exact patching score (ap)", row=1, col=j + 1)
        fig.update_yaxes(title_text=f"mean {q}", row=1, col=j + 1)
    fig.update_layout(height=400, title=f"Every {_unit_name(survey.kind)}: path ranges against "
                      "the patching score")
    return figure_div(fig, div_id)


def path_context(paths: Sequence, summaries: list[dict], survey=None,
                 settings: dict | None = None) -> dict:
    """What the path report shows (templates/path.html)."""
    settings = settings or {}
    r = settings.get("split_r", 0.5)
    items = []
    for p, row in zip(paths, summaries):
        _, low, high = score_intervals(p.patch_score[:, None])
        items.append({"unit": _unit_name(p.kind), "row": row, "low": float(low[0]),
                      "high": float(high[0]), "alpha_r": row[f"alpha_{r:g}"],
                      "split_ig": row[f"split_ig_{r:g}"]})
    body = [figure(path_figure(paths))]
    survey_figures, survey_unit = [], None
    if survey is not None:
        panels, hover = _survey_panels(survey)
        survey_unit = _unit_name(survey.kind)
        survey_figures = [figure(unit_heatmaps(
            {"ap score": panels["ap_score"]}, survey_unit, "path-survey-score",
            f"Mean exact patching score of every {survey_unit} (hover: every path summary)",
            hover)), figure(unit_heatmaps(
                {k: v for k, v in panels.items() if k != "ap_score"}, survey_unit,
                "path-survey-heatmap", f"Path summaries of every {survey_unit}", hover,
                symmetric=False)), figure(survey_scatter(survey))]
    return {"settings": settings, "r": r, "t": settings.get("saturation_threshold", 0.1),
            "n": paths[0].metric.shape[0] if paths else 0,
            "direction": paths[0].direction if paths else "?", "items": items,
            "survey": survey, "survey_unit": survey_unit,
            "ranked": sorted(survey.rows, key=lambda row: -abs(row["ap_score"]))[:5]
            if survey is not None else [],
            "path_figures": body, "survey_figures": survey_figures,
            "chosen": table(summaries, name="chosen-components"),
            "every": table(survey.rows, name="every-unit") if survey is not None else None,
            "correlations": table([{"correlation": k, "value": v}
                                   for k, v in survey.correlations.items()], name="correlations")
            if survey is not None else None,
            "settings_json": json.dumps(settings, indent=2, default=str)}


def render_path_report(paths: Sequence, summaries: list[dict], survey=None,
                       settings: dict | None = None, plotly_js: str | None = None) -> str:
    return render("path.html", title="attrscope path: integration paths", plotly_js=plotly_js,
                  **path_context(paths, summaries, survey, settings))


def write_path_report(path: Path, paths: Sequence, summaries: list[dict], survey=None,
                      settings: dict | None = None, self_contained: bool = False) -> Path:
    """Write the HTML report of ``attrscope path`` to ``path`` and return it.

    :param paths: the :class:`~attrscope.analysis.path.ComponentPath` of each chosen component.
    :param summaries: their ``summary(r, threshold)`` rows, in the same order.
    :param survey: the :class:`~attrscope.analysis.path.PathSurvey` of every head, or None.
    :param settings: shown in the report: model, task, n_steps, split_r, saturation_threshold.
    :param self_contained: embed plotly.js instead of writing ``plotly.min.js`` beside it.
    """
    return write_page(path, "path.html", title="attrscope path: integration paths",
                      self_contained=self_contained,
                      **path_context(paths, summaries, survey, settings))


# -- counterfactual ----------------------------------------------------------------------------
def prompt_tokens(model, text: str) -> list[str]:
    """The prompt's tokens as text, as a task runs it (BOS included where the model uses one)."""
    from .counterfactual import prompt_ids

    return [model.tokenizer.decode([i]) for i in prompt_ids(model, text)]


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank (1 = largest |score|) of every entry of ``scores``, same shape."""
    return abs_ranks(scores.flatten()).view(scores.shape)


def counterfactual_context(result, tokens: tuple[list[str], list[str]] | None = None) -> dict:
    """What the counterfactual report shows (templates/counterfactual.html)."""
    from .path_output import counterfactual_score_rows, counterfactual_summary

    unit = _unit_name(result.kind)
    layer, u = map(int, result.component.split("."))
    flat = result.scores.flatten()
    order = torch.argsort(flat.abs(), descending=True, stable=True).tolist()
    n_units = result.scores.shape[1]
    others = [(f"{i // n_units}.{i % n_units}", float(flat[i])) for i in order
              if f"{i // n_units}.{i % n_units}" != result.component][:5]
    std_rank = int(_ranks(result.standard_scores)[layer, u]) \
        if result.standard is not None else None
    return {"r": result, "unit": unit, "tokens": tokens, "changed": set(result.changed_positions),
            "rank": int(_ranks(result.scores)[layer, u]), "total": result.scores.numel(),
            "std_rank": std_rank, "limit": result.settings.get("max_perplexity_ratio"),
            "others": others,
            "steps": max(0, len(result.history) - 1),
            "evaluated": sum(int(h.get("evaluated", 0)) for h in result.history),
            "heatmap": figure(counterfactual_heatmap(result)),
            "history_div": figure(history_figure(result)),
            "scores_table": table(counterfactual_score_rows(result), name="scores"),
            "history": table(result.history, name="search-history"),
            "summary": table([{"field": k, "value": v}
                              for k, v in counterfactual_summary(result).items()],
                             name="summary")}


def counterfactual_heatmap(result, div_id: str = "counterfactual-heatmap",
                           max_hover_cells: int = 4096) -> str:
    """Every component's patching score with the found prompt (and the standard corruption),
    layer x unit, the target outlined; hover: the component and both scores and ranks."""
    unit = _unit_name(result.kind)
    panels = {"found prompt": result.scores}
    if result.standard_scores is not None:
        panels["standard corruption"] = result.standard_scores
    n_layers, n_units = result.scores.shape
    hover = None
    if n_layers * n_units <= max_hover_cells:  # a text per cell would make neuron reports huge
        ranks = {name: _ranks(v) for name, v in panels.items()}
        hover = [f"<b>{unit} {layer}.{u}</b>" + "".join(
            f"<br>{name}: {float(v[layer, u]):+.4g} (rank {int(ranks[name][layer, u])})"
            for name, v in panels.items()) for layer in range(n_layers) for u in range(n_units)]
    layer, u = map(int, result.component.split("."))
    return unit_heatmaps(panels, unit, div_id, f"Patching score of every {unit} "
                         f"({result.direction}); outlined: the target {result.component}",
                         hover, mark=(layer, u))


def history_figure(result, div_id: str = "counterfactual-history") -> str:
    it = [h["iteration"] for h in result.history]
    text = [f"step {h['iteration']}: {html.escape(h['prompt'])}<br>{h['n_changed']} changed, "
            f"perplexity x{h['perplexity_ratio']:.3f}, {h['feasible']} of {h['evaluated']} "
            "feasible" for h in result.history]
    fig = go.Figure()
    for key in ("score", "objective"):
        fig.add_trace(go.Scatter(x=it, y=[h[key] for h in result.history], mode="lines+markers",
                                 name=key, text=text,
                                 hovertemplate=f"{key} %{{y:+.4g}}<br>%{{text}}<extra></extra>"))
    fig.update_layout(height=340, title="Search: the best prompt's target score at each step",
                      xaxis={"title": "step", "dtick": 1}, yaxis={"title": "value"})
    return figure_div(fig, div_id)


def render_counterfactual_report(result, tokens: tuple[list[str], list[str]] | None = None,
                                 plotly_js: str | None = None) -> str:
    return render("counterfactual.html", plotly_js=plotly_js,
                  title=f"attrscope counterfactual: {_unit_name(result.kind)} {result.component}",
                  **counterfactual_context(result, tokens))


def write_counterfactual_report(path: Path, result, model=None,
                                self_contained: bool = False) -> Path:
    """Write the HTML report of a counterfactual search to ``path``; with ``model``, the clean
    and found prompts are shown token by token with the changed tokens marked."""
    tokens = (prompt_tokens(model, result.clean), prompt_tokens(model, result.corrupted)) \
        if model is not None else None
    return write_page(path, "counterfactual.html", self_contained=self_contained,
                      title=f"attrscope counterfactual: {_unit_name(result.kind)} "
                            f"{result.component}", **counterfactual_context(result, tokens))
