"""Command-line interface: ``attrscope compare`` (the main job), ``attribute``, ``show``, ``methods``."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from .cli_settings import with_method_settings

SIGNS = (
    "Sign conventions: 'denoising' runs the corrupted prompt and patches in clean activations "
    "(a positive score means the component restores the clean behaviour); 'noising' runs the "
    "clean prompt and patches in corrupted activations (a negative score means the component is "
    "needed for the behaviour). Every score is a change of the task's metric (by default "
    "logit(answer) - logit(distractor); see 'attrscope tasks'), the answer being the clean "
    "prompt's."
)


class _ErrorReportingGroup(TyperGroup):
    """Runs a command so that any exception ends in one line ``error: ...`` on stderr and a
    non-zero exit code (2 for bad input: ValueError/OSError; 1 otherwise), and any warning in
    one line ``warning: ...``. ``attrscope --debug`` (or ATTRSCOPE_DEBUG=1) shows tracebacks."""

    def invoke(self, ctx):
        debug = bool(ctx.params.get("debug")) or os.environ.get("ATTRSCOPE_DEBUG") == "1"
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _one_line_warning
            # the command name and its arguments (typer's vendored click keeps them private)
            args = [*getattr(ctx, "protected_args", getattr(ctx, "_protected_args", [])), *ctx.args]
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt:
                typer.echo(self._interrupted(ctx, args), err=True)
                raise typer.Exit(130) from None
            except Exception as e:
                # typer.Exit, usage errors and Ctrl-C keep typer's handling (typer vendors click
                # since 0.20, so its exception classes live in typer.* or click.*)
                if debug or type(e).__module__.split(".")[0] in ("typer", "click"):
                    raise
                typer.echo(f"error: {_describe(e)}", err=True)
                raise typer.Exit(2 if isinstance(e, (ValueError, OSError)) else 1) from None


    def _interrupted(self, ctx, args: list[str]) -> str:
        """What a Ctrl-C kept: the finished results and chunks in the command's --out."""
        from .checkpoint import kept_in

        command = self.get_command(ctx, args[0]) if args else None
        out = next((p.default for p in getattr(command, "params", []) if p.name == "out"), None)
        for i, arg in enumerate(args):
            if arg == "--out" and i + 1 < len(args):
                out = args[i + 1]
            elif arg.startswith("--out="):
                out = arg.split("=", 1)[1]
        if out is None:
            return "interrupted."
        results, chunks = kept_in(Path(out))
        return (f"interrupted: {results} finished result(s) and {chunks} finished chunk(s) of "
                f"the interrupted method are kept in {out}; run the same command again to "
                "resume (only unfinished chunks are computed).")


def _describe(e: Exception) -> str:
    """The message of ``e``; unexpected exception types are named, with the --debug hint."""
    if isinstance(e, (ValueError, OSError)):
        return str(e) or type(e).__name__
    return f"{type(e).__name__}: {e} (run 'attrscope --debug ...' for the traceback)"


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"warning: {message}", err=True)


app = typer.Typer(
    cls=_ErrorReportingGroup,
    help="attrscope: which attention heads and MLP neurons drive a behaviour, by exact activation "
    "patching (ap), attribution patching (atp) and layer integrated gradients (ig). " + SIGNS,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(debug: bool = typer.Option(False, "--debug", help="Show the full traceback "
                                               "of an error instead of one line.")) -> None:
    """Options before the command name (read by _ErrorReportingGroup)."""


def _check_out(out: Path) -> Path:
    """--out callback: refuse, before any work, a file or an unwritable location."""
    from .checks import check_output_dir

    return check_output_dir(out)


def _check_inputs(model: Optional[str], task: Optional[str], device: str, dtype: str,
                  metric: Optional[str] = None) -> None:
    """Refuse bad --model folders, --task names/files and --dtype/--device before loading."""
    from .models import check_dtype_device, check_model_folder, looks_like_path
    from .tasks import check_task

    check_dtype_device(dtype, device)
    if model is not None and looks_like_path(model):
        check_model_folder(model)
    if task is not None:
        check_task(task, metric)


# Options shared by the commands that run methods.
MODEL_OPTION = typer.Option(None, help="Hugging Face name (e.g. gpt2), local model folder or "
                            "attrscope-tasks; default: the embedded offline model that performs "
                            "the task (the IOI model for ioi, attrscope-tasks for the others).")
TASK_OPTION = typer.Option("ioi", help="Task name (see 'attrscope tasks') or a .csv/.jsonl file "
                           "with columns clean, corrupted, answer, distractor.")
METRIC_OPTION = typer.Option(None, help="Override the task's metric: logit_diff, logprob_diff "
                             "(answer sets) or prob_diff (probability mass); see 'attrscope tasks'.")
METHOD_OPTION = typer.Option("ap,atp,ig", help="Comma-separated methods (see 'attrscope methods'): "
                             "node methods ap, atp, ig, atpstar; edge methods eap, eap-ig, "
                             "eap-ig-act, exact.")
SKIP_INVALID_OPTION = typer.Option(False, help="Leave out invalid rows of a task file (length "
                                   "mismatch, multi-token answer, empty prompt, missing value) "
                                   "instead of stopping; they are reported and recorded.")


def _model_and_task(model: Optional[str], task: str, n: Optional[int], seed: int,
                    device: str, dtype: str, skip_invalid: bool = False,
                    metric: Optional[str] = None, compute_dtype: Optional[str] = None,
                    cache_device: Optional[str] = None):
    """The model (by default the embedded one that performs ``task``) and the task. Raises
    ValueError/OSError for bad names, files or rows, and for an ``n`` whose caches cannot fit
    (checked on 8 prompts before the task is built)."""
    from .models import load_model
    from .tasks import GENERATED_TASKS, load_task

    _check_inputs(model, task, device, dtype, metric)
    if model is None and task in GENERATED_TASKS:
        model = GENERATED_TASKS[task].model
    the_model = _load_model_loudly(load_model, model, device, dtype, compute_dtype=compute_dtype,
                                   cache_device=cache_device)
    _check_memory_early(the_model, task, n, seed, skip_invalid, metric)
    return the_model, load_task(task, the_model, n=n, seed=seed, skip_invalid=skip_invalid,
                                metric=metric)


def _load_model_loudly(load_model, model: Optional[str], device: str, dtype: str, **options):
    """load_model, saying what is loading and how long it took (on stderr: loading is silent
    for seconds otherwise)."""
    typer.echo(f"loading model {model or 'attrscope-default-ioi (embedded)'} on {device} "
               f"({dtype}) ...", err=True)
    started = time.perf_counter()
    the_model = load_model(model, device=device, dtype=dtype, **options)
    typer.echo(f"model loaded in {time.perf_counter() - started:.1f}s", err=True)
    return the_model


def _warn_if_long(the_model, the_task, passes: int) -> None:
    """Print the estimate of passes and time when the run looks longer than a minute."""
    from .estimate import LONG_RUN_S, describe, seconds_per_sample_pass

    seconds = passes * seconds_per_sample_pass(the_model, the_task.clean_tokens)
    if seconds > LONG_RUN_S:
        typer.echo(describe(passes, seconds), err=True)


def _check_memory_early(model, task: str, n: Optional[int], seed: int, skip_invalid: bool,
                        metric: Optional[str]) -> None:
    """Refuse a large ``n`` within seconds: the memory plan of heads and neurons, with the prompt
    length of 8 sample prompts, before building all n (MemoryPlanError, a ValueError)."""
    from .components import resolve_kinds
    from .engine import check_memory
    from .tasks import load_task

    if n is None or n <= 8:
        return
    sample = load_task(task, model, n=8, seed=seed, skip_invalid=skip_invalid, metric=metric)
    check_memory(model, n, int(sample.clean_tokens.shape[1]), resolve_kinds("heads,neurons"))


COMPUTE_DTYPE_OPTION = typer.Option(None, "--compute-dtype", help="dtype of attrscope's fast "
                                    "forwards (float32, bfloat16, ...); default float32 for a "
                                    "bfloat16/float16 model (accurate; costs a float32 copy of "
                                    "the weights), else the model's.")
CACHE_DEVICE_OPTION = typer.Option(None, "--cache-device", help="Keep the run caches on this "
                                   "device (e.g. cpu: host memory, streamed to the model's "
                                   "device layer by layer); default: the model's device.")


def _report_skipped(task) -> None:
    skipped = task.info.get("skipped")
    if skipped and skipped["count"]:
        typer.echo(f"skipped {skipped['count']} invalid row(s) of {task.name}:")
        for row, problems in list(skipped["rows"].items())[:20]:
            typer.echo(f"  row {row}: {'; '.join(problems)}")
        if skipped["count"] > 20:
            typer.echo(f"  ... and {skipped['count'] - 20} more (all listed in the result's "
                       "task info)")


RESUME_OPTION = typer.Option(
    True, help="Reuse a result in --out made with the same model, task, method and settings, and "
    "resume an interrupted run from its finished chunks (kept in <result>.parts/); "
    "--no-resume recomputes everything.")


def _resumable(compute, path: Path, resume: bool, model, task, method: str, direction: str,
               kinds, settings: dict):
    """``compute(checkpoint)`` saved at ``path``; with ``resume``, a finished result there with
    the same inputs is reused and an interrupted one resumed (:mod:`attrscope.checkpoint`)."""
    from .keys import attribution_key
    from .checkpoint import Checkpoint, reuse_or_compute
    from .components import KINDS

    if not resume:
        Checkpoint(path.with_suffix(".parts"), "").discard()
        scores = compute()
        scores.save(path)
        typer.echo(f"{method} {direction} ({scores.meta['seconds']:.1f}s) -> {path}")
        return scores
    key = attribution_key(model, task, method, direction, [KINDS[k] for k in kinds if k in KINDS],
                          settings)
    return reuse_or_compute(path, key, compute, typer.echo, f"{method} {direction}")[0]


def _checkpoint(folder: Path, model, task, what: str, direction: str, settings: dict):
    """A :class:`~attrscope.checkpoint.Checkpoint` in ``folder`` for the computation ``what``
    with these inputs; says so when it resumes an interrupted run's chunks."""
    from .keys import attribution_key
    from .checkpoint import Checkpoint

    checkpoint = Checkpoint(folder, attribution_key(model, task, what, direction, [], settings))
    if checkpoint.stored():
        typer.echo(f"{what}: resuming the interrupted run from {checkpoint.stored()} finished "
                   f"chunk(s) in {folder}")
    return checkpoint


def _search_checkpoint(folder: Path, model, inputs: dict):
    """The :class:`~attrscope.checkpoint.Checkpoint` of a counterfactual search with these
    inputs on this model (its steps are its chunks)."""
    import hashlib
    import json

    from .keys import model_fingerprint
    from .checkpoint import Checkpoint

    payload = json.dumps({"model": model_fingerprint(model), "what": "counterfactual", **inputs},
                         sort_keys=True, default=str)
    checkpoint = Checkpoint(folder, hashlib.sha256(payload.encode()).hexdigest())
    if checkpoint.stored():
        typer.echo(f"counterfactual: resuming the interrupted search from {checkpoint.stored()} "
                   f"finished step(s) in {folder}", err=True)
    return checkpoint


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
    from .normalize import describe

    if describe(scores.meta):
        typer.echo(f"  {describe(scores.meta)}")
    for kind in scores.kinds:
        typer.echo(f"  {kind:<8} top {k} by |mean score|: {_format_top(scores, kind, k)}")
    residuals = [v for name, v in scores.extras.items() if name.startswith("completeness_residual")]
    if residuals:
        worst = max(float(r.abs().max()) for r in residuals)
        typer.echo(f"  completeness residual (max |sum of attributions - metric change|): {worst:.2e}")


@app.command(help="Score every head and neuron with the chosen methods and directions, write one "
             "result file per method x direction into --out, and print the top components "
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
    components: str = typer.Option("heads,neurons", help="Comma-separated: heads, neurons."),
    out: Path = typer.Option(Path("attrscope-results"), help="Output folder.", callback=_check_out),
    n: Optional[int] = typer.Option(None, help="Number of prompt pairs (default: 50 for "
                                    "generated tasks, all rows of a file)."),
    seed: int = typer.Option(0, help="Seed of the generated task."),
    device: str = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1, auto."),
    dtype: str = typer.Option("float32", help="float32, float64, bfloat16 or float16."),
    compute_dtype: Optional[str] = COMPUTE_DTYPE_OPTION,
    cache_device: Optional[str] = CACHE_DEVICE_OPTION,
    top: int = typer.Option(5, help="How many top components to print per kind."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    normalize: Optional[str] = typer.Option(None, help="gap: divide each sample's scores by its "
                                            "clean - corrupted metric gap; gap-batch: by the "
                                            "batch's mean gap (scores become fractions of it)."),
    small_gap: str = typer.Option("refuse", help="With --normalize, samples whose |gap| is "
                                  "below 0.05 x the mean |gap|: refuse, or flag (NaN scores)."),
    resume: bool = RESUME_OPTION,
    method_settings: Optional[dict] = None,
) -> None:
    from . import attribute as run_method
    from .checks import check_finite_metrics
    from .cli_settings import check_given, parse_given, settings_for
    from .normalize import check_normalize
    from .components import KINDS, resolve_units
    from .engine import DIRECTIONS, Runner, parse_memory
    from .methods import METHODS

    methods = _split(method, METHODS, "--method")
    directions = _split(direction, DIRECTIONS, "--direction")
    kinds = _split(components, KINDS, "--components")
    check_given(method_settings, methods)

    started = time.perf_counter()
    try:
        cli_settings = parse_given(method_settings)
        check_normalize(normalize, small_gap=small_gap)
        the_model, the_task = _model_and_task(model, task, n, seed, device, dtype, skip_invalid,
                                              metric, compute_dtype, cache_device)
        # bad --units / --max-memory values are refused before any run
        resolve_units(cli_settings.get("units"), [KINDS[k] for k in kinds], the_model.cfg)
        if cli_settings.get("max_memory") is not None:
            parse_memory(cli_settings["max_memory"])
        if "atpstar" in methods:
            from .methods.atp_star import check_settings

            check_settings({**METHODS["atpstar"].defaults, **settings_for("atpstar", cli_settings)})
    except (ValueError, OSError) as e:  # bad task rows, unknown names, missing files
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    _report_skipped(the_task)
    typer.echo(f"model {the_model.cfg.model_name}: {the_model.cfg.n_layers} layers, "
               f"{the_model.cfg.n_heads} heads, {the_model.cfg.d_mlp} neurons per MLP; "
               f"task {the_task.name}: {the_task.n} prompt pairs")
    from .estimate import node_passes

    _warn_if_long(the_model, the_task, len(directions) * sum(
        node_passes(m, cli_settings, the_model.cfg, the_task.n, kinds) for m in methods))
    out.mkdir(parents=True, exist_ok=True)
    for d in directions:
        runner = Runner(the_model, the_task, d, [KINDS[k] for k in kinds])
        check_finite_metrics(runner, the_task)
        clean_metric = runner.metric_run if d == "noising" else runner.metric_source
        failing = int((clean_metric <= 0).sum())
        typer.echo(f"{d}: metric on run prompts {runner.metric_run.mean():+.3f}, on source "
                   f"prompts {runner.metric_source.mean():+.3f} (mean {the_task.metric_name}); "
                   f"the model fails {failing} of {the_task.n} clean prompts "
                   f"({the_task.metric_name} <= 0)")
        for m in methods:
            settings = settings_for(m, cli_settings)

            def compute(checkpoint=None):
                return run_method(the_model, the_task, m, d, kinds, show_progress=progress,
                                  runner=runner, normalize=normalize, small_gap=small_gap,
                                  checkpoint=checkpoint, **settings)

            try:
                scores = _resumable(compute, out / f"{m}-{d}.safetensors", resume, the_model,
                                    the_task, m, d, kinds, {**METHODS[m].defaults, **settings,
                                                            "normalize": normalize,
                                                            "small_gap": small_gap})
            except ValueError as e:  # a metric gap below the --normalize floor
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(2) from None
            print_summary(scores, top)
    typer.echo(f"done in {time.perf_counter() - started:.1f}s")


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
    components: str = typer.Option("heads,neurons", help="Comma-separated: heads, neurons."),
    out: Path = typer.Option(Path("attrscope-report"), help="Output folder.", callback=_check_out),
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
    device: str = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1, auto."),
    dtype: str = typer.Option("float32", help="float32, float64, bfloat16 or float16."),
    compute_dtype: Optional[str] = COMPUTE_DTYPE_OPTION,
    cache_device: Optional[str] = CACHE_DEVICE_OPTION,
    progress: bool = typer.Option(True, help="Show progress bars."),
    normalize: Optional[str] = typer.Option(None, help="Compare scores as fractions of the "
                                            "clean - corrupted metric gap: gap (each sample's "
                                            "own) or gap-batch (the batch's mean); samples below "
                                            "0.05 x the mean |gap| are refused."),
    method_settings: Optional[dict] = None,
) -> None:
    from .analysis.ablation import ABLATIONS
    from .analysis.compare import compare as run_compare
    from .analysis.report import summary_lines, write_report
    from .cli_settings import check_given, parse_given
    from .components import KINDS
    from .engine import DIRECTIONS, parse_memory
    from .methods import METHODS
    from .normalize import check_normalize

    methods = _split(method, METHODS, "--method")
    check_given(method_settings, methods)
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
        given = parse_given(method_settings)
        if given.get("max_memory") is not None:
            parse_memory(given["max_memory"])
        check_normalize(normalize)
        the_model, the_task = _model_and_task(model, task, n, seed, device, dtype, skip_invalid,
                                              metric, compute_dtype, cache_device)
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    _report_skipped(the_task)
    typer.echo(f"model {the_model.cfg.model_name}, task {the_task.name}: {the_task.n} prompt "
               f"pairs; methods {', '.join(methods)}; directions {', '.join(directions)}")
    from .estimate import node_passes

    _warn_if_long(the_model, the_task, len(directions) * sum(
        node_passes(m, given, the_model.cfg, the_task.n, kinds) for m in methods))
    try:
        comparison = run_compare(
            the_model, the_task, methods, directions, kinds, k=k, ablation=ablation,
            n_boot=n_boot, n_random=n_random, seed=seed, min_asymmetry=min_asymmetry,
            method_settings=given,
            cache_dir=from_sweep / "results" if from_sweep else out / "results" if cache else None,
            show_progress=progress, log=typer.echo, normalize=normalize)
    except ValueError as e:  # a metric gap below the --normalize floor
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"writing the report (figures, tables) into {out} ...")
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


@app.command(help="List the tasks: name, metric, the embedded model that performs it, and one "
             "sample row (clean, corrupted, answer, distractor). --task also takes a .csv/.jsonl "
             "file: columns clean, corrupted (or corrupted_hard), answer and distractor as "
             "strings (JSON lists for answer sets), or the token-id columns correct_idx / "
             "incorrect_idx of the seed study (with a warning: ids are tokenizer-specific).")
def tasks(seed: int = typer.Option(0, help="Seed of the sample rows.")) -> None:
    from .tasks import GENERATED_TASKS, METRICS

    for name, spec in GENERATED_TASKS.items():
        pair = spec.generate(1, seed)[0]
        typer.echo(f"{name}  [metric {spec.metric}: {METRICS[spec.metric]}; model "
                   f"{spec.model or 'default (embedded IOI model)'}]")
        typer.echo(f"  {spec.description}")
        typer.echo(f"  clean:      {pair.clean!r}\n  corrupted:  {pair.corrupted!r}")
        typer.echo(f"  answer:     {_show_answers(pair.answer)}\n"
                   f"  distractor: {_show_answers(pair.distractor)}\n")


def _show_answers(value) -> str:
    if isinstance(value, tuple) and len(value) > 6:
        return f"{len(value)} tokens: " + ", ".join(map(repr, value[:3])) + ", ..., " + repr(value[-1])
    return ", ".join(map(repr, value)) if isinstance(value, tuple) else repr(value)


@app.command(help="List the attribution methods, their settings and sign conventions. " + SIGNS)
def methods() -> None:
    from .methods import METHODS

    for spec in METHODS.values():
        settings = ", ".join(f"--{k.replace('_', '-')}={v}" for k, v in spec.defaults.items())
        typer.echo(f"{spec.name:<10} ({spec.granularity}) {spec.summary}\n"
                   f"           sign: {spec.sign}\n           settings: {settings}")


@app.command(help="Score every edge of the model's graph (input, each head's q/k/v inputs, "
             "MLPs, logits) with eap, eap-ig, eap-ig-act or exact edge patching in one direction; print the "
             "top edges as '5:5 -> 8:6 (q)' with their mean scores, and write the result "
             "(edges-<method>-<direction>.safetensors) and the top edges as JSON into --out. "
             "The circuit of the top --top edges (or of |mean score| >= --threshold), pruned so "
             "that every edge is connected to the input and the logits, is saved as JSON and "
             "PNG (-circuit.json, -circuit.png) and its faithfulness is printed: the clean run "
             "(or --circuit-run corrupted) with every edge outside it ablated (--ablation), f = (m(circuit) - m(empty)) / "
             "(m(model) - m(empty)). "
             "A score is metric(run with the edge patched) - metric(run). Each method's "
             "settings are options (see 'attrscope methods'). " + SIGNS)
@with_method_settings("edge")
def edges(
    model: Optional[str] = MODEL_OPTION,
    task: str = TASK_OPTION,
    metric: Optional[str] = METRIC_OPTION,
    method: str = typer.Option("eap", help="eap, eap-ig (inputs interpolation), eap-ig-act "
                                "(activations interpolation) or exact."),
    direction: str = typer.Option("denoising", help="denoising or noising."),
    n: Optional[int] = typer.Option(None, help="Number of prompt pairs (default: 50 for "
                                    "generated tasks, all rows of a file)."),
    seed: int = typer.Option(0, help="Seed of the generated task."),
    top: int = typer.Option(20, help="How many top edges (by |mean score|) to print and save; "
                            "the circuit is made of them unless --threshold is given."),
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
    out: Path = typer.Option(Path("attrscope-results"), help="Output folder.", callback=_check_out),
    device: str = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1, auto."),
    dtype: str = typer.Option("float32", help="float32, float64, bfloat16 or float16."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    resume: bool = RESUME_OPTION,
    method_settings: Optional[dict] = None,
) -> None:
    import json

    from .analysis.ablation import ABLATIONS
    from .cli_settings import check_given
    from .edges.graph import colon_label
    from .edges.methods import attribute_edges
    from .engine import DIRECTIONS
    from .methods import methods_of

    edge_methods = methods_of("edge")
    the_method = _split(method, edge_methods, "--method")[0]
    the_direction = _split(direction, DIRECTIONS, "--direction")[0]
    the_ablation = _split(ablation, ABLATIONS, "--ablation")[0]
    the_run = _split(circuit_run, ("clean", "corrupted"), "--circuit-run")[0]
    check_given(method_settings, [the_method])
    settings = {**edge_methods[the_method].defaults, **method_settings}
    if top < 1:
        raise typer.BadParameter(f"{top}: must be at least 1.", param_hint="--top")
    if threshold is not None and not threshold >= 0:
        raise typer.BadParameter(f"{threshold}: must be >= 0.", param_hint="--threshold")
    try:
        the_model, the_task = _model_and_task(model, task, n, seed, device, dtype, metric=metric)
        from .edges.graph import Graph
        from .estimate import edge_passes

        _warn_if_long(the_model, the_task, edge_passes(the_method, Graph.of_model(the_model),
                                                       the_task.n, settings.get("steps", 1)))
        path = out / f"edges-{the_method}-{the_direction}.safetensors"
        scores = _resumable(
            lambda checkpoint=None: attribute_edges(the_model, the_task, the_method, the_direction,
                                                    show_progress=progress, checkpoint=checkpoint,
                                                    **method_settings),
            path, resume, the_model, the_task, the_method, the_direction, [], settings)
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    graph = scores.graph
    typer.echo(f"{the_method} {the_direction}: {graph.n_edges} edges, {the_task.n} prompt pairs "
               f"({scores.meta['seconds']:.1f}s)")
    best = scores.top("edges", top)
    for label, value in best:
        typer.echo(f"{colon_label(label):<24} {value:+.4f}")
    listing = out / f"edges-{the_method}-{the_direction}-top.json"
    listing.write_text(json.dumps({
        "method": the_method, "direction": the_direction, "graph": graph.as_dict(),
        "n_edges": graph.n_edges, "sign_convention": scores.meta["sign_convention"],
        "top": [{"edge": colon_label(label), "label": label, "mean_score": value}
                for label, value in best]}, indent=2))
    typer.echo(f"-> {path}\n-> {listing}")
    _edges_circuit(the_model, the_task, scores, out / f"edges-{the_method}-{the_direction}",
                   top, threshold, the_ablation, faithfulness, curve,
                   settings["max_batch_rows"], the_run)


def _edges_circuit(the_model, the_task, scores, stem: Path, top: int,
                   threshold: Optional[float], ablation: str, faithfulness: bool, curve: bool,
                   max_batch_rows: int, run: str = "clean") -> None:
    """Select, evaluate and save the circuit of ``attrscope edges``."""
    from .edges.circuit import Circuit, CircuitEvaluator, plot_circuit

    circuit = Circuit.from_scores(scores, top=None if threshold is not None else top,
                                  threshold=threshold)
    typer.echo(f"circuit ({circuit.rule}): {len(circuit.selected)} edges selected, "
               f"{len(circuit.edges)} connected to input and logits, "
               f"{len(circuit.nodes())} nodes")
    if faithfulness or curve:
        evaluator = CircuitEvaluator.for_task(the_model, the_task, ablation, run=run,
                                              max_batch_rows=max_batch_rows or 64)
    if faithfulness:
        circuit.faithfulness = report = {**evaluator.faithfulness(circuit), "run": run}
        typer.echo(f"faithfulness ({ablation} ablation outside the circuit, {run} run, means over "
                   f"samples): m(circuit) {report['m_circuit']:+.4f}  m(model) "
                   f"{report['m_model']:+.4f}  m(empty) {report['m_empty']:+.4f}  "
                   f"f {report['f']:.4f}")
    result = None
    if curve:
        result = evaluator.curve(scores.mean("edges")[0])
        for fraction, k, size, f in zip(result["fractions"], result["selected"],
                                        result["sizes"], result["f"]):
            typer.echo(f"  top {100 * fraction:g} % ({k} selected, {size} connected): f {f:.4f}")
        typer.echo(f"  CPR {result['cpr']:.4f} [{result['cpr_low']:.4f}, {result['cpr_high']:.4f}]  "
                   f"CMD {result['cmd']:.4f} [{result['cmd_low']:.4f}, {result['cmd_high']:.4f}] "
                   "(95 % bootstrap intervals over prompts)")
    json_path = circuit.save_json(stem.with_name(stem.name + "-circuit.json"))
    png_path = plot_circuit(circuit, stem.with_name(stem.name + "-circuit.png"),
                            title=f"{scores.method} {scores.direction}: {circuit.rule}, "
                                  f"{len(circuit.edges)} edges (blue +, red -; q solid, "
                                  "k dashed, v dotted)")
    from .analysis.html_reports import write_edges_report

    html_path = write_edges_report(stem.with_name(stem.name + ".html"), scores, circuit, result)
    typer.echo(f"-> {json_path}\n-> {png_path}\n-> {html_path}")
    if circuit.graph.group_size == 1:  # the EAP-IG / MIB format has no grouped-query inputs
        from .edges.mib import save_mib_json

        mib_path = save_mib_json(stem.with_name(stem.name + "-mib.json"), scores, circuit,
                                 d_model=the_model.cfg.d_model)
        typer.echo(f"-> {mib_path} (EAP-IG / MIB graph: every edge's score, circuit in_graph)")


def _load_or_exit(model: Optional[str], device: str, dtype: str):
    from .models import load_model

    try:
        _check_inputs(model, None, device, dtype)
        return _load_model_loudly(load_model, model, device, dtype)
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _parse_components_or_exit(labels: list[str], the_model, kind: str):
    from .analysis.path import parse_component

    try:
        return [parse_component(label, the_model, kind) for label in labels]
    except ValueError as e:
        typer.echo(f"error: --component: {e}", err=True)
        raise typer.Exit(2) from None


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
    seed: int = typer.Option(0, help="Seed of the generated task."),
    direction: str = typer.Option("denoising", help="denoising (alpha=0 is the corrupted run) or "
                                  "noising (alpha=0 is the clean run)."),
    n_steps: int = typer.Option(50, help="Gauss-Legendre steps on the path (plus both ends)."),
    split_r: float = typer.Option(0.5, help="Fraction r of the output range for split IG."),
    saturation_threshold: float = typer.Option(0.1, help="Saturation: fraction of the path "
                                               "where |dm/dalpha| < this x its maximum."),
    survey: bool = typer.Option(True, "--survey/--no-survey", help="Also analyse every head and "
                                "correlate gradient/output range with exact patching scores."),
    max_batch_rows: int = typer.Option(1024, help="Most rows per forward pass."),
    device: str = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1, auto."),
    dtype: str = typer.Option("float32", help="float32, float64, bfloat16 or float16."),
    out: Path = typer.Option(Path("attrscope-path"), help="Output folder.", callback=_check_out),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    from .analysis import path as path_analysis
    from .analysis import path_output
    from .checks import check_finite_metrics
    from .components import HEADS
    from .engine import DIRECTIONS, Runner

    _split(kind, ("heads", "neurons"), "--kind")
    _split(direction, DIRECTIONS, "--direction")
    try:
        the_model, the_task = _model_and_task(model, task, n, seed, device, dtype, metric=metric)
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    components = _parse_components_or_exit(component, the_model, kind)
    out.mkdir(parents=True, exist_ok=True)
    kinds = list({c.kind.name: c.kind for c in components}.values())
    if survey and HEADS not in kinds:
        kinds.append(HEADS)
    runner = Runner(the_model, the_task, direction, kinds)
    check_finite_metrics(runner, the_task)
    paths = path_analysis.component_paths(the_model, the_task, components, direction, n_steps,
                                          max_batch_rows, runner=runner, show_progress=progress)
    summaries = [p.summary(split_r, saturation_threshold) for p in paths]
    typer.echo(f"{direction}, {the_task.n} prompt pairs, {n_steps} steps (means over samples):")
    for row in summaries:
        typer.echo("  " + "  ".join(f"{k} {v:+.4g}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in row.items()))
    written = [path_output.write_csv(out / "path-steps.csv", path_output.path_step_rows(paths)),
               path_output.write_csv(out / "path-components.csv", summaries),
               path_output.plot_paths(paths, out / "path-curves.png")]
    if survey:
        checkpoint = _checkpoint(out / "path-survey.parts", the_model, the_task, "path-survey",
                                 direction, {"kind": "heads", "n_steps": n_steps})
        result = path_analysis.survey(the_model, the_task, direction, "heads", n_steps,
                                      max_batch_rows, split_r, saturation_threshold,
                                      runner=runner, show_progress=progress, checkpoint=checkpoint)
        checkpoint.discard()
        written.append(path_output.write_csv(out / "path-survey.csv", result.rows))
        written.append(path_output.write_csv(
            out / "path-correlations.csv",
            [{"correlation": k, "value": v, "over": f"{len(result.rows)} heads"}
             for k, v in result.correlations.items()]))
        written.append(path_output.plot_survey(result, out / "path-survey.png"))
        typer.echo(f"all {len(result.rows)} heads, correlation with the mean exact patching score:")
        for name, value in result.correlations.items():
            typer.echo(f"  {name}: {value:+.3f}")
    from .analysis.html_reports import write_path_report

    settings = {"model": the_model.cfg.model_name, "task": the_task.name, "n_steps": n_steps,
                "split_r": split_r, "saturation_threshold": saturation_threshold}
    written.append(write_path_report(out / "path.html", paths, summaries,
                                     result if survey else None, settings))
    for file in written:
        typer.echo(f"-> {file}")


@app.command(help="Search a corrupted prompt, of the clean prompt's token length, with at most "
             "--max-changes tokens changed and perplexity at most --max-perplexity-ratio times "
             "the clean prompt's, that gives the chosen component the highest patching score "
             "(denoising: patch its clean activation into the found prompt's run; noising: patch "
             "the found prompt's activation into the clean run and maximise the drop). "
             "Gradient-guided token substitutions, evaluated exactly; deterministic given --seed. "
             "Writes CSV tables and a PNG figure into --out. " + SIGNS)
def counterfactual(
    component: str = typer.Option(..., help="Target component as LAYER.UNIT, e.g. 1.2."),
    prompt: str = typer.Option(..., help="The clean prompt (ends right before the answer)."),
    answer: str = typer.Option(..., help="Correct next token of the clean prompt, e.g. ' Mary'."),
    distractor: str = typer.Option(..., help="The competing token, e.g. ' John'."),
    kind: str = typer.Option("heads", help="What --component names: heads or neurons."),
    standard: Optional[str] = typer.Option(None, help="A corrupted prompt to compare with (e.g. "
                                           "the task's usual corruption)."),
    start: Optional[str] = typer.Option(None, help="Prompt to start the search from (default: "
                                        "the clean prompt)."),
    direction: str = typer.Option("denoising", help="denoising or noising."),
    max_changes: int = typer.Option(3, help="Most token positions that may differ from the clean prompt."),
    max_perplexity_ratio: float = typer.Option(2.0, help="Most perplexity of the found prompt, "
                                               "as a multiple of the clean prompt's."),
    n_iters: int = typer.Option(20, help="Most search steps."),
    top_k: int = typer.Option(16, help="Tokens per position kept by the gradient ranking."),
    n_candidates: int = typer.Option(64, help="Substitutions evaluated exactly per beam and step."),
    beam: int = typer.Option(4, help="Prompts kept between steps."),
    patience: int = typer.Option(3, help="Stop after this many steps without improvement."),
    seed: int = typer.Option(0, help="Seed of the random part of the candidate draw."),
    model: Optional[str] = typer.Option(None, help="Hugging Face name or local model folder; "
                                        "default: the embedded offline IOI model."),
    device: str = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1, auto."),
    dtype: str = typer.Option("float32", help="float32, float64, bfloat16 or float16."),
    out: Path = typer.Option(Path("attrscope-counterfactual"), help="Output folder.", callback=_check_out),
) -> None:
    from .analysis import path_output
    from .analysis.counterfactual import find_counterfactual
    from .analysis.html_reports import write_counterfactual_report
    from .engine import DIRECTIONS

    _split(kind, ("heads", "neurons"), "--kind")
    _split(direction, DIRECTIONS, "--direction")
    the_model = _load_or_exit(model, device, dtype)
    (target,) = _parse_components_or_exit([component], the_model, kind)
    settings = dict(max_changes=max_changes, max_perplexity_ratio=max_perplexity_ratio,
                    n_iters=n_iters, top_k=top_k, n_candidates=n_candidates, beam=beam,
                    patience=patience, seed=seed, start=start, standard=standard)
    checkpoint = _search_checkpoint(out / "counterfactual.parts", the_model, {
        "prompt": prompt, "answer": answer, "distractor": distractor, "component": target.label,
        "kind": kind, "direction": direction, **settings})
    try:
        result = find_counterfactual(
            the_model, prompt, answer, distractor, target, direction, **settings,
            log=lambda line: typer.echo(line, err=True), checkpoint=checkpoint)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    checkpoint.discard()
    out.mkdir(parents=True, exist_ok=True)
    typer.echo(f"clean:  {result.clean!r}")
    typer.echo(f"found:  {result.corrupted!r}")
    typer.echo(f"target {result.kind[:-1]} {result.component} {direction} score {result.score:+.4f}"
               f" with {result.n_changed} changed tokens (positions {result.changed_positions}); "
               f"perplexity {result.perplexity_clean:.3f} -> {result.perplexity:.3f} "
               f"(x{result.perplexity_ratio:.3f})")
    if result.standard is not None:
        typer.echo(f"standard corruption {result.standard!r}: target score {result.standard_score:+.4f}")
    rows = path_output.counterfactual_score_rows(result)
    others = sorted((r for r in rows if not r["target"]), key=lambda r: -abs(r["score_found"]))[:5]
    typer.echo("largest other components with the found prompt: " +
               "  ".join(f"{r['component']} {r['score_found']:+.3f}" for r in others))
    written = [
        path_output.write_csv(out / "counterfactual.csv", [path_output.counterfactual_summary(result)]),
        path_output.write_csv(out / "counterfactual-scores.csv", rows),
        path_output.write_csv(out / "counterfactual-history.csv", result.history),
        path_output.plot_counterfactual(result, out / "counterfactual-scores.png"),
        write_counterfactual_report(out / "counterfactual.html", result, the_model),
    ]
    for file in written:
        typer.echo(f"-> {file}")


def _sweep_grid(grid_file: Optional[Path], overrides: dict, settings: list[str]) -> dict:
    """The grid of ``attrscope sweep``: the TOML file's, with the command line's values on top."""
    from .sweep import load_grid, parse_setting

    grid = load_grid(grid_file) if grid_file is not None else {}
    grid.update({k: v for k, v in overrides.items() if v not in (None, [])})
    for text in settings:
        method, name, value = parse_setting(text)
        grid.setdefault("settings", {}).setdefault(method, {})[name] = value
    return grid


@app.command(help="Run a grid of jobs (models x tasks x seeds x methods x directions) as Ray "
             "tasks, from a TOML --grid file and/or the options below (options win). Node "
             "methods: ap, atp, ig, atpstar; edge methods: eap, eap-ig, eap-ig-act, exact. "
             "Results go to the keyed store --out (a folder or an fsspec URL such as "
             "s3://bucket/sweep): a rerun skips finished jobs, 'attrscope compare --from-sweep' "
             "and attrscope.sweep.load_sweep read them. Prints a summary table and writes "
             "sweep.json; exits 1 when a job failed. " + SIGNS)
def sweep(
    grid: Optional[Path] = typer.Option(None, help="TOML grid file (see docs/scaling.md)."),
    model: Optional[list[str]] = typer.Option(None, help="Model (repeatable); 'default': the "
                                              "embedded model that performs the task."),
    task: Optional[list[str]] = typer.Option(None, help="Task name or file (repeatable)."),
    method: Optional[str] = typer.Option(None, help="Comma-separated methods."),
    direction: Optional[str] = typer.Option(None, help="Comma-separated: denoising, noising."),
    components: Optional[str] = typer.Option(None, help="Comma-separated: heads, neurons."),
    n: Optional[int] = typer.Option(None, help="Prompt pairs per task."),
    seed: Optional[list[int]] = typer.Option(None, help="Task seed (repeatable)."),
    set_: list[str] = typer.Option([], "--set", help="A method's setting, METHOD.SETTING=VALUE "
                                   "(repeatable), e.g. ig.n_steps=20."),
    device: Optional[str] = typer.Option(None, help="Torch device of each job (default cpu)."),
    dtype: Optional[str] = typer.Option(None, help="float32 (default), float64, bfloat16..."),
    out: Optional[str] = typer.Option(None, help="Result store: folder or fsspec URL "
                                      "(default: [ray] store of the grid, else attrscope-sweep)."),
    ray_address: Optional[str] = typer.Option(None, help="local (an in-process cluster, the "
                                              "default), auto (this machine's cluster) or "
                                              "ray://host:port."),
    num_cpus: Optional[float] = typer.Option(None, help="CPUs per job (default 1)."),
    num_gpus: Optional[float] = typer.Option(None, help="GPUs per job (default 0)."),
    progress: bool = typer.Option(True, help="Show the progress line."),
) -> None:
    from .sweep import expand_grid, require_ray, run_sweep, summary_table

    split = {"methods": method, "directions": direction, "components": components}
    overrides = {"models": model, "tasks": task, "seeds": seed, "n": n, "device": device,
                 "dtype": dtype, **{k: [x.strip() for x in v.split(",") if x.strip()]
                                    for k, v in split.items() if v}}
    try:
        the_grid = _sweep_grid(grid, overrides, set_)
        jobs = expand_grid(the_grid, "command line" if grid is None else f"grid file {grid}")
        require_ray()
    except (ValueError, ImportError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    ray_opts = the_grid.get("ray", {})
    outcome = run_sweep(
        jobs, out or ray_opts.get("store", "attrscope-sweep"),
        address=ray_address or ray_opts.get("address", "local"),
        num_cpus=num_cpus if num_cpus is not None else ray_opts.get("num_cpus", 1),
        num_gpus=num_gpus if num_gpus is not None else ray_opts.get("num_gpus", 0),
        show_progress=progress, log=typer.echo, grid=the_grid)
    for line in summary_table(outcome):
        typer.echo(line)
    if outcome.count("failed"):
        raise typer.Exit(1)


@app.command("shard", help="Exact work split across Ray actors, each holding one model "
             "replica: ap by units of each kind, or exact edge patching by edge ranges; the merged "
             "result is bit-identical to one process with the same --max-batch-rows (recorded in "
             "it) and is written to --out. A killed worker is restarted by Ray and its shards "
             "rerun. " + SIGNS)
def shard_command(
    method: str = typer.Option("ap", help="ap or exact."),
    model: Optional[str] = MODEL_OPTION,
    task: str = TASK_OPTION,
    metric: Optional[str] = METRIC_OPTION,
    direction: str = typer.Option("denoising", help="denoising or noising."),
    components: str = typer.Option("heads,neurons", help="ap only: heads, neurons."),
    n: Optional[int] = typer.Option(None, help="Number of prompt pairs."),
    seed: int = typer.Option(0, help="Seed of the generated task."),
    actors: int = typer.Option(2, help="Ray actors (model replicas)."),
    num_cpus: float = typer.Option(1, help="CPUs per actor."),
    num_gpus: float = typer.Option(0, help="GPUs per actor (1: one replica per GPU)."),
    max_memory: Optional[str] = typer.Option(None, help="Memory a pass may use on an actor, e.g. "
                                             "20GB (default 1GB); decides the rows per pass and so "
                                             "the shard size."),
    max_batch_rows: Optional[int] = typer.Option(None, help="Rows per pass, instead of "
                                                 "--max-memory."),
    shards_per_actor: int = typer.Option(4, help="About this many shards per actor."),
    ray_address: str = typer.Option("local", help="local, auto or ray://host:port."),
    device: str = typer.Option("cpu", help="Torch device of each actor (cuda with --num-gpus)."),
    dtype: str = typer.Option("float32", help="float32, float64, bfloat16 or float16."),
    out: Path = typer.Option(Path("attrscope-results"), help="Output folder."),
    top: int = typer.Option(10, help="How many top components to print per kind."),
) -> None:
    from .components import KINDS
    from .engine import DIRECTIONS
    from .shard import sharded
    from .sweep import Job, require_ray

    the_method = _split(method, ("ap", "exact"), "--method")[0]
    the_direction = _split(direction, DIRECTIONS, "--direction")[0]
    kinds = ("edges",) if the_method == "exact" else tuple(_split(components, KINDS, "--components"))
    job = Job(model or "default", task, the_method, the_direction, kinds, n, seed, device=device,
              dtype=dtype, metric=metric)
    try:
        require_ray()
        scores = sharded(job, actors, num_cpus=num_cpus, num_gpus=num_gpus, address=ray_address,
                         max_batch_rows=max_batch_rows, max_memory=max_memory,
                         shards_per_actor=shards_per_actor, log=typer.echo)
    except (ValueError, OSError, ImportError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    stem = f"edges-exact-{the_direction}" if the_method == "exact" else f"ap-{the_direction}"
    path = scores.save(out / f"{stem}.safetensors")
    typer.echo(f"{scores!r} in {scores.meta['sharding']['seconds']:.1f}s "
               f"({scores.meta['sharding']}) -> {path}")
    print_summary(scores, top)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
