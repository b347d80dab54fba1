"""``attrscope edges``: score every edge, select and evaluate the circuit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import SIGNS, app
from .options import (DEVICE_OPTION, DTYPE_OPTION, METRIC_OPTION, MODEL_OPTION, N_OPTION,
                      PROGRESS_OPTION, RESUME_OPTION, SEED_OPTION, SELF_CONTAINED_OPTION, TASK_OPTION,
                      index_result, model_and_task, one_choice, out_option, resumable,
                      warn_if_long)
from .settings import check_given, with_method_settings


@app.command(help="Score every edge of the model's graph (input, each head's q/k/v inputs, "
             "MLPs, logits) with eap, eap-ig, eap-ig-act or exact edge patching in one direction; print the "
             "top edges as '5:5 -> 8:6 (q)' with their mean scores, and write the result "
             "(results/<method>-<direction>-<key>.safetensors, listed in results.json) and the "
             "top edges as JSON into --out. "
             "The circuit of --top edges that connect the input to the logits (edges in |mean "
             "score| order until that many connect, the weakest that hold nothing dropped; "
             "grown greedily where that cannot reach the number), or of |mean score| >= "
             "--threshold pruned to the connected edges, is saved as JSON and "
             "PNG (-circuit.json, -circuit.png) and its faithfulness is printed: the clean run "
             "(or --circuit-run corrupted) with every edge outside it ablated (--ablation), f = (m(circuit) - m(empty)) / "
             "(m(model) - m(empty)). "
             "With --positions each the circuit is --top connected (edge, position) pairs (a "
             "key or value input at p reaching its head at every later position), with named "
             "positions the --top pairs by |mean score|, or those >= --threshold; labelled "
             "'5.5 -> 8.6 (q) @S2', evaluated with every other (edge, position) ablated; the "
             "page is the edge x position heatmap (-positions.html). "
             "A score is metric(run with the edge patched) - metric(run). Each method's "
             "settings are options (see 'attrscope methods'). " + SIGNS)
@with_method_settings("edge")
def edges(
    model: Optional[str] = MODEL_OPTION,
    task: str = TASK_OPTION,
    metric: Optional[str] = METRIC_OPTION,
    method: str = typer.Option("eap", help="eap, eap-ig (inputs interpolation), eap-ig-act "
                                "(activations interpolation) or exact."),
    direction: str = typer.Option("denoising", help="denoising or noising, or a latent-aware "
                                  "combination of both (computed, and saved, each): "
                                  "latent-mean (noising, with each latent edge - one whose two "
                                  "directions disagree - given the mean of both, as the seed "
                                  "study's MIB method), latent-larger, mean, larger; in the "
                                  "noising sign convention (see docs/editing.md)."),
    n: Optional[int] = N_OPTION,
    seed: int = SEED_OPTION,
    top: int = typer.Option(20, help="How many top edges (by |mean score|) to print and save, "
                            "and how many connected edges the circuit has unless --threshold "
                            "is given."),
    threshold: Optional[float] = typer.Option(None, help="Circuit of the edges with |mean score| "
                                              ">= this (instead of the top --top)."),
    ablation: str = typer.Option("other", help="How edges outside the circuit are ablated: "
                                 "other (the corrupted prompt's contribution), zero, or mean "
                                 "(per position over clean and corrupted prompts)."),
    faithfulness: bool = typer.Option(True, help="Evaluate the circuit's faithfulness."),
    circuit_run: str = typer.Option("clean", help="Which prompts the faithfulness runs: clean "
                                    "(the other prompt is the corrupted one) or corrupted."),
    curve: bool = typer.Option(False, help="Also print the faithfulness of the top 0.1 .. 100 % "
                               "of edges with CPR and CMD."),
    out: Path = out_option("attrscope-results"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    progress: bool = PROGRESS_OPTION,
    resume: bool = RESUME_OPTION,
    self_contained: bool = SELF_CONTAINED_OPTION,
    method_settings: Optional[dict] = None,
) -> None:
    from ..analysis.ablation import ABLATIONS
    from ..analysis.combine import COMBINATIONS, combine_directions
    from ..analysis.pipelines import edge_circuit, save_edge_circuit, save_top_edges
    from ..api import attribute_edges
    from ..edges.graph import Graph, colon_label
    from ..engine import DIRECTIONS
    from ..estimate import edge_passes
    from ..keys import attribution_key, result_name
    from ..methods import methods_of
    from ..registry import check_method_settings

    edge_methods = methods_of("edge")
    the_method = one_choice(method, edge_methods, "--method")
    the_direction = one_choice(direction, DIRECTIONS + COMBINATIONS, "--direction")
    the_ablation = one_choice(ablation, ABLATIONS, "--ablation")
    the_run = one_choice(circuit_run, ("clean", "corrupted"), "--circuit-run")
    check_given(method_settings, [the_method])
    settings = check_method_settings(the_method, method_settings)
    the_model, the_task = model_and_task(model, task, n, seed, device, dtype, metric=metric)
    warn_if_long(the_model, the_task, edge_passes(the_method, Graph.of_model(the_model),
                                                  the_task.n, settings.get("n_steps", 1)),
                 [(the_method, method_settings, [])])

    def keyed(name: str) -> tuple[Path, str]:
        # the key and file name attribute, compare and sweep give the same result
        key = attribution_key(the_model, the_task, the_method, name, [], settings)
        return out / "results" / result_name(the_method, name, key), key

    def one_direction(name: str):
        path, key = keyed(name)
        scores = resumable(
            lambda checkpoint=None: attribute_edges(the_model, the_task, the_method, name,
                                                    show_progress=progress,
                                                    checkpoint=checkpoint, **method_settings),
            path, resume, lambda: key, f"{the_method} {name}")
        index_result(out, path, scores, key)
        return path, scores

    if the_direction in DIRECTIONS:
        path, scores = one_direction(the_direction)
    else:
        (_, den), (_, noi) = one_direction("denoising"), one_direction("noising")
        scores = combine_directions(den, noi, the_direction)
        path, key = keyed(the_direction)
        scores.save(path)
        index_result(out, path, scores, key, f"{the_method}-{the_direction}")
        what = "edges" if scores.position_labels is None else "(edge, position) pairs"
        typer.echo(f"{the_direction}: {scores.meta['combined']['latent']['edges']} latent "
                   f"{what} (direction asymmetry called by its bootstrap interval)")
    typer.echo(f"{the_method} {the_direction}: {scores.graph.n_edges} edges, {the_task.n} prompt "
               f"pairs ({scores.meta['seconds']:.1f}s)")
    for label, value in scores.top("edges", top):
        typer.echo(f"{colon_label(label):<24} {value:+.4f}")
    stem = out / f"edges-{the_method}-{the_direction}"
    listing = save_top_edges(scores, stem.with_name(stem.name + "-top.json"), top)
    typer.echo(f"-> {path}\n-> {listing}")
    study = edge_circuit(the_model, the_task, scores, top=top, threshold=threshold,
                         ablation=the_ablation, faithfulness=faithfulness, curve=curve,
                         run=the_run, max_batch_rows=settings["max_batch_rows"], log=typer.echo)
    for written in save_edge_circuit(study, stem, the_model.cfg.d_model,
                                     self_contained=self_contained):
        typer.echo(f"-> {written}")
