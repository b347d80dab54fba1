"""``attrscope compare``: the main job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .app import SIGNS, app
from .options import (CACHE_DEVICE_OPTION, COMPUTE_DTYPE_OPTION, DEVICE_OPTION, DTYPE_OPTION,
                      METHOD_OPTION, METRIC_OPTION, MODEL_OPTION, N_OPTION, PROGRESS_OPTION,
                      SELF_CONTAINED_OPTION,
                      SKIP_INVALID_OPTION, TASK_OPTION, model_and_task, out_option,
                      parse_budget, report_skipped, split_choices)
from .settings import check_given, parse_given, settings_for, with_method_settings


def _top_k(top_k: float) -> int | float:
    k: int | float = int(top_k) if top_k >= 1 and float(top_k).is_integer() else top_k
    if not (isinstance(k, int) or 0 < k < 1):
        raise typer.BadParameter(f"{top_k}: give a whole number >= 1 or a fraction in (0, 1).",
                                 param_hint="--top-k")
    return k


@app.command(help="The main job: run the methods in both directions, compare them (correlations "
             "with bootstrap intervals, top-k overlap, Bland-Altman), find latent AND/OR components "
             "from the direction asymmetry, verify by ablation (top-k, one-method-only, latent and "
             "random sets; faithfulness curves with CPR/CMD), and write report.html, figures/*.png "
             "and tables/*.csv into --out. Results already computed with the same settings are "
             "reused from --out/results. Edge methods (e.g. --method ap,atp,eap) add edges: "
             "their agreement, overlap, asymmetry and circuit faithfulness. Each method's "
             "settings are options (see 'attrscope methods'). " + SIGNS)
@with_method_settings("node", "edge")
def compare(
    model: Optional[str] = MODEL_OPTION,
    task: str = TASK_OPTION,
    skip_invalid: bool = SKIP_INVALID_OPTION,
    metric: Optional[str] = METRIC_OPTION,
    method: str = METHOD_OPTION,
    direction: str = typer.Option("denoising,noising", help="Comma-separated: denoising, noising "
                                  "(both are needed for the asymmetry and latent sets)."),
    components: str = typer.Option("heads,neurons", help="Comma-separated: heads, neurons, "
                                   "resid_pre, attn_out, mlp_out, q, k, v. With --positions "
                                   "(each, or names such as S2,END) every (unit, position) is a "
                                   "component, and edge methods score every (edge, position) "
                                   "pair; atpstar is left out for the sites and positions "
                                   "it does not define, with a note. Every site is verified by "
                                   "ablation, edges by the faithfulness of their circuits."),
    out: Path = out_option("attrscope-report"),
    n: Optional[int] = N_OPTION,
    seed: int = typer.Option(0, help="Seed of the generated task, the bootstrap and the random "
                             "ablation sets."),
    top_k: float = typer.Option(10, "--top-k", help="Top components per method for overlap, "
                                "latent sets and verification: a count, or a fraction in (0, 1)."),
    ablation: str = typer.Option("other", help="How verification replaces a component in the "
                                 "clean run: other (the corrupted prompt's activation), mean (mean "
                                 "per position over the task's prompts, padding excluded) or zero."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for confidence intervals."),
    n_random: int = typer.Option(100, help="Random sets per size that each verified set is "
                                 "compared with (all sets of a size when there are fewer); the "
                                 "smallest p-value is 1/(n_random + 1)."),
    min_asymmetry: float = typer.Option(0.1, help="Smallest |asymmetry| (a share of the largest "
                                        "mean |score| of the kind) at which a component whose "
                                        "interval excludes 0 is called AND- or OR-like."),
    cache: bool = typer.Option(True, help="Reuse results in --out/results computed with the same "
                               "model, task, method, direction and settings."),
    from_sweep: Optional[Path] = typer.Option(None, help="Reuse the results of the 'attrscope "
                                              "sweep' store in this folder (made with the same "
                                              "model, task and settings) instead of --out/results; "
                                              "results it lacks are computed and added to it."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    compute_dtype: Optional[str] = COMPUTE_DTYPE_OPTION,
    cache_device: Optional[str] = CACHE_DEVICE_OPTION,
    progress: bool = PROGRESS_OPTION,
    normalize: Optional[str] = typer.Option(None, help="Compare scores as fractions of the "
                                            "clean - corrupted metric gap: gap (each sample's "
                                            "own) or gap-batch (the batch's mean); samples below "
                                            "0.05 x the mean |gap| are refused."),
    budget: str = typer.Option("15min", help="Time budget of the job: when exact patching of "
                               "every unit is estimated to take longer, ap is screened (atp ranks "
                               "every unit; the top units of each kind and a random audit of the "
                               "rest are patched exactly, the rest left NaN, with an estimate of "
                               "what the screen missed). E.g. 900s, 10min, 2h, or none. --screen "
                               "METHOD screens whatever the budget."),
    combine: str = typer.Option("", help="Comma-separated latent-aware combinations of each "
                                "method's two directions to compare too, as noising results "
                                "METHOD:HOW: latent-mean (the seed study's: noising, with each "
                                "latent component given the mean of both directions), "
                                "latent-larger, mean, larger (see docs/editing.md)."),
    verbose: bool = typer.Option(False, "--verbose", help="After the summary table, print every "
                                 "pair's agreement, the AND/OR calls and closest latent "
                                 "candidates, every verification set and faithfulness curve."),
    self_contained: bool = SELF_CONTAINED_OPTION,
    method_settings: Optional[dict] = None,
) -> None:
    from ..analysis.ablation import ABLATIONS
    from ..analysis.compare import compare as run_compare
    from ..analysis.report import summary_lines, write_report
    from ..engine import DIRECTIONS
    from ..components import KINDS
    from ..methods import METHODS
    from ..normalize import check_normalize
    from ..registry import check_method_settings

    methods = split_choices(method, METHODS, "--method")
    check_given(method_settings, methods)
    directions = split_choices(direction, DIRECTIONS, "--direction")
    kinds = split_choices(components, KINDS, "--components")
    if ablation not in ABLATIONS:
        raise typer.BadParameter(f"{ablation!r}: choose from {', '.join(ABLATIONS)}.",
                                 param_hint="--ablation")
    k = _top_k(top_k)
    started = time.perf_counter()
    given = parse_given(method_settings)
    for m in methods:
        check_method_settings(m, settings_for(m, given))
    check_normalize(normalize)
    parse_budget(budget)  # a bad --budget is refused before the model loads
    from ..analysis.combine import COMBINATIONS

    combinations = split_choices(combine, COMBINATIONS, "--combine") if combine else []
    if combinations and set(directions) != set(DIRECTIONS):
        raise typer.BadParameter("needs both directions (--direction denoising,noising).",
                                 param_hint="--combine")
    the_model, the_task = model_and_task(model, task, n, seed, device, dtype,
                                         skip_invalid=skip_invalid, metric=metric,
                                         compute_dtype=compute_dtype, cache_device=cache_device)
    report_skipped(the_task)
    typer.echo(f"model {the_model.cfg.model_name}, task {the_task.name}: {the_task.n} prompt "
               f"pairs; methods {', '.join(methods)}; directions {', '.join(directions)}")
    comparison = run_compare(
        the_model, the_task, methods, directions, kinds, k=k, ablation=ablation,
        n_boot=n_boot, n_random=n_random, seed=seed, min_asymmetry=min_asymmetry,
        method_settings=given,
        cache_dir=from_sweep / "results" if from_sweep else out / "results" if cache else None,
        show_progress=progress, log=typer.echo, normalize=normalize,
        budget=parse_budget(budget), combine=tuple(combinations))
    typer.echo(f"writing the report (figures, tables) into {out} ...")
    paths = write_report(comparison, out, self_contained=self_contained)
    for line in summary_lines(comparison, verbose=verbose):
        typer.echo(line)
    typer.echo(f"report: {paths['report']}  (figures in {paths['figures']}, tables in "
               f"{paths['tables']}); done in {time.perf_counter() - started:.1f}s")
