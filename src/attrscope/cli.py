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
    "needed for the behaviour). Every score is a change of the task's metric (by default "
    "logit(answer) - logit(distractor); see 'attrscope tasks'), the answer being the clean "
    "prompt's."
)

app = typer.Typer(
    help="attrscope: which attention heads and MLP neurons drive a behaviour, by exact activation "
    "patching (ap), attribution patching (atp) and layer integrated gradients (ig). " + SIGNS,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# Options shared by the commands that run methods.
MODEL_OPTION = typer.Option(None, help="Hugging Face name (e.g. gpt2), local model folder or "
                            "attrscope-tasks; default: the embedded offline model that performs "
                            "the task (the IOI model for ioi, attrscope-tasks for the others).")
TASK_OPTION = typer.Option("ioi", help="Task name (see 'attrscope tasks') or a .csv/.jsonl file "
                           "with columns clean, corrupted, answer, distractor.")
METRIC_OPTION = typer.Option(None, help="Override the task's metric: logit_diff, logprob_diff "
                             "(answer sets) or prob_diff (probability mass); see 'attrscope tasks'.")
METHOD_OPTION = typer.Option("ap,atp,ig", help="Comma-separated methods: ap, atp, ig, atpstar.")
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

    if model is None and task in GENERATED_TASKS:
        model = GENERATED_TASKS[task].model
    the_model = load_model(model, device=device, dtype=dtype, compute_dtype=compute_dtype,
                           cache_device=cache_device)
    _check_memory_early(the_model, task, n, seed, skip_invalid, metric)
    return the_model, load_task(task, the_model, n=n, seed=seed, skip_invalid=skip_invalid,
                                metric=metric)


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
    skip_invalid: bool = SKIP_INVALID_OPTION,
    metric: Optional[str] = METRIC_OPTION,
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
    qk_fix: bool = typer.Option(True, help="atpstar only: the QK fix (exact attention pattern "
                                "for query and key patches)."),
    graddrop: bool = typer.Option(True, help="atpstar only: GradDrop (1/(L-1) sum over dropped "
                                  "layers of |estimate|, signed as the undropped estimate)."),
    head_score: str = typer.Option("joint", help="atpstar only: a head's score: joint (q, k, v "
                                   "patched together; the QK fix of that patch is atp's score) or "
                                   "paths (value + query + key terms, each patched alone)."),
    device: str = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1, auto."),
    dtype: str = typer.Option("float32", help="float32, float64, bfloat16 or float16."),
    compute_dtype: Optional[str] = COMPUTE_DTYPE_OPTION,
    cache_device: Optional[str] = CACHE_DEVICE_OPTION,
    top: int = typer.Option(5, help="How many top components to print per kind."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    from . import attribute as run_method
    from .components import KINDS, parse_unit_spec, resolve_units
    from .engine import DIRECTIONS, Runner, parse_memory
    from .methods import METHODS

    methods = _split(method, METHODS, "--method")
    directions = _split(direction, DIRECTIONS, "--direction")
    kinds = _split(components, KINDS, "--components")
    cli_settings = {"n_steps": n_steps, "baseline": baseline, "max_batch_rows": max_batch_rows,
                    "max_memory": max_memory, "qk_fix": qk_fix, "graddrop": graddrop,
                    "head_score": head_score}

    started = time.perf_counter()
    try:
        if units is not None:
            cli_settings["units"] = parse_unit_spec(units)
        the_model, the_task = _model_and_task(model, task, n, seed, device, dtype, skip_invalid,
                                              metric, compute_dtype, cache_device)
        # bad --units / --max-memory values are refused before any run
        resolve_units(cli_settings.get("units"), [KINDS[k] for k in kinds], the_model.cfg)
        if max_memory is not None:
            parse_memory(max_memory)
        if "atpstar" in methods:
            from .methods.atp_star import check_settings

            check_settings({k: cli_settings[k] for k in ("qk_fix", "graddrop", "head_score")})
    except (ValueError, OSError) as e:  # bad task rows, unknown names, missing files
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    _report_skipped(the_task)
    typer.echo(f"model {the_model.cfg.model_name}: {the_model.cfg.n_layers} layers, "
               f"{the_model.cfg.n_heads} heads, {the_model.cfg.d_mlp} neurons per MLP; "
               f"task {the_task.name}: {the_task.n} prompt pairs")
    out.mkdir(parents=True, exist_ok=True)
    for d in directions:
        runner = Runner(the_model, the_task, d, [KINDS[k] for k in kinds])
        clean_metric = runner.metric_run if d == "noising" else runner.metric_source
        failing = int((clean_metric <= 0).sum())
        typer.echo(f"{d}: metric on run prompts {runner.metric_run.mean():+.3f}, on source "
                   f"prompts {runner.metric_source.mean():+.3f} (mean {the_task.metric_name}); "
                   f"the model fails {failing} of {the_task.n} clean prompts "
                   f"({the_task.metric_name} <= 0)")
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
    skip_invalid: bool = SKIP_INVALID_OPTION,
    metric: Optional[str] = METRIC_OPTION,
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
    max_memory: Optional[str] = typer.Option(None, help="Peak memory the batched passes may use, "
                                             "e.g. 4GB; default: half the memory free."),
    max_batch_rows: Optional[int] = typer.Option(None, help="Rows per forward pass, overriding "
                                                 "what --max-memory derives."),
    cache: bool = typer.Option(True, help="Reuse results in --out/results computed with the same "
                               "model, task, method, direction and settings."),
    device: str = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1, auto."),
    dtype: str = typer.Option("float32", help="float32, float64, bfloat16 or float16."),
    compute_dtype: Optional[str] = COMPUTE_DTYPE_OPTION,
    cache_device: Optional[str] = CACHE_DEVICE_OPTION,
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    from .analysis.ablation import ABLATIONS
    from .analysis.compare import compare as run_compare
    from .analysis.report import summary_lines, write_report
    from .components import KINDS
    from .engine import DIRECTIONS, parse_memory
    from .methods import METHODS

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
        if max_memory is not None:
            parse_memory(max_memory)
        the_model, the_task = _model_and_task(model, task, n, seed, device, dtype, skip_invalid,
                                              metric, compute_dtype, cache_device)
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    _report_skipped(the_task)
    typer.echo(f"model {the_model.cfg.model_name}, task {the_task.name}: {the_task.n} prompt "
               f"pairs; methods {', '.join(methods)}; directions {', '.join(directions)}")
    comparison = run_compare(
        the_model, the_task, methods, directions, kinds, k=k, ablation=ablation, n_boot=n_boot,
        n_random=n_random, seed=seed,
        method_settings={"n_steps": n_steps, "max_batch_rows": max_batch_rows,
                         "max_memory": max_memory},
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
        settings = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
        typer.echo(f"{spec.name:<7} {spec.summary}\n        sign: {spec.sign}\n        settings: {settings}")


@app.command(help="Score every edge of the model's graph (input, each head's q/k/v inputs, "
             "MLPs, logits) with eap, eap-ig, eap-ig-act or exact edge patching in one direction; print the "
             "top edges as '5:5 -> 8:6 (q)' with their mean scores, and write the result "
             "(edges-<method>-<direction>.safetensors) and the top edges as JSON into --out. "
             "The circuit of the top --top edges (or of |mean score| >= --threshold), pruned so "
             "that every edge is connected to the input and the logits, is saved as JSON and "
             "PNG (-circuit.json, -circuit.png) and its faithfulness is printed: the clean run "
             "(or --circuit-run corrupted) with every edge outside it ablated (--ablation), f = (m(circuit) - m(empty)) / "
             "(m(model) - m(empty)). "
             "A score is metric(run with the edge patched) - metric(run). " + SIGNS)
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
    steps: int = typer.Option(20, help="Quadrature nodes (Gauss-Legendre) of eap-ig and eap-ig-act."),
    max_batch_rows: int = typer.Option(64, help="Most rows per forward pass."),
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
    out: Path = typer.Option(Path("attrscope-results"), help="Output folder."),
    device: str = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1, auto."),
    dtype: str = typer.Option("float32", help="float32, float64, bfloat16 or float16."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    import json

    from .analysis.ablation import ABLATIONS
    from .edges.graph import colon_label
    from .edges.methods import attribute_edges
    from .engine import DIRECTIONS
    from .methods import methods_of

    edge_methods = methods_of("edge")
    the_method = _split(method, edge_methods, "--method")[0]
    the_direction = _split(direction, DIRECTIONS, "--direction")[0]
    the_ablation = _split(ablation, ABLATIONS, "--ablation")[0]
    the_run = _split(circuit_run, ("clean", "corrupted"), "--circuit-run")[0]
    if top < 1:
        raise typer.BadParameter(f"{top}: must be at least 1.", param_hint="--top")
    if threshold is not None and not threshold >= 0:
        raise typer.BadParameter(f"{threshold}: must be >= 0.", param_hint="--threshold")
    try:
        the_model, the_task = _model_and_task(model, task, n, seed, device, dtype, metric=metric)
        given = {"steps": steps, "max_batch_rows": max_batch_rows}
        settings = {k: v for k, v in given.items() if k in edge_methods[the_method].defaults}
        scores = attribute_edges(the_model, the_task, the_method, the_direction,
                                 show_progress=progress, **settings)
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    graph = scores.graph
    typer.echo(f"{the_method} {the_direction}: {graph.n_edges} edges, {the_task.n} prompt pairs "
               f"({scores.meta['seconds']:.1f}s)")
    best = scores.top("edges", top)
    for label, value in best:
        typer.echo(f"{colon_label(label):<24} {value:+.4f}")
    out.mkdir(parents=True, exist_ok=True)
    path = scores.save(out / f"edges-{the_method}-{the_direction}.safetensors")
    listing = out / f"edges-{the_method}-{the_direction}-top.json"
    listing.write_text(json.dumps({
        "method": the_method, "direction": the_direction, "graph": graph.as_dict(),
        "n_edges": graph.n_edges, "sign_convention": scores.meta["sign_convention"],
        "top": [{"edge": colon_label(label), "label": label, "mean_score": value}
                for label, value in best]}, indent=2))
    typer.echo(f"-> {path}\n-> {listing}")
    _edges_circuit(the_model, the_task, scores, out / f"edges-{the_method}-{the_direction}",
                   top, threshold, the_ablation, faithfulness, curve, max_batch_rows, the_run)


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
                                              max_batch_rows=max_batch_rows)
    if faithfulness:
        circuit.faithfulness = report = {**evaluator.faithfulness(circuit), "run": run}
        typer.echo(f"faithfulness ({ablation} ablation outside the circuit, {run} run, means over "
                   f"samples): m(circuit) {report['m_circuit']:+.4f}  m(model) "
                   f"{report['m_model']:+.4f}  m(empty) {report['m_empty']:+.4f}  "
                   f"f {report['f']:.4f}")
    if curve:
        result = evaluator.curve(scores.mean("edges")[0])
        for fraction, k, size, f in zip(result["fractions"], result["selected"],
                                        result["sizes"], result["f"]):
            typer.echo(f"  top {100 * fraction:g} % ({k} selected, {size} connected): f {f:.4f}")
        typer.echo(f"  CPR {result['cpr']:.4f}  CMD {result['cmd']:.4f}")
    json_path = circuit.save_json(stem.with_name(stem.name + "-circuit.json"))
    png_path = plot_circuit(circuit, stem.with_name(stem.name + "-circuit.png"),
                            title=f"{scores.method} {scores.direction}: {circuit.rule}, "
                                  f"{len(circuit.edges)} edges (blue +, red -; q solid, "
                                  "k dashed, v dotted)")
    typer.echo(f"-> {json_path}\n-> {png_path}")


def _load_or_exit(model: Optional[str], device: str, dtype: str):
    from .models import load_model

    try:
        return load_model(model, device=device, dtype=dtype)
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
    out: Path = typer.Option(Path("attrscope-path"), help="Output folder."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    from .analysis import path as path_analysis
    from .analysis import path_output
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
        result = path_analysis.survey(the_model, the_task, direction, "heads", n_steps,
                                      max_batch_rows, split_r, saturation_threshold,
                                      runner=runner, show_progress=progress)
        written.append(path_output.write_csv(out / "path-survey.csv", result.rows))
        written.append(path_output.write_csv(
            out / "path-correlations.csv",
            [{"correlation": k, "value": v, "over": f"{len(result.rows)} heads"}
             for k, v in result.correlations.items()]))
        written.append(path_output.plot_survey(result, out / "path-survey.png"))
        typer.echo(f"all {len(result.rows)} heads, correlation with the mean exact patching score:")
        for name, value in result.correlations.items():
            typer.echo(f"  {name}: {value:+.3f}")
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
    out: Path = typer.Option(Path("attrscope-counterfactual"), help="Output folder."),
) -> None:
    from .analysis import path_output
    from .analysis.counterfactual import find_counterfactual
    from .engine import DIRECTIONS

    _split(kind, ("heads", "neurons"), "--kind")
    _split(direction, DIRECTIONS, "--direction")
    the_model = _load_or_exit(model, device, dtype)
    (target,) = _parse_components_or_exit([component], the_model, kind)
    try:
        result = find_counterfactual(
            the_model, prompt, answer, distractor, target, direction, max_changes=max_changes,
            max_perplexity_ratio=max_perplexity_ratio, n_iters=n_iters, top_k=top_k,
            n_candidates=n_candidates, beam=beam, patience=patience, seed=seed, start=start,
            standard=standard)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
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
    ]
    for file in written:
        typer.echo(f"-> {file}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
