"""Self-contained HTML reports of ``attrscope edges``, ``attrscope path`` and ``attrscope
counterfactual``, built like the ``compare`` report (:mod:`attrscope.analysis.report`): a
written findings summary first (``<section id='summary'>``), then interactive plotly figures
(plotly.js embedded once, so the page works offline), then collapsed sortable tables.

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

from ..edges.graph import colon_label
from .agreement import abs_ranks
from .plots import faithfulness_curves, figure_div, score_intervals
from .report import _atomic_write_bytes, _details, _fmt, _table, html_page


def _summary(items: list[str]) -> str:
    return ("<section id='summary'><h2>Findings</h2><ul>"
            + "".join(f"<li>{i}</li>" for i in items) + "</ul></section>")


def _write(path: Path, page: str) -> Path:
    path = Path(path)
    _atomic_write_bytes(path, page.encode())
    return path


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
    mean = scores.mean("edges")[0]
    chosen = sorted(circuit.selected, key=lambda e: (-abs(float(mean[e])), e))[:limit]
    if not chosen:
        return []
    _, low, high = score_intervals(scores["edges"][:, 0, chosen])
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


def edges_summary(scores, circuit, curve: dict | None = None, top: int = 5) -> str:
    """The findings that open the edges report."""
    g = circuit.graph
    task = scores.meta.get("task") or {}
    mean = scores.mean("edges")[0]
    counts = {w: sum(1 for e in circuit.edges if g.dest_names[int(g.dest_index[e])][1] == w)
              for w in ("q", "k", "v", None)}
    share = float(mean[circuit.edges].abs().sum() / mean.abs().sum()) if circuit.edges \
        and float(mean.abs().sum()) > 0 else float("nan")
    items = [
        f"<b>Circuit</b> of {html.escape(scores.method)} {html.escape(scores.direction)} edge "
        f"scores, model <b>{html.escape(str(scores.meta.get('model', '?')))}</b>, task "
        f"<b>{html.escape(str(task.get('name', '?')))}</b> ({task.get('n', '?')} prompt pairs): "
        f"rule <b>{html.escape(circuit.rule)}</b> selects {len(circuit.selected)} of "
        f"{g.n_edges} edges; <b>{len(circuit.edges)}</b> of them connect the input to the "
        f"logits and make the circuit ({len(circuit.nodes())} nodes: "
        f"{html.escape(', '.join(circuit.nodes()[:30]))}{' ...' if len(circuit.nodes()) > 30 else ''}).",
        f"Its edges go into {counts['q']} queries, {counts['k']} keys, {counts['v']} values and "
        f"{counts[None]} MLP or logit inputs, and carry {_fmt(100 * share, 3)} % of the total "
        "|mean score| over all edges."]
    f = circuit.faithfulness
    if f:
        items.append(
            f"<b>Faithfulness f = {f['f']:.3f}</b>: in the {html.escape(str(f.get('run', 'clean')))} "
            f"run with every edge outside the circuit ablated ({html.escape(f['ablation'])}), the "
            f"mean metric is {f['m_circuit']:+.4g}, against {f['m_model']:+.4g} for the whole "
            f"model and {f['m_empty']:+.4g} with every edge ablated.")
    else:
        items.append("Faithfulness: not computed (--no-faithfulness).")
    if curve:
        items.append(f"Faithfulness curve over the top 0.1-100 % of edges: CPR "
                     f"{curve['cpr']:.3f} [{_fmt(curve.get('cpr_low'))}, "
                     f"{_fmt(curve.get('cpr_high'))}], CMD {curve['cmd']:.3f} "
                     f"[{_fmt(curve.get('cmd_low'))}, {_fmt(curve.get('cmd_high'))}] (95 % "
                     "bootstrap intervals over prompts).")
    best = edge_rows(scores, circuit, limit=top)
    items.append(f"<b>Top {len(best)} edges</b> (mean score [95 % interval over prompts]): "
                 + "; ".join(f"{html.escape(r['edge'])} {r['mean_score']:+.4g} "
                             f"[{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]" for r in best))
    items.append(f"<small>Score: {html.escape(str(scores.meta.get('sign_convention', '')))}; "
                 "an edge's score is metric(run with the edge patched) - metric(run).</small>")
    return _summary(items)


def render_edges_report(scores, circuit, curve: dict | None = None, max_edges: int = 300) -> str:
    from .circuit_graph import circuit_figure

    title = f"attrscope edges: {scores.method} {scores.direction}"
    body = [f"<h1>{html.escape(title)}</h1>", edges_summary(scores, circuit, curve),
            "<h2>Circuit graph</h2><p>Directed edges from source to destination node, by layer "
            "(input at the bottom, logits on top). Colour and dash: the destination input "
            "(click a legend entry to hide it); width: |mean score|; hover a diamond for the "
            "edge's name, score, interval and rank, or a node for its edges.</p>",
            circuit_figure(circuit, scores["edges"][:, 0], max_edges)]
    if curve:
        body += ["<h2>Faithfulness curve</h2>", figure_div(faithfulness_curves(
            {f"{scores.method} {scores.direction}": curve}, "edges"), "faithfulness-edges")]
    rows = edge_rows(scores, circuit)
    note = (f" (the {len(rows)} largest; all in the -circuit.json)"
            if len(rows) < len(circuit.selected) else "")
    body.append(_details(f"Selected edges{note}", _table(rows)))
    return html_page(title, body)


def write_edges_report(path: Path, scores, circuit, curve: dict | None = None) -> Path:
    """Write the HTML report of an edge result and its circuit to ``path`` and return it.

    :param scores: edge scores (``attribute_edges``), per prompt, for the intervals.
    :param circuit: the :class:`~attrscope.edges.circuit.Circuit` selected from them, with its
        ``faithfulness`` when it was evaluated.
    :param curve: :meth:`~attrscope.edges.circuit.CircuitEvaluator.curve`'s result, or None.
    """
    return _write(path, render_edges_report(scores, circuit, curve))


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
            + "".join(f"<br>{k}: {_fmt(v, 4)}" for k, v in row.items() if k != "component")
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


def path_summary(paths: Sequence, summaries: list[dict], survey=None, settings: dict | None = None
                 ) -> str:
    settings = settings or {}
    r, t = settings.get("split_r", 0.5), settings.get("saturation_threshold", 0.1)
    n = paths[0].metric.shape[0] if paths else 0
    direction = paths[0].direction if paths else "?"
    items = [f"<b>Integration paths</b>, {html.escape(direction)}, model "
             f"<b>{html.escape(str(settings.get('model', '?')))}</b>, task "
             f"<b>{html.escape(str(settings.get('task', '?')))}</b>, {n} prompt pairs, "
             f"{settings.get('n_steps', '?')} Gauss-Legendre steps: only the chosen component "
             "moves from the run's activation (alpha = 0) to the other prompt's (alpha = 1)."]
    for p, row in zip(paths, summaries):
        _, low, high = score_intervals(p.patch_score[:, None])
        items.append(
            f"<b>{_unit_name(p.kind)} {html.escape(p.component)}</b>: patching score "
            f"{row['patch_score']:+.4g} [{float(low[0]):+.3g}, {float(high[0]):+.3g}], IG "
            f"{row['ig']:+.4g} (completeness residual at most {row['completeness_residual']:.2g}); "
            f"output range {row['output_range']:.4g}, gradient range {row['grad_range']:.4g}; "
            f"saturation {_fmt(row['saturation'], 3)} (share of the path where |dm/dalpha| < "
            f"{t:g} x its maximum); {r:g} of the output change is reached at alpha = "
            f"{_fmt(row[f'alpha_{r:g}'], 3)}, split IG {row[f'split_ig_{r:g}']:+.4g}.")
    if survey is not None:
        c = survey.correlations
        ranked = sorted(survey.rows, key=lambda row: -abs(row["ap_score"]))[:5]
        items.append(
            f"<b>Survey of all {len(survey.rows)} {html.escape(survey.kind)}</b>: against the "
            f"mean patching score, gradient range Pearson r {c['pearson(grad_range, ap_score)']:+.3f}"
            f" (|score|: {c['pearson(grad_range, |ap_score|)']:+.3f}), output range "
            f"{c['pearson(output_range, ap_score)']:+.3f} (|score|: "
            f"{c['pearson(output_range, |ap_score|)']:+.3f}). Largest |patching score|: "
            + "; ".join(f"{html.escape(row['component'])} {row['ap_score']:+.3g}" for row in ranked))
    return _summary(items)


def render_path_report(paths: Sequence, summaries: list[dict], survey=None,
                       settings: dict | None = None) -> str:
    title = "attrscope path: integration paths"
    body = [f"<h1>{html.escape(title)}</h1>", path_summary(paths, summaries, survey, settings),
            "<h2>Along the path</h2>", path_figure(paths)]
    if survey is not None:
        panels, hover = _survey_panels(survey)
        unit = _unit_name(survey.kind)
        body += ["<h2>Every unit</h2>",
                 unit_heatmaps({"ap score": panels["ap_score"]}, unit, "path-survey-score",
                               f"Mean exact patching score of every {unit} (hover: every path "
                               "summary)", hover),
                 unit_heatmaps({k: v for k, v in panels.items() if k != "ap_score"}, unit,
                               "path-survey-heatmap", f"Path summaries of every {unit}", hover,
                               symmetric=False),
                 survey_scatter(survey)]
    body.append(_details("Chosen components", _table(summaries)))
    if survey is not None:
        body.append(_details(f"Every {_unit_name(survey.kind)}", _table(survey.rows)))
        body.append(_details("Correlations", _table(
            [{"correlation": k, "value": v} for k, v in survey.correlations.items()])))
    body.append(_details("Settings", "<pre>" + html.escape(json.dumps(
        settings or {}, indent=2, default=str)) + "</pre>"))
    return html_page(title, body)


def write_path_report(path: Path, paths: Sequence, summaries: list[dict], survey=None,
                      settings: dict | None = None) -> Path:
    """Write the HTML report of ``attrscope path`` to ``path`` and return it.

    :param paths: the :class:`~attrscope.analysis.path.ComponentPath` of each chosen component.
    :param summaries: their ``summary(r, threshold)`` rows, in the same order.
    :param survey: the :class:`~attrscope.analysis.path.PathSurvey` of every head, or None.
    :param settings: shown in the report: model, task, n_steps, split_r, saturation_threshold.
    """
    return _write(path, render_path_report(paths, summaries, survey, settings))


# -- counterfactual ----------------------------------------------------------------------------
def prompt_tokens(model, text: str) -> list[str]:
    """The prompt's tokens as text, as a task runs it (BOS included where the model uses one)."""
    from .counterfactual import prompt_ids

    return [model.tokenizer.decode([i]) for i in prompt_ids(model, text)]


def _marked(tokens: list[str], changed: set[int]) -> str:
    return "".join(f"<mark>{html.escape(t)}</mark>" if i in changed else html.escape(t)
                   for i, t in enumerate(tokens))


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank (1 = largest |score|) of every entry of ``scores``, same shape."""
    return abs_ranks(scores.flatten()).view(scores.shape)


def counterfactual_summary_html(result, tokens: tuple[list[str], list[str]] | None = None) -> str:
    unit = _unit_name(result.kind)
    layer, u = map(int, result.component.split("."))
    rank = int(_ranks(result.scores)[layer, u])
    total = result.scores.numel()
    prompts = (f"clean <code>{_marked(tokens[0], set(result.changed_positions))}</code><br>found "
               f"<code>{_marked(tokens[1], set(result.changed_positions))}</code>" if tokens else
               f"clean <code>{html.escape(result.clean)}</code><br>found "
               f"<code>{html.escape(result.corrupted)}</code>")
    items = [f"<b>Counterfactual for {unit} {html.escape(result.component)}</b> "
             f"({html.escape(result.direction)}), answer {html.escape(repr(result.answer))} vs "
             f"{html.escape(repr(result.distractor))}: a prompt with "
             f"<b>{result.n_changed} changed token(s)</b> (positions "
             f"{', '.join(map(str, result.changed_positions)) or 'none'}) gives the target a "
             f"patching score of <b>{result.score:+.4g}</b>, rank {rank} of {total} {unit}s by "
             "|score|.", prompts]
    if result.standard is not None:
        std_rank = int(_ranks(result.standard_scores)[layer, u])
        ratio = (f" ({result.score / result.standard_score:.3g} x)"
                 if result.standard_score else "")
        items.append(f"With the standard corruption <code>{html.escape(result.standard)}</code> "
                     f"the target scores {result.standard_score:+.4g}{ratio}, rank {std_rank}.")
    limit = result.settings.get("max_perplexity_ratio")
    items.append(f"Perplexity {result.perplexity_clean:.4g} -> {result.perplexity:.4g} "
                 f"(x{result.perplexity_ratio:.3f}" + (f", limit x{limit:g})" if limit else ")")
                 + f"; metric clean {result.metric_clean:+.4g}, found "
                   f"{result.metric_corrupted:+.4g}.")
    flat = result.scores.flatten()
    order = torch.argsort(flat.abs(), descending=True, stable=True).tolist()
    n_units = result.scores.shape[1]
    others = [(f"{i // n_units}.{i % n_units}", float(flat[i])) for i in order
              if f"{i // n_units}.{i % n_units}" != result.component][:5]
    items.append("Other components the found prompt moves most: "
                 + "; ".join(f"{name} {v:+.3g}" for name, v in others))
    evaluated = sum(int(h.get("evaluated", 0)) for h in result.history)
    items.append(f"Search: {max(0, len(result.history) - 1)} step(s), {evaluated} candidate "
                 "prompts evaluated exactly.")
    return _summary(items)


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


def render_counterfactual_report(result, tokens: tuple[list[str], list[str]] | None = None
                                 ) -> str:
    from .path_output import counterfactual_score_rows, counterfactual_summary

    title = f"attrscope counterfactual: {_unit_name(result.kind)} {result.component}"
    body = [f"<h1>{html.escape(title)}</h1>", counterfactual_summary_html(result, tokens),
            "<h2>Every component's score</h2>", counterfactual_heatmap(result),
            "<h2>Search</h2>", history_figure(result),
            _details("Scores of every component", _table(counterfactual_score_rows(result))),
            _details("Search history", _table(result.history)),
            _details("Summary and settings", _table(
                [{"field": k, "value": v} for k, v in counterfactual_summary(result).items()]))]
    return html_page(title, body)


def write_counterfactual_report(path: Path, result, model=None) -> Path:
    """Write the HTML report of a counterfactual search to ``path``; with ``model``, the clean
    and found prompts are shown token by token with the changed tokens marked."""
    tokens = (prompt_tokens(model, result.clean), prompt_tokens(model, result.corrupted)) \
        if model is not None else None
    return _write(path, render_counterfactual_report(result, tokens))
