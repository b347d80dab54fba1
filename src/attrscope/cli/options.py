"""What the commands share: their options (model, task, device, dtype, n, seed, out, progress,
...) declared once, and the few steps every command takes (check the inputs before loading
anything, load the model and task, say how long the run will take, save a result that a rerun
reuses). Errors are raised, never handled here: the application's one handler
(:mod:`attrscope.cli.app`) turns them into one line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer


def split_choices(value: str, allowed, option: str) -> list[str]:
    """A comma-separated option's items, each one of ``allowed`` (refused naming the option)."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise typer.BadParameter(f"{bad or value!r}: choose from {', '.join(sorted(allowed))}.",
                                 param_hint=option)
    return list(dict.fromkeys(items))


def one_choice(value: str, allowed, option: str) -> str:
    return split_choices(value, allowed, option)[0]


def check_out(out: Path) -> Path:
    """--out callback: refuse, before any work, a file or an unwritable location."""
    from ..checks import check_output_dir

    return check_output_dir(out)


# -- the one option check ---------------------------------------------------------------------
# What every numeric option of every command may be, by parameter name: (smallest, exclusive?).
# The largest is INT_LIMIT for any number: a larger one is a typo, and it would overflow torch's
# int64 or a Ray resource further on.
NUMBER_RANGES: dict[str, tuple[float, bool]] = {
    "n": (1, False), "top": (1, False), "top_k": (0, True), "n_boot": (1, False),
    "n_random": (1, False), "min_asymmetry": (0, False), "n_steps": (1, False),
    "steps": (1, False), "max_batch_rows": (1, False), "threshold": (0, False),
    "split_r": (0, True), "saturation_threshold": (0, True), "max_changes": (1, False),
    "max_perplexity_ratio": (1, False), "n_iters": (1, False), "n_candidates": (1, False),
    "beam": (1, False), "patience": (1, False), "seed": (0, False), "actors": (1, False),
    "num_cpus": (0, True), "num_gpus": (0, False), "shards_per_actor": (1, False),
    "lr": (0, True), "stop_prob": (0, True),
}
INT_LIMIT = 2**31 - 1
# Path options that name something that must already be there: parameter -> "folder" | "file".
EXISTING_PATHS = {"from_sweep": "folder", "grid": "file"}


def option_name(param: str) -> str:
    return "--" + param.replace("_", "-")


def check_options(params: dict) -> None:
    """The one check of every command's option values, made before the command does anything:
    numbers in :data:`NUMBER_RANGES` (and finite, at most INT_LIMIT), paths in
    :data:`EXISTING_PATHS` present and of the right kind, --max-memory a size. Refusals name the option and the
    value the user gave (typer.BadParameter, one line through the application's handler)."""
    for name, value in params.items():
        if isinstance(value, (list, tuple)):
            values = value
        else:
            values = [value]
        for v in values:
            if name in NUMBER_RANGES and isinstance(v, (int, float)) and not isinstance(v, bool):
                _check_number(name, v)
            elif name in EXISTING_PATHS and v is not None:
                _check_existing(name, Path(v), EXISTING_PATHS[name])
            elif name == "max_memory" and v is not None:
                _check_memory(v)


def _check_number(name: str, value: float) -> None:
    least, exclusive = NUMBER_RANGES[name]
    if value != value or abs(value) == float("inf") or abs(value) > INT_LIMIT:
        raise typer.BadParameter(f"{value}: give a finite number of at most {INT_LIMIT}.",
                                 param_hint=option_name(name))
    if value < least or (exclusive and value == least):
        bound = f"above {least:g}" if exclusive else f"at least {least:g}"
        raise typer.BadParameter(f"{value}: must be {bound}.", param_hint=option_name(name))


def _check_memory(value: str) -> None:
    from ..engine import parse_memory

    try:
        parse_memory(value)
    except ValueError as e:
        raise typer.BadParameter(f"{value}: {e}", param_hint="--max-memory") from None


def _check_existing(name: str, path: Path, kind: str) -> None:
    option = option_name(name)
    if not path.exists():
        raise typer.BadParameter(f"{path}: no such {kind}.", param_hint=option)
    if kind == "folder" and not path.is_dir():
        raise typer.BadParameter(f"{path} is a file; give a folder.", param_hint=option)
    if kind == "file" and not path.is_file():
        raise typer.BadParameter(f"{path} is a folder; give a file.", param_hint=option)


# -- the options ------------------------------------------------------------------------------
MODEL_OPTION = typer.Option(None, help="Hugging Face name (e.g. gpt2), local model folder or "
                            "attrscope-tasks; default: the embedded offline model that performs "
                            "the task (the IOI model for ioi, attrscope-tasks for the others).")
TASK_OPTION = typer.Option("ioi", help="Task name (see 'attrscope tasks') or a .csv/.jsonl file "
                           "with columns clean, corrupted, answer, distractor.")
METRIC_OPTION = typer.Option(None, help="Override the task's metric: logit_diff, logprob_diff "
                             "(answer sets), prob_diff (probability mass), kl (minus the KL "
                             "divergence from the clean next-token distribution), answer_prob, "
                             "answer_logprob, or module:function, your own metric(logits, rows) "
                             "-> [batch] (a module in the current folder or on PYTHONPATH); see "
                             "docs/metrics.md.")
METHOD_OPTION = typer.Option("ap,atp,ig", help="Comma-separated methods (see 'attrscope methods'): "
                             "node methods ap, atp, ig, atpstar; edge methods eap, eap-ig, "
                             "eap-ig-act, exact.")
SKIP_INVALID_OPTION = typer.Option(False, help="Leave out invalid rows of a task file (length "
                                   "mismatch, multi-token answer, empty prompt, missing value) "
                                   "instead of stopping; they are reported and recorded.")
N_OPTION = typer.Option(None, help="Number of prompt pairs (default: 50 for generated tasks, all "
                        "rows of a file).")
SEED_OPTION = typer.Option(0, help="Seed of the generated task.")
DEVICE_OPTION = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1, auto.")
DTYPE_OPTION = typer.Option("float32", help="float32, float64, bfloat16 or float16.")
PROGRESS_OPTION = typer.Option(True, help="Show progress bars.")
SELF_CONTAINED_OPTION = typer.Option(
    False, "--self-contained", help="Embed plotly.js in the HTML report (one file of about 5 MB "
    "to mail), instead of loading the plotly.min.js written once beside the reports in --out.")
COMPUTE_DTYPE_OPTION = typer.Option(None, "--compute-dtype", help="dtype of attrscope's fast "
                                    "forwards (float32, bfloat16, ...); default float32 for a "
                                    "bfloat16/float16 model (accurate; costs a float32 copy of "
                                    "the weights), else the model's.")
CACHE_DEVICE_OPTION = typer.Option(None, "--cache-device", help="Keep the run caches on this "
                                   "device (e.g. cpu: host memory, streamed to the model's "
                                   "device layer by layer); default: the model's device.")
RESUME_OPTION = typer.Option(
    True, help="Reuse a result in --out made with the same model, task, method and settings, and "
    "resume an interrupted run from its finished chunks (kept in <result>.parts/); "
    "--no-resume recomputes everything.")


def out_option(default: str) -> typer.models.OptionInfo:
    return typer.Option(Path(default), help="Output folder.", callback=check_out)


def top_option(default: int, what: str = "components") -> typer.models.OptionInfo:
    return typer.Option(default, help=f"How many top {what} to print per kind.")


# -- the steps every command takes -------------------------------------------------------------
def check_inputs(model: Optional[str], task: Optional[str], device: str, dtype: str,
                 metric: Optional[str] = None, n: Optional[int] = None) -> None:
    """Refuse bad --model folders (the one model check, :func:`attrscope.models.check_model_folder`),
    --task names/files (and an --n above a file's rows) and --dtype/--device before loading."""
    from ..models import check_dtype_device, check_model_folder, looks_like_path
    from ..tasks import check_task

    check_dtype_device(dtype, device)
    if model is not None and looks_like_path(model):
        check_model_folder(model)
    if task is not None:
        check_task(task, metric, n)


def load_model_loudly(model: Optional[str], device: str, dtype: str, **options):
    """The model (inputs checked first), saying what is loading and how long it took (on stderr:
    loading is silent for seconds otherwise)."""
    from ..models import load_model

    check_inputs(model, None, device, dtype)
    typer.echo(f"loading model {model or 'attrscope-default-ioi (embedded)'} on {device} "
               f"({dtype}) ...", err=True)
    started = time.perf_counter()
    the_model = load_model(model, device=device, dtype=dtype, **options)
    typer.echo(f"model loaded in {time.perf_counter() - started:.1f}s", err=True)
    return the_model


def model_and_task(model: Optional[str], task: str, n: Optional[int], seed: int, device: str,
                   dtype: str, **options):
    """The model (by default the embedded one that performs ``task``) and the task. ``options``:
    ``skip_invalid``, ``metric`` (task options) and ``compute_dtype``, ``cache_device`` (model
    options). Raises ValueError/OSError for bad names, files or rows, and for an ``n`` whose
    caches cannot fit (checked on 8 prompts before the task is built)."""
    from ..tasks import GENERATED_TASKS, load_task

    task_options = {"skip_invalid": options.pop("skip_invalid", False),
                    "metric": options.pop("metric", None)}
    check_inputs(model, task, device, dtype, task_options["metric"], n)
    if model is None and task in GENERATED_TASKS:
        model = GENERATED_TASKS[task].model
    the_model = load_model_loudly(model, device, dtype, **options)
    _check_memory_early(the_model, task, n, seed, task_options)
    return the_model, load_task(task, the_model, n=n, seed=seed, **task_options)


def _check_memory_early(model, task: str, n: Optional[int], seed: int, task_options: dict) -> None:
    """Refuse a large ``n`` within seconds: the memory plan of heads and neurons, with the prompt
    length of 8 sample prompts, before building all n (MemoryPlanError, a ValueError)."""
    from ..components import resolve_kinds
    from ..engine import check_memory
    from ..tasks import TaskDataError, load_task

    if n is None or n <= 8:
        return
    try:
        sample = load_task(task, model, n=8, seed=seed, **task_options)
    except TaskDataError:  # the task itself, built next with the user's n, names the problem
        return
    check_memory(model, n, int(sample.clean_tokens.shape[1]), resolve_kinds("heads,neurons"))


def warn_if_long(the_model, the_task, passes: int, runs, setups: int | None = None) -> None:
    """Print the estimate of passes and time when the run looks longer than a minute: ``runs``
    are the (method, settings, kinds) it will run, each estimated by
    :func:`attrscope.estimate.estimate_seconds` from one timed forward of the task's prompts;
    ``setups``: how many cached runs they share (the first that many pay the setup; default:
    one each)."""
    from ..estimate import LONG_RUN_S, describe, estimate_seconds, timed_forward

    per_pass = timed_forward(the_model, the_task.clean_tokens)
    setups = len(runs) if setups is None else setups
    seconds = sum(estimate_seconds(the_model, the_task, method, settings, kinds, per_pass=per_pass,
                                   setup=i < setups)
                  for i, (method, settings, kinds) in enumerate(runs))
    if seconds > LONG_RUN_S:
        typer.echo(describe(passes, seconds), err=True)


def parse_budget(text: str) -> float | None:
    """``--budget``: seconds from ``900``, ``900s``, ``15min`` or ``1h``; None from ``none``."""
    value = text.strip().lower()
    if value in ("none", "off", "0"):
        return None
    for unit, factor in (("min", 60.0), ("m", 60.0), ("h", 3600.0), ("s", 1.0), ("", 1.0)):
        if value.endswith(unit):
            try:
                seconds = float(value[:len(value) - len(unit)] if unit else value) * factor
            except ValueError:
                continue
            if seconds > 0:
                return seconds
    raise typer.BadParameter(f"{text!r}: give a time such as 900s, 15min or 1h, or none.",
                             param_hint="--budget")


def report_skipped(task) -> None:
    skipped = task.info.get("skipped")
    if skipped and skipped["count"]:
        typer.echo(f"skipped {skipped['count']} invalid row(s) of {task.name}:")
        for row, problems in list(skipped["rows"].items())[:20]:
            typer.echo(f"  row {row}: {'; '.join(problems)}")
        if skipped["count"] > 20:
            typer.echo(f"  ... and {skipped['count'] - 20} more (all listed in the result's "
                       "task info)")


def resumable(compute, path: Path, resume: bool, key, what: str):
    """``compute(checkpoint)`` saved at ``path``; with ``resume``, a finished result there with
    the same ``key()`` is reused and an interrupted one resumed (:mod:`attrscope.checkpoint`).
    ``what`` names the computation in messages ("ap denoising")."""
    from ..checkpoint import Checkpoint, reuse_or_compute

    if not resume:
        Checkpoint(path.with_suffix(".parts"), "").discard()
        scores = compute()
        scores.save(path)
        typer.echo(f"{what} ({scores.meta['seconds']:.1f}s) -> {path}")
        return scores
    return reuse_or_compute(path, key(), compute, typer.echo, what)[0]


# The human-readable index of a result folder written by ``attribute``: which keyed file
# (``results/<method>-<direction>-<key>.safetensors``, :func:`attrscope.keys.result_name`, the
# name compare's and sweep's caches use) holds each method x direction's result.
RESULT_INDEX = "results.json"


def indexed_results(folder: Path) -> dict:
    """``folder``'s index: ``{"METHOD-DIRECTION": {"file": ..., "method": ..., ...}}`` (empty
    without one)."""
    import json

    index = Path(folder) / RESULT_INDEX
    return json.loads(index.read_text()) if index.is_file() else {}


def index_result(folder: Path, path: Path, scores, key: str, entry: str | None = None) -> None:
    """Record in ``folder``'s index that ``path`` holds ``scores``, as the latest result of
    ``entry`` (``METHOD-DIRECTION``; by default from its meta), written atomically."""
    import json

    from ..files import write_bytes

    meta = scores.meta
    entries = indexed_results(folder)
    entries[entry or f"{meta['method']}-{meta['direction']}"] = {
        "file": path.relative_to(folder).as_posix(), "method": meta["method"],
        "direction": meta["direction"], "components": meta.get("components"),
        "normalize": (meta.get("normalize") or {}).get("mode"), "key": key}
    write_bytes(Path(folder) / RESULT_INDEX,
                (json.dumps(dict(sorted(entries.items())), indent=1) + "\n").encode())


def result_path(folder: Path, method: str, direction: str) -> Path:
    """The file of ``method``'s ``direction`` result in a folder ``attribute`` wrote (read from
    its index), or a ValueError naming the folder and what it holds."""
    entries = indexed_results(folder)
    entry = entries.get(f"{method}-{direction}")
    if entry is None:
        raise ValueError(f"{folder} has no {method} {direction} result in its {RESULT_INDEX} "
                         f"(it lists: {', '.join(entries) or 'nothing'}).")
    return Path(folder) / entry["file"]


def checkpoint_for(folder: Path, key: str, what: str):
    """A :class:`~attrscope.checkpoint.Checkpoint` in ``folder`` for the computation ``what``
    with this key; says so when it resumes an interrupted run's chunks."""
    from ..checkpoint import Checkpoint

    checkpoint = Checkpoint(folder, key)
    if checkpoint.stored():
        typer.echo(f"{what}: resuming the interrupted run from {checkpoint.stored()} finished "
                   f"chunk(s) in {folder}")
    return checkpoint


def print_summary(scores, k: int) -> None:
    """Each kind's top ``k`` components by |mean score|, the normalisation and, for IG, the
    worst completeness residual."""
    from ..normalize import describe

    if describe(scores.meta):
        typer.echo(f"  {describe(scores.meta)}")
    for kind in scores.kinds:
        top = "  ".join(f"{label} {value:+.3f}" for label, value in scores.top(kind, k))
        typer.echo(f"  {kind:<8} top {k} by |mean score|: {top}")
    screening = scores.meta.get("screening")
    for kind, s in (screening or {}).get("kinds", {}).items():
        fn = s["false_negatives"]
        typer.echo(f"  {kind:<8} screened by {screening['screen']}: {s['exact']} of {s['units']} "
                   f"exact, {s['unverified']} NaN; estimated misses of the exact top "
                   f"{screening['top_k']}: {fn['estimate']:.1f} [{fn['low']}, {fn['high']}] "
                   f"({screening['level']:.0%} interval)")
    residuals = [v for name, v in scores.extras.items() if name.startswith("completeness_residual")]
    if residuals:
        worst = max(float(r.abs().max()) for r in residuals)
        typer.echo(f"  completeness residual (max |sum of attributions - metric change|): {worst:.2e}")
