"""Command-line interface: ``attrscope attribute``, ``attrscope show``, ``attrscope methods``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

SIGNS = (
    "Sign conventions: 'denoising' runs the corrupted prompt and patches in clean activations "
    "(a positive score means the component restores the clean behaviour); 'noising' runs the "
    "clean prompt and patches in corrupted activations (a negative score means the component is "
    "needed for the behaviour). Every score is a change of the metric logit(answer) - "
    "logit(distractor), the answer being the clean prompt's."
)

app = typer.Typer(
    help="attrscope: which attention heads and MLP neurons drive a behaviour, by exact activation "
    "patching (ap), attribution patching (atp) and layer integrated gradients (ig). " + SIGNS,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _split(value: str, allowed, option: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise typer.BadParameter(f"{bad or value!r}: choose from {', '.join(sorted(allowed))}.",
                                 param_hint=option)
    return list(dict.fromkeys(items))


def _format_top(scores, kind: str, k: int) -> str:
    return "  ".join(f"{label} {value:+.3f}" for label, value in scores.top(kind, k))


def print_summary(scores, k: int) -> None:
    for kind in scores.kinds:
        typer.echo(f"  {kind:<8} top {k} by |mean score|: {_format_top(scores, kind, k)}")
    residuals = [v for name, v in scores.extras.items() if name.startswith("completeness_residual")]
    if residuals:
        worst = max(float(r.abs().max()) for r in residuals)
        typer.echo(f"  completeness residual (max |sum of attributions - metric change|): {worst:.2e}")


@app.command(help="Score every head and neuron with the chosen methods and directions, write one "
             "result file per method x direction into --out, and print the top components "
             "(heads as L.H, neurons as L.N) with their mean scores. " + SIGNS)
def attribute(
    model: Optional[str] = typer.Option(None, help="Hugging Face name (e.g. gpt2) or local model "
                                        "folder; default: the embedded offline IOI model."),
    task: str = typer.Option("ioi", help="Task name (ioi) or a .csv/.jsonl file with columns "
                             "clean, corrupted, answer, distractor."),
    method: str = typer.Option("ap,atp,ig", help="Comma-separated methods: ap, atp, ig."),
    direction: str = typer.Option("denoising,noising", help="Comma-separated: denoising, noising."),
    components: str = typer.Option("heads,neurons", help="Comma-separated: heads, neurons."),
    out: Path = typer.Option(Path("attrscope-results"), help="Output folder."),
    n: Optional[int] = typer.Option(None, help="Number of prompt pairs (default: 50 for "
                                    "generated tasks, all rows of a file)."),
    seed: int = typer.Option(0, help="Seed of the generated task."),
    n_steps: int = typer.Option(50, help="Integration steps for ig (Gauss-Legendre)."),
    baseline: str = typer.Option("matched", help="ig baseline: matched (path from the run's to "
                                 "the other prompt's activations) or zero (from zero to the run's)."),
    units: Optional[str] = typer.Option(None, help="ap only: score only these units, the same "
                                        "in every layer, as KIND=INDICES[;KIND=INDICES] with "
                                        "indices or start:stop[:step] ranges, e.g. "
                                        "neurons=0:3072:48 (default: all; unscored ones are NaN)."),
    max_memory: Optional[str] = typer.Option(None, help="Peak memory the batched passes may use, "
                                             "e.g. 4GB or 512MiB; it decides how many rows "
                                             "(patched copies x samples) a pass holds. Default: "
                                             "half the memory free on the device."),
    max_batch_rows: Optional[int] = typer.Option(None, help="Rows per forward pass, overriding "
                                                 "what --max-memory derives."),
    device: str = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1, auto."),
    dtype: str = typer.Option("float32", help="float32, float64, bfloat16 or float16."),
    top: int = typer.Option(5, help="How many top components to print per kind."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    from . import attribute as run_method
    from .components import KINDS, parse_unit_spec, resolve_units
    from .engine import DIRECTIONS, Runner, parse_memory
    from .methods import METHODS
    from .models import load_model
    from .tasks import load_task

    methods = _split(method, METHODS, "--method")
    directions = _split(direction, DIRECTIONS, "--direction")
    kinds = _split(components, KINDS, "--components")
    cli_settings = {"n_steps": n_steps, "baseline": baseline, "max_batch_rows": max_batch_rows,
                    "max_memory": max_memory}

    started = time.perf_counter()
    try:
        if units is not None:
            cli_settings["units"] = parse_unit_spec(units)
        the_model = load_model(model, device=device, dtype=dtype)
        the_task = load_task(task, the_model, n=n, seed=seed)
        # bad --units / --max-memory values are refused before any run
        resolve_units(cli_settings.get("units"), [KINDS[k] for k in kinds], the_model.cfg)
        if max_memory is not None:
            parse_memory(max_memory)
    except (ValueError, OSError) as e:  # bad task rows, unknown names, missing files
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"model {the_model.cfg.model_name}: {the_model.cfg.n_layers} layers, "
               f"{the_model.cfg.n_heads} heads, {the_model.cfg.d_mlp} neurons per MLP; "
               f"task {the_task.name}: {the_task.n} prompt pairs")
    out.mkdir(parents=True, exist_ok=True)
    for d in directions:
        runner = Runner(the_model, the_task, d, [KINDS[k] for k in kinds])
        clean_metric = runner.metric_run if d == "noising" else runner.metric_source
        failing = int((clean_metric <= 0).sum())
        typer.echo(f"{d}: metric on run prompts {runner.metric_run.mean():+.3f}, on source "
                   f"prompts {runner.metric_source.mean():+.3f} (mean logit difference); the model "
                   f"fails {failing} of {the_task.n} clean prompts (logit difference <= 0)")
        for m in methods:
            settings = {k: v for k, v in cli_settings.items() if k in METHODS[m].defaults}
            scores = run_method(the_model, the_task, m, d, kinds, show_progress=progress,
                                runner=runner, **settings)
            path = scores.save(out / f"{m}-{d}.safetensors")
            typer.echo(f"{m} {d} ({scores.meta['seconds']:.1f}s) -> {path}")
            print_summary(scores, top)
    typer.echo(f"done in {time.perf_counter() - started:.1f}s")


@app.command(help="Print what a saved result contains and its top components. " + SIGNS)
def show(path: Path = typer.Argument(..., help="A .safetensors result written by attrscope."),
         top: int = typer.Option(10, help="How many top components to print per kind.")) -> None:
    from .scores import Scores

    scores = Scores.load(path)
    meta = scores.meta
    typer.echo(f"{scores!r}")
    typer.echo(f"model {meta.get('model')}, task {meta.get('task')}, settings {meta.get('settings')}")
    typer.echo(f"sign: {meta.get('sign_convention')}")
    print_summary(scores, top)


@app.command(help="List the attribution methods, their settings and sign conventions. " + SIGNS)
def methods() -> None:
    from .methods import METHODS

    for spec in METHODS.values():
        settings = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
        typer.echo(f"{spec.name:<5} {spec.summary}\n      sign: {spec.sign}\n      settings: {settings}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
