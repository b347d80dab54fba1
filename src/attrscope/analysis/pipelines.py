"""The analyses behind ``attrscope edges``, ``path`` and ``counterfactual`` as API functions: each
computes a result object that a notebook can inspect, and a ``save_*`` function writes what the
command writes (JSON/CSV tables, PNG figures, the HTML report). The command line only parses
options and calls these.

Sign conventions are those of the underlying analyses: *denoising* runs the corrupted prompt and
patches in clean activations, *noising* runs the clean prompt and patches in corrupted ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..checks import check_finite_metrics
from ..components import HEADS
from ..edges.circuit import Circuit, CircuitEvaluator, plot_circuit, rule_words
from ..edges.graph import colon_label
from ..edges.positional import PositionCircuit, position_curve
from ..engine import Runner
from ..scores import Scores
from . import path as path_analysis
from . import path_output
from .html_reports import write_counterfactual_report, write_edges_report, write_path_report


def _quiet(line: str) -> None:
    """The default log: say nothing."""


# -- edges: the circuit of an edge attribution -----------------------------------------------

@dataclass
class CircuitStudy:
    """A circuit selected from edge scores, with its faithfulness (``circuit.faithfulness``) and,
    when asked, the faithfulness curve over circuit sizes with CPR/CMD intervals (``curve``). A
    :class:`~attrscope.edges.positional.PositionCircuit` of (edge, position) pairs for
    position-resolved scores."""

    scores: Scores
    circuit: Circuit | PositionCircuit
    curve: dict | None = None


def edge_circuit(model, task, scores: Scores, *, top: int = 20, threshold: float | None = None,
                 ablation: str = "other", faithfulness: bool = True, curve: bool = False,
                 run: str = "clean", max_batch_rows: int | None = None,
                 log: Callable[[str], None] = _quiet) -> CircuitStudy:
    """The circuit of ``scores`` (edge scores): ``top`` edges that connect the input to the
    logits (:meth:`~attrscope.edges.circuit.Circuit.connected`), or the edges with |mean score|
    >= ``threshold`` pruned to those connected; its faithfulness with every edge outside it ablated (``ablation``: other, zero or
    mean) on the ``run`` prompts (clean or corrupted), f = (m(circuit) - m(empty)) /
    (m(model) - m(empty)); with ``curve``, the faithfulness of the top 0.1 .. 100 % of edges.
    Position-resolved scores give a circuit of (edge, position) pairs, evaluated with every
    other (edge, position) ablated (:mod:`attrscope.edges.positional`): ``top`` connected pairs
    with ``positions="each"``, the ``top`` pairs by |mean score| with named positions (whose
    order differs between prompts), or those >= ``threshold``."""
    positional = scores.position_labels is not None
    chosen = {"top": None if threshold is not None else top, "threshold": threshold}
    if positional:
        circuit = PositionCircuit.from_scores(
            scores, **chosen, connected=scores.meta["positions"]["setting"] == "each")
        log(f"circuit ({circuit.rule}): {len(circuit.pairs)} (edge, position) pairs on "
            f"{len(circuit.edges())} edges")
    else:
        circuit = Circuit.from_scores(scores, **chosen)
        log(f"circuit ({circuit.rule}): {len(circuit.selected)} edges considered, "
            f"{len(circuit.edges)} connected to input and logits, {len(circuit.nodes())} nodes")
    if rule_words(circuit.rule):
        log(f"  {rule_words(circuit.rule)}")
    if circuit.note:
        log(circuit.note)
    study = CircuitStudy(scores, circuit)
    if not (faithfulness or curve):
        return study
    evaluator = CircuitEvaluator.for_task(
        model, task, ablation, run=run, max_batch_rows=max_batch_rows or 64,
        positions=scores.meta["positions"]["setting"] if positional else "all")
    if faithfulness:
        kept = circuit.keep() if positional else circuit
        circuit.faithfulness = report = {**evaluator.faithfulness(kept), "run": run}
        log(f"faithfulness ({ablation} ablation outside the circuit, {run} run, means over "
            f"samples): m(circuit) {report['m_circuit']:+.4f}  m(model) {report['m_model']:+.4f}"
            f"  m(empty) {report['m_empty']:+.4f}  f {report['f']:.4f}")
    if curve:
        mean = scores.mean("edges")
        study.curve = result = position_curve(evaluator, mean) if positional else \
            evaluator.curve(mean)
        for fraction, k, size, f in zip(result["fractions"], result["selected"],
                                        result["sizes"], result["f"]):
            log(f"  top {100 * fraction:g} % ({k} selected, {size} "
                f"{'pairs' if positional else 'connected'}): f {f:.4f}")
        log(f"  CPR {result['cpr']:.4f} [{result['cpr_low']:.4f}, {result['cpr_high']:.4f}]  "
            f"CMD {result['cmd']:.4f} [{result['cmd_low']:.4f}, {result['cmd_high']:.4f}] "
            "(95 % bootstrap intervals over prompts)")
    return study


def save_top_edges(scores: Scores, path: Path, top: int) -> Path:
    """The top ``top`` edges by |mean score| as JSON, with the graph and the sign convention."""
    best = scores.top("edges", top)
    path.write_text(json.dumps({
        "method": scores.method, "direction": scores.direction, "graph": scores.graph.as_dict(),
        "n_edges": scores.graph.n_edges, "sign_convention": scores.meta["sign_convention"],
        "top": [{"edge": colon_label(label), "label": label, "mean_score": value}
                for label, value in best]}, indent=2))
    return path


def save_edge_circuit(study: CircuitStudy, stem: Path, d_model: int, *,
                      self_contained: bool = False) -> list[Path]:
    """``<stem>-circuit.json``, ``-circuit.png``, ``.html`` (with ``plotly.min.js`` beside it
    unless ``self_contained``) and, for graphs without grouped-query inputs, the EAP-IG / MIB
    graph file ``-mib.json``. For a circuit of (edge, position) pairs the picture shows the
    edges kept at one position at least and the page is the edge x position heatmap
    (``-positions.html``)."""
    scores, circuit = study.scores, study.circuit
    written = [circuit.save_json(stem.with_name(stem.name + "-circuit.json"))]
    if isinstance(circuit, PositionCircuit):
        from .position_maps import write_position_page

        union = Circuit(circuit.graph, circuit.edges(), circuit.edges(), circuit.rule,
                        scores.mean("edges").sum(-1))
        written += [
            plot_circuit(union, stem.with_name(stem.name + "-circuit.png"),
                         title=f"{scores.method} {scores.direction}: {circuit.rule}, "
                               f"{len(circuit.pairs)} (edge, position) pairs on "
                               f"{len(union.edges)} edges (width: score summed over positions)"),
            write_position_page(scores, stem.with_name(stem.name + "-positions.html"))]
    else:
        written += [
            plot_circuit(circuit, stem.with_name(stem.name + "-circuit.png"),
                         title=f"{scores.method} {scores.direction}: {circuit.rule}, "
                               f"{len(circuit.edges)} edges (blue +, red -; q solid, k dashed, "
                               "v dotted)"),
            write_edges_report(stem.with_name(stem.name + ".html"), scores, circuit,
                               study.curve, self_contained=self_contained)]
    if circuit.graph.group_size == 1:  # the EAP-IG / MIB format has no grouped-query inputs
        from ..edges.mib import save_mib_json

        written.append(save_mib_json(stem.with_name(stem.name + "-mib.json"), scores, circuit,
                                     d_model=d_model))
    return written


# -- path: integration paths of chosen components --------------------------------------------

@dataclass
class PathStudy:
    """Integration paths of chosen components (``paths``, with one summary row each) and, with
    a survey, every head's path summary correlated with its exact patching score."""

    paths: list
    summaries: list[dict]
    survey: object | None
    settings: dict


def path_study(model, task, components: Sequence, *, direction: str = "denoising",
               n_steps: int = 50, split_r: float = 0.5, saturation_threshold: float = 0.1,
               survey: bool = True, max_batch_rows: int = 1024, show_progress: bool = True,
               checkpoint=None) -> PathStudy:
    """Move only each of ``components`` (from :func:`attrscope.components.parse_component`)
    from the run's activation (alpha = 0) to the other prompt's (alpha = 1) over ``n_steps``
    Gauss-Legendre steps; summarise output range, gradient range, saturation and split IG; with
    ``survey``, every head too, correlated with its exact patching score. ``checkpoint`` keeps
    the survey's finished chunks."""
    kinds = list({c.kind: c.spec for c in components}.values())
    if survey and HEADS not in kinds:
        kinds.append(HEADS)
    runner = Runner(model, task, direction, kinds)
    check_finite_metrics(runner, task)
    paths = path_analysis.component_paths(model, task, components, direction, n_steps,
                                          max_batch_rows, runner=runner,
                                          show_progress=show_progress)
    surveyed = None
    if survey:
        surveyed = path_analysis.survey(
            model, task, direction, "heads",
            path_analysis.SurveySettings(n_steps, max_batch_rows, split_r, saturation_threshold),
            runner=runner, show_progress=show_progress, checkpoint=checkpoint)
    settings = {"model": model.cfg.model_name, "task": task.name, "direction": direction,
                "n_steps": n_steps, "split_r": split_r,
                "saturation_threshold": saturation_threshold}
    return PathStudy(paths, [p.summary(split_r, saturation_threshold) for p in paths], surveyed,
                     settings)


def save_path_study(study: PathStudy, out: Path, *, self_contained: bool = False) -> list[Path]:
    """CSV tables, PNG figures and ``path.html`` of a path study in ``out`` (``plotly.min.js``
    beside it unless ``self_contained``)."""
    out.mkdir(parents=True, exist_ok=True)
    written = [path_output.write_csv(out / "path-steps.csv", path_output.path_step_rows(study.paths)),
               path_output.write_csv(out / "path-components.csv", study.summaries),
               path_output.plot_paths(study.paths, out / "path-curves.png")]
    result = study.survey
    if result is not None:
        written.append(path_output.write_csv(out / "path-survey.csv", result.rows))
        written.append(path_output.write_csv(
            out / "path-correlations.csv",
            [{"correlation": k, "value": v, "over": f"{len(result.rows)} heads"}
             for k, v in result.correlations.items()]))
        written.append(path_output.plot_survey(result, out / "path-survey.png"))
    written.append(write_path_report(out / "path.html", study.paths, study.summaries, result,
                                     study.settings, self_contained=self_contained))
    return written


# -- counterfactual: the found prompt, written out -------------------------------------------

def save_counterfactual(result, model, out: Path, *, self_contained: bool = False) -> list[Path]:
    """CSV tables, the PNG figure and ``counterfactual.html`` of a counterfactual search
    (:func:`attrscope.analysis.counterfactual.find_counterfactual`) in ``out`` (``plotly.min.js``
    beside it unless ``self_contained``)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = path_output.counterfactual_score_rows(result)
    return [
        path_output.write_csv(out / "counterfactual.csv", [path_output.counterfactual_summary(result)]),
        path_output.write_csv(out / "counterfactual-scores.csv", rows),
        path_output.write_csv(out / "counterfactual-history.csv", result.history),
        path_output.plot_counterfactual(result, out / "counterfactual-scores.png"),
        write_counterfactual_report(out / "counterfactual.html", result, model,
                                    self_contained=self_contained),
    ]
