"""``attrscope path``: integration-path analysis of chosen components."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import SIGNS, app
from .options import (DEVICE_OPTION, DTYPE_OPTION, METRIC_OPTION, MODEL_OPTION, PROGRESS_OPTION,
                      SEED_OPTION, SELF_CONTAINED_OPTION, TASK_OPTION, checkpoint_for,
                      model_and_task, one_choice, out_option)


def parse_components(labels: list[str], the_model, kind: str) -> list:
    """``--component`` values as components of ``kind`` (refused naming the option)."""
    from ..analysis.path import parse_component
    from ..arch import config_of

    try:
        return [parse_component(label, kind, config_of(the_model)) for label in labels]
    except ValueError as e:
        raise ValueError(f"--component: {e}") from None


@app.command("path", help="Integration-path analysis: move only the chosen head(s) or neuron(s) "
             "from the run's activation (alpha=0) to the other prompt's (alpha=1), record the "
             "metric and dm/dalpha (component-summed gradient) at every step, and report the "
             "output range, gradient range, saturation and split IG. With --survey (default) "
             "every head is analysed too and its gradient and output ranges are correlated with "
             "its exact patching score. Writes CSV tables and PNG figures into --out. " + SIGNS)
def path_command(
    component: list[str] = typer.Option(..., "--component", help="Component as LAYER.UNIT, "
                                        "e.g. 1.2; repeat the option for several."),
    kind: str = typer.Option("heads", help="What --component names: heads or neurons."),
    model: Optional[str] = MODEL_OPTION,
    task: str = TASK_OPTION,
    metric: Optional[str] = METRIC_OPTION,
    n: Optional[int] = typer.Option(20, help="Number of prompt pairs (all rows of a file if empty)."),
    seed: int = SEED_OPTION,
    direction: str = typer.Option("denoising", help="denoising (alpha=0 is the corrupted run) or "
                                  "noising (alpha=0 is the clean run)."),
    n_steps: int = typer.Option(50, help="Gauss-Legendre steps on the path (plus both ends)."),
    split_r: float = typer.Option(0.5, help="Fraction r of the output range for split IG."),
    saturation_threshold: float = typer.Option(0.1, help="Saturation: fraction of the path "
                                               "where |dm/dalpha| < this x its maximum."),
    survey: bool = typer.Option(True, "--survey/--no-survey", help="Also analyse every head and "
                                "correlate gradient/output range with exact patching scores."),
    max_batch_rows: int = typer.Option(1024, help="Most rows per forward pass."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    out: Path = out_option("attrscope-path"),
    progress: bool = PROGRESS_OPTION,
    self_contained: bool = SELF_CONTAINED_OPTION,
) -> None:
    from ..analysis.pipelines import path_study, save_path_study
    from ..engine import DIRECTIONS
    from ..keys import attribution_key

    one_choice(kind, ("heads", "neurons"), "--kind")
    one_choice(direction, DIRECTIONS, "--direction")
    the_model, the_task = model_and_task(model, task, n, seed, device, dtype, metric=metric)
    components = parse_components(component, the_model, kind)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = None
    if survey:
        key = attribution_key(the_model, the_task, "path-survey", direction, [],
                              {"kind": "heads", "n_steps": n_steps})
        checkpoint = checkpoint_for(out / "path-survey.parts", key, "path-survey")
    study = path_study(the_model, the_task, components, direction=direction, n_steps=n_steps,
                       split_r=split_r, saturation_threshold=saturation_threshold, survey=survey,
                       max_batch_rows=max_batch_rows, show_progress=progress,
                       checkpoint=checkpoint)
    typer.echo(f"{direction}, {the_task.n} prompt pairs, {n_steps} steps (means over samples):")
    for row in study.summaries:
        typer.echo("  " + "  ".join(f"{k} {v:+.4g}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in row.items()))
    if study.survey is not None:
        checkpoint.discard()
        typer.echo(f"all {len(study.survey.rows)} heads, correlation with the mean exact "
                   "patching score:")
        for name, value in study.survey.correlations.items():
            typer.echo(f"  {name}: {value:+.3f}")
    for file in save_path_study(study, out, self_contained=self_contained):
        typer.echo(f"-> {file}")
