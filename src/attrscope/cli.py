"""Command-line interface: ``attrscope compare`` (the main job), ``attribute``, ``show``, ``methods``."""

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


# Options shared by the commands that run methods.
MODEL_OPTION = typer.Option(None, help="Hugging Face name (e.g. gpt2) or local model folder; "
                            "default: the embedded offline IOI model.")
TASK_OPTION = typer.Option("ioi", help="Task name (ioi) or a .csv/.jsonl file with columns clean, "
                           "corrupted, answer, distractor.")
METHOD_OPTION = typer.Option("ap,atp,ig", help="Comma-separated methods: ap, atp, ig.")


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
    model: Optional[str] = MODEL_OPTION,
    task: str = TASK_OPTION,
    method: str = METHOD_OPTION,
    direction: str = typer.Option("denoising,noising", help="Comma-separated: denoising, noising."),
    components: str = typer.Option("heads,neurons", help="Comma-separated: heads, neurons."),
    out: Path = typer.Option(Path("attrscope-results"), help="Output folder."),
    n: Optional[int] = typer.Option(None, help="Number of prompt pairs (default: 50 for "
                                    "generated tasks, all rows of a file)."),
    seed: int = typer.Option(0, help="Seed of the generated task."),
    n_steps: int = typer.Option(50, help="Integration steps for ig (Gauss-Legendre)."),
    baseline: str = typer.Option("matched", help="ig baseline: matched (path from the run's to "
                                 "the other prompt's activations) or zero (from zero to the run's)."),
    max_batch_rows: int = typer.Option(1024, help="Most rows (patched copies x samples) per "
                                       "forward pass; lower it to use less memory."),
    device: str = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1, auto."),
    dtype: str = typer.Option("float32", help="float32, float64, bfloat16 or float16."),
    top: int = typer.Option(5, help="How many top components to print per kind."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    from . import attribute as run_method
    from .components import KINDS
    from .engine import DIRECTIONS, Runner
    from .methods import METHODS
    from .models import load_model
    from .tasks import load_task

    methods = _split(method, METHODS, "--method")
    directions = _split(direction, DIRECTIONS, "--direction")
    kinds = _split(components, KINDS, "--components")
    cli_settings = {"n_steps": n_steps, "baseline": baseline, "max_batch_rows": max_batch_rows}

    started = time.perf_counter()
    try:
        the_model = load_model(model, device=device, dtype=dtype)
        the_task = load_task(task, the_model, n=n, seed=seed)
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


@app.command(help="The main job: run the methods in both directions, compare them (correlations "
             "with bootstrap intervals, top-k overlap, Bland-Altman), find latent AND/OR components "
             "from the direction asymmetry, verify by ablation (top-k, one-method-only, latent and "
             "random sets; faithfulness curves with CPR/CMD), and write report.html, figures/*.png "
             "and tables/*.csv into --out. Results already computed with the same settings are "
             "reused from --out/results. " + SIGNS)
def compare(
    model: Optional[str] = MODEL_OPTION,
    task: str = TASK_OPTION,
    method: str = METHOD_OPTION,
    direction: str = typer.Option("denoising,noising", help="Comma-separated: denoising, noising "
                                  "(both are needed for the asymmetry and latent sets)."),
    components: str = typer.Option("heads,neurons", help="Comma-separated: heads, neurons."),
    out: Path = typer.Option(Path("attrscope-report"), help="Output folder."),
    n: Optional[int] = typer.Option(None, help="Number of prompt pairs (default: 50 for "
                                    "generated tasks, all rows of a file)."),
    seed: int = typer.Option(0, help="Seed of the generated task, the bootstrap and the random "
                             "ablation sets."),
    top_k: float = typer.Option(10, "--top-k", help="Top components per method for overlap, "
                                "latent sets and verification: a count, or a fraction in (0, 1)."),
    ablation: str = typer.Option("other", help="How verification replaces a component in the "
                                 "clean run: other (the corrupted prompt's activation), mean (mean "
                                 "per position over the task's prompts, padding excluded) or zero."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for confidence intervals."),
    n_random: int = typer.Option(5, help="Random sets (seeds) per size in the verification."),
    n_steps: int = typer.Option(50, help="Integration steps for ig (Gauss-Legendre)."),
    max_batch_rows: int = typer.Option(1024, help="Most rows per forward pass."),
    cache: bool = typer.Option(True, help="Reuse results in --out/results computed with the same "
                               "model, task, method, direction and settings."),
    device: str = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1, auto."),
    dtype: str = typer.Option("float32", help="float32, float64, bfloat16 or float16."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    from .analysis.ablation import ABLATIONS
    from .analysis.compare import compare as run_compare
    from .analysis.report import summary_lines, write_report
    from .components import KINDS
    from .engine import DIRECTIONS
    from .methods import METHODS
    from .models import load_model
    from .tasks import load_task

    methods = _split(method, METHODS, "--method")
    directions = _split(direction, DIRECTIONS, "--direction")
    kinds = _split(components, KINDS, "--components")
    if ablation not in ABLATIONS:
        raise typer.BadParameter(f"{ablation!r}: choose from {', '.join(ABLATIONS)}.",
                                 param_hint="--ablation")
    k: int | float = int(top_k) if top_k >= 1 and float(top_k).is_integer() else top_k
    if not (isinstance(k, int) or 0 < k < 1):
        raise typer.BadParameter(f"{top_k}: give a whole number >= 1 or a fraction in (0, 1).",
                                 param_hint="--top-k")
    started = time.perf_counter()
    try:
        the_model = load_model(model, device=device, dtype=dtype)
        the_task = load_task(task, the_model, n=n, seed=seed)
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"model {the_model.cfg.model_name}, task {the_task.name}: {the_task.n} prompt "
               f"pairs; methods {', '.join(methods)}; directions {', '.join(directions)}")
    comparison = run_compare(
        the_model, the_task, methods, directions, kinds, k=k, ablation=ablation, n_boot=n_boot,
        n_random=n_random, seed=seed,
        method_settings={"n_steps": n_steps, "max_batch_rows": max_batch_rows},
        cache_dir=out / "results" if cache else None, show_progress=progress, log=typer.echo)
    paths = write_report(comparison, out)
    for line in summary_lines(comparison):
        typer.echo(line)
    typer.echo(f"report: {paths['report']}  (figures in {paths['figures']}, tables in "
               f"{paths['tables']}); done in {time.perf_counter() - started:.1f}s")


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
