"""``attrscope attribute``: score components with the chosen methods and directions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .app import SIGNS, app
from .options import (CACHE_DEVICE_OPTION, COMPUTE_DTYPE_OPTION, DEVICE_OPTION, DTYPE_OPTION,
                      METHOD_OPTION, METRIC_OPTION, MODEL_OPTION, N_OPTION, PROGRESS_OPTION,
                      RESUME_OPTION, SEED_OPTION, SKIP_INVALID_OPTION, TASK_OPTION, index_result,
                      model_and_task, out_option, print_summary, report_skipped, resumable,
                      split_choices, top_option, warn_if_long)
from .settings import check_given, parse_given, settings_for, with_method_settings


@app.command(help="Score every head and neuron with the chosen methods and directions, write one "
             "result file per method x direction into --out/results (named by a key of the model, "
             "task, method and settings, the names compare reuses; --out/results.json says which "
             "file is which method x direction), and print the top components "
             "(heads as L.H, neurons as L.N) with their mean scores. Edge methods (eap, eap-ig, "
             "eap-ig-act, exact) score every edge instead. Each method's settings are options "
             "(see 'attrscope methods'). " + SIGNS)
@with_method_settings("node", "edge")
def attribute(
    model: Optional[str] = MODEL_OPTION,
    task: str = TASK_OPTION,
    skip_invalid: bool = SKIP_INVALID_OPTION,
    metric: Optional[str] = METRIC_OPTION,
    method: str = METHOD_OPTION,
    direction: str = typer.Option("denoising,noising", help="Comma-separated: denoising, noising."),
    components: str = typer.Option("heads,neurons", help="Comma-separated: heads, neurons, "
                                   "resid_pre, attn_out, mlp_out, q, k, v (sites: see --positions)."),
    out: Path = out_option("attrscope-results"),
    n: Optional[int] = N_OPTION,
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    compute_dtype: Optional[str] = COMPUTE_DTYPE_OPTION,
    cache_device: Optional[str] = CACHE_DEVICE_OPTION,
    top: int = top_option(5),
    progress: bool = PROGRESS_OPTION,
    normalize: Optional[str] = typer.Option(None, help="gap: divide each sample's scores by its "
                                            "clean - corrupted metric gap; gap-batch: by the "
                                            "batch's mean gap (scores become fractions of it)."),
    small_gap: str = typer.Option("refuse", help="With --normalize, samples whose |gap| is "
                                  "below 0.05 x the mean |gap|: refuse, or flag (NaN scores)."),
    resume: bool = RESUME_OPTION,
    method_settings: Optional[dict] = None,
) -> None:
    from .. import attribute as run_method
    from ..arch import config_of
    from ..checks import check_finite_metrics
    from ..components import KINDS, resolve_units
    from ..engine import DIRECTIONS, Runner
    from ..estimate import node_passes
    from ..keys import model_fingerprint, result_key, result_name, task_fingerprint
    from ..methods import METHODS
    from ..normalize import check_normalize
    from ..registry import check_method_settings
    from ..scores import EDGES
    from ..sites import resolve_positions

    methods = split_choices(method, METHODS, "--method")
    directions = split_choices(direction, DIRECTIONS, "--direction")
    kinds = split_choices(components, KINDS, "--components")
    check_given(method_settings, methods)

    started = time.perf_counter()
    cli_settings = parse_given(method_settings)
    for m in methods:  # each method checks its own settings, before any model is loaded
        check_method_settings(m, settings_for(m, cli_settings))
    check_normalize(normalize, small_gap=small_gap)
    the_model, the_task = model_and_task(model, task, n, seed, device, dtype,
                                         skip_invalid=skip_invalid, metric=metric,
                                         compute_dtype=compute_dtype, cache_device=cache_device)
    # bad --units and --positions values are refused before any run (--max-memory: by the
    # option check)
    resolve_units(cli_settings.get("units"), [KINDS[k] for k in kinds], config_of(the_model))
    if cli_settings.get("positions") is not None:
        resolve_positions(the_task, cli_settings["positions"])
    report_skipped(the_task)
    typer.echo(f"model {the_model.cfg.model_name}: {the_model.cfg.n_layers} layers, "
               f"{the_model.cfg.n_heads} heads, {config_of(the_model).d_mlp} neurons per MLP; "
               f"task {the_task.name}: {the_task.n} prompt pairs")
    warn_if_long(the_model, the_task, len(directions) * sum(
        node_passes(m, cli_settings, config_of(the_model), the_task.n, kinds,
                    seq=int(the_task.clean_tokens.shape[1])) for m in methods),
        [(m, settings_for(m, cli_settings), kinds) for m in methods for _ in directions],
        setups=len(directions))  # one Runner per direction, shared by the methods
    out.mkdir(parents=True, exist_ok=True)
    fingerprints = model_fingerprint(the_model), task_fingerprint(the_task)
    for d in directions:
        runner = Runner(the_model, the_task, d, [KINDS[k] for k in kinds])
        check_finite_metrics(runner, the_task)
        clean_metric = runner.metric_run if d == "noising" else runner.metric_source
        failing = the_task.failing(clean_metric)
        fails = "" if failing is None else (
            f"; the model fails {int(failing.sum())} of {the_task.n} clean prompts "
            f"({the_task.metric_name} <= 0)")
        typer.echo(f"{d}: metric on run prompts {runner.metric_run.mean():+.3f}, on source "
                   f"prompts {runner.metric_source.mean():+.3f} (mean {the_task.metric_name})"
                   + fails)
        for m in methods:
            settings = settings_for(m, cli_settings)

            # the key compare's and sweep's caches give the same result (normalised results,
            # which they never store, are keyed apart by their normalisation)
            recorded = {**METHODS[m].defaults, **settings}
            if normalize:
                recorded.update(normalize=normalize, small_gap=small_gap)
            key = result_key(*fingerprints, m, d, kinds if METHODS[m].granularity == "node"
                             else [EDGES], recorded, str(next(the_model.parameters()).dtype),
                             str(the_task.clean_tokens.device))

            def compute(checkpoint=None, m=m, d=d, settings=settings, runner=runner, key=key):
                scores = run_method(the_model, the_task, m, d, kinds, show_progress=progress,
                                    runner=runner, normalize=normalize, small_gap=small_gap,
                                    checkpoint=checkpoint, **settings)
                scores.meta["cache_key"] = key
                return scores

            path = out / "results" / result_name(m, d, key)
            scores = resumable(compute, path, resume, lambda key=key: key, f"{m} {d}")
            index_result(out, path, scores, key)
            print_summary(scores, top)
            if "positions" in scores.meta:
                from ..analysis.position_maps import write_position_page

                page = out / f"{m}-{d}-positions.html"
                write_position_page(scores, page)
                typer.echo(f"  layer x position heatmaps: {page}")
    typer.echo(f"done in {time.perf_counter() - started:.1f}s")
