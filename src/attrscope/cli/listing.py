"""``attrscope show``, ``tasks`` and ``methods``: what a result, the tasks and the methods are."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import SIGNS, app
from .options import RESULT_INDEX, print_summary, result_path, top_option


@app.command(help="Print what a saved result contains and its top components. " + SIGNS)
def show(path: Path = typer.Argument(..., help="A .safetensors result written by attrscope, or "
                                     "OUT/METHOD-DIRECTION (e.g. out/ap-denoising) for a result "
                                     "'attribute --out OUT' wrote (listed in OUT/results.json)."),
         top: int = top_option(10)) -> None:
    from ..scores import Scores

    if not path.exists() and (path.parent / RESULT_INDEX).is_file():
        method, _, direction = path.name.removesuffix(".safetensors").rpartition("-")
        path = result_path(path.parent, method, direction)
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
    from ..tasks import GENERATED_TASKS, METRICS

    for name, spec in GENERATED_TASKS.items():
        pair = spec.generate(1, seed)[0]
        typer.echo(f"{name}  [metric {spec.metric}: {METRICS[spec.metric]}; model "
                   f"{spec.model or 'default (embedded IOI model)'}]")
        typer.echo(f"  {spec.description}")
        typer.echo(f"  clean:      {pair.clean!r}\n  corrupted:  {pair.corrupted!r}")
        typer.echo(f"  answer:     {_show_answers(pair.answer)}\n"
                   f"  distractor: {_show_answers(pair.distractor)}")
        if pair.positions:
            typer.echo(f"  positions:  {', '.join(pair.positions)}, END")
        typer.echo("")
    typer.echo("metrics (--metric; larger = closer to the clean behaviour, see docs/metrics.md):")
    for name, what in METRICS.items():
        typer.echo(f"  {name:<15} {what}")
    typer.echo(f"  {'module:function':<15} your own metric(logits [batch, d_vocab], rows [batch]) "
               "-> [batch]")


def _show_answers(value) -> str:
    if isinstance(value, tuple) and len(value) > 6:
        return f"{len(value)} tokens: " + ", ".join(map(repr, value[:3])) + ", ..., " + repr(value[-1])
    return ", ".join(map(repr, value)) if isinstance(value, tuple) else repr(value)


@app.command(help="List the attribution methods, their settings and sign conventions. " + SIGNS)
def methods() -> None:
    from ..methods import METHODS

    for spec in METHODS.values():
        settings = ", ".join(f"--{k.replace('_', '-')}={v}" for k, v in spec.defaults.items())
        typer.echo(f"{spec.name:<10} ({spec.granularity}) {spec.summary}\n"
                   f"           sign: {spec.sign}\n           settings: {settings}")
