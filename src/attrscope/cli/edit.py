"""``attrscope edit``: fine-tune only chosen heads' and neurons' parameters to rewrite facts, and
score the edit CounterFact-style; ``--compare`` compares target choices."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app
from .options import (DEVICE_OPTION, DTYPE_OPTION, PROGRESS_OPTION, SELF_CONTAINED_OPTION,
                      load_model_loudly, out_option)

FACTS_HELP = ("'capital' (the embedded task model's capital-country facts: rewrite prompt in a "
              "training template, the held-out templates as paraphrases, other capitals as the "
              "neighbourhood) or a CounterFact-format JSON file (requested_rewrite, "
              "paraphrase_prompts, neighborhood_prompts; see docs/editing.md).")


def _facts(facts: str, n: Optional[int], seed: int, add_space: bool) -> tuple[list, str]:
    from ..tasks.facts import FACT_SETS, load_facts

    source = f"{facts} facts" if facts in FACT_SETS else facts
    return load_facts(facts, n, seed, add_space), source


def _neutral(path: Optional[Path]) -> list[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise ValueError(f"--neutral {path}: no such file.")
    texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"--neutral {path}: the file has no text.")
    return texts


def _line(summary: dict) -> str:
    return "  ".join(f"{name} {summary[name]['mean']:.3f} [{summary[name]['low']:.3f}, "
                     f"{summary[name]['high']:.3f}]" for name in
                     ("efficacy", "generalisation", "specificity", "fluency"))


@app.command("edit", help="Rewrite facts by fine-tuning ONLY the parameters of chosen heads and "
             "neurons (every other parameter stays bit-identical), and score the edit "
             "CounterFact-style: efficacy and generalisation (fraction of the rewrite / "
             "paraphrase prompts where the new answer beats the true one), specificity "
             "(fraction of neighbourhood prompts that keep their own answer: 1 = untouched) and "
             "fluency (change of the loss on neutral text: 0 = unchanged). Targets come from "
             "attributions on the facts' own clean/corrupted pairs. Without --compare, all "
             "facts are edited together and the model is written to OUT/model (a Hugging Face "
             "folder with edit.json). With --compare, each fact is edited on its own for each "
             "target and a table is written (edit-compare.html, .csv, .json).")
def edit_command(
    facts: str = typer.Option("capital", help=FACTS_HELP),
    model: Optional[str] = typer.Option(None, help="Model name or folder; default: "
                                        "attrscope-tasks (the embedded task model)."),
    target: list[str] = typer.Option(None, "--target", help="Components to edit: "
                                     "METHOD:topP% (top P % of heads and of neurons by |mean "
                                     "score|, e.g. ig:top10%; METHOD/noising:topP% for the "
                                     "noising scores), METHOD:topK, latent "
                                     "(the direction-asymmetric components of ap vs ig), all "
                                     "(every parameter), random:SPEC (as many heads and neurons "
                                     "as SPEC, drawn with --seed; random@S:SPEC with seed S), "
                                     "joined by + for a union. Default "
                                     "ig:top10%; with --compare, repeat it for the targets to "
                                     "compare (default: ap, atp, ig top 10 %, latent, "
                                     "ig:top10%+latent, three random draws of that size, all)."),
    compare: bool = typer.Option(False, "--compare", help="Compare targets (each fact edited "
                                 "on its own) instead of writing one edited model."),
    per_fact: bool = typer.Option(False, "--per-fact", help="With --compare: rank each fact's "
                                  "top components by its own scores (the seed study's choice) "
                                  "instead of the mean over all facts; the latent set stays the "
                                  "one of all facts."),
    n: Optional[int] = typer.Option(None, help="Number of facts (capital: default 20, at most "
                                    "44; a file: all)."),
    seed: int = typer.Option(0, help="Seed of the capital facts, the random targets and the "
                             "bootstrap."),
    steps: int = typer.Option(50, help="Most Adam steps per edit."),
    lr: float = typer.Option(1e-3, help="Learning rate (Adam, no weight decay)."),
    stop_prob: float = typer.Option(0.9, help="Stop an edit once p(new answer) reaches this on "
                                    "its prompt(s), so that targets are compared at the same "
                                    "strength; 1 never stops early."),
    add_space: bool = typer.Option(False, help="Prepend the leading space that CounterFact's "
                                   "answers lack (without it they are refused)."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples (over facts) of the intervals."),
    neutral: Optional[Path] = typer.Option(None, help="Text file of neutral text for the fluency "
                                           "score, one text per line (default: the other "
                                           "generated tasks' prompts with their answers)."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    out: Path = out_option("attrscope-edit"),
    self_contained: bool = SELF_CONTAINED_OPTION,
    progress: bool = PROGRESS_OPTION,
) -> None:
    from ..analysis.edit import check_edit_folder, check_target_methods, parse_target
    from ..analysis.edit_eval import COMPARE_TARGETS

    targets = list(target or (COMPARE_TARGETS if compare else ["ig:top10%"]))
    if not compare and len(targets) > 1:
        raise typer.BadParameter("give one --target without --compare.", param_hint="--target")
    for spec in targets:
        check_target_methods(parse_target(spec), spec)
    if per_fact and not compare:
        raise typer.BadParameter("only with --compare.", param_hint="--per-fact")
    if not 0 < stop_prob <= 1:
        raise typer.BadParameter(f"{stop_prob}: a probability in (0, 1].", param_hint="--stop-prob")
    the_facts, source = _facts(facts, n, seed, add_space)
    texts = _neutral(neutral)
    if not compare:
        check_edit_folder(out / "model")
    from ..tasks.facts import FACT_SETS

    default_model = FACT_SETS[facts][1] if facts in FACT_SETS else "attrscope-tasks"
    the_model = load_model_loudly(model or default_model, device, dtype)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(steps=steps, lr=lr, stop_prob=None if stop_prob >= 1 else stop_prob,
                    seed=seed, n_boot=n_boot, neutral=texts)
    if compare:
        _compare(the_model, the_facts, source, targets, {**settings, "per_fact": per_fact},
                 (out, self_contained), progress)
    else:
        _edit(the_model, the_facts, source, targets[0], settings, out)


def _edit(the_model, the_facts, source: str, spec: str, settings: dict, out: Path) -> None:
    from ..analysis.edit_eval import edit, summarise
    from ..tasks.facts import check_facts

    check_facts(the_facts, the_model.tokenizer, source)
    result = edit(the_model, the_facts, spec, out=out / "model", **settings)
    record = result.record
    typer.echo(f"{len(the_facts)} facts ({source}) edited together; target {spec}: "
               f"{len(record['heads'])} heads, {len(record['neurons'])} neurons, "
               f"{record['n_parameters_changed']:,} of {record['n_parameters']:,} parameters "
               f"may change; {len(record['loss']) - 1} steps, loss {record['loss'][0]:.3f} -> "
               f"{record['loss'][-1]:.3f}")
    typer.echo(f"  before: {_line(summarise(result.before, settings['n_boot']))}")
    typer.echo(f"  after:  {_line(result.summary)}")
    typer.echo(f"edited model and edit.json -> {result.folder}")


def _compare(the_model, the_facts, source: str, targets: list[str], settings: dict,
             output: tuple[Path, bool], progress: bool) -> None:
    from ..analysis.edit_eval import compare_edits, markdown_table, write_comparison

    say = (lambda line: typer.echo(f"  editing with {line}", err=True)) if progress else None
    comparison = compare_edits(the_model, the_facts, targets, source=source, progress=say,
                               **settings)
    typer.echo(markdown_table(comparison))
    typer.echo(f"{len(the_facts)} facts x {len(targets)} targets in "
               f"{comparison['seconds']:.0f}s")
    for path in write_comparison(comparison, *output):
        typer.echo(f"-> {path}")
