"""``attrscope sweep`` and ``shard``: work spread over Ray workers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import SIGNS, app
from .options import (DTYPE_OPTION, METRIC_OPTION, MODEL_OPTION, TASK_OPTION, index_result,
                      print_summary, split_choices, top_option)


def _sweep_grid(grid_file: Optional[Path], overrides: dict, settings: list[str]) -> dict:
    """The grid of ``attrscope sweep``: the TOML file's, with the command line's values on top."""
    from ..sweep import load_grid, parse_setting

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
    from ..sweep import expand_grid, require_ray, run_sweep, summary_table

    split = {"methods": method, "directions": direction, "components": components}
    overrides = {"models": model, "tasks": task, "seeds": seed, "n": n, "device": device,
                 "dtype": dtype, **{k: [x.strip() for x in v.split(",") if x.strip()]
                                    for k, v in split.items() if v}}
    the_grid = _sweep_grid(grid, overrides, set_)
    jobs = expand_grid(the_grid, "command line" if grid is None else f"grid file {grid}")
    require_ray()
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
    dtype: str = DTYPE_OPTION,
    out: Path = typer.Option(Path("attrscope-results"), help="Output folder."),
    top: int = top_option(10),
) -> None:
    from ..components import KINDS
    from ..engine import DIRECTIONS
    from ..keys import result_name
    from ..shard import sharded
    from ..sweep import Job, require_ray

    the_method = split_choices(method, ("ap", "exact"), "--method")[0]
    the_direction = split_choices(direction, DIRECTIONS, "--direction")[0]
    kinds = ("edges",) if the_method == "exact" else tuple(split_choices(components, KINDS, "--components"))
    job = Job(model or "default", task, the_method, the_direction, kinds, n, seed, device=device,
              dtype=dtype, metric=metric)
    require_ray()
    scores = sharded(job, actors, num_cpus=num_cpus, num_gpus=num_gpus, address=ray_address,
                     max_batch_rows=max_batch_rows, max_memory=max_memory,
                     shards_per_actor=shards_per_actor, log=typer.echo)
    key = scores.meta["cache_key"]
    path = scores.save(out / "results" / result_name(the_method, the_direction, key))
    index_result(out, path, scores, key)
    typer.echo(f"{scores!r} in {scores.meta['sharding']['seconds']:.1f}s "
               f"({scores.meta['sharding']}) -> {path}")
    print_summary(scores, top)
