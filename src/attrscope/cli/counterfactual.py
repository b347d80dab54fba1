"""``attrscope counterfactual``: search a corruption that a chosen component responds to most."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import typer

from .app import SIGNS, app
from .options import (DEVICE_OPTION, DTYPE_OPTION, SELF_CONTAINED_OPTION, checkpoint_for,
                      load_model_loudly, one_choice, out_option)
from .path import parse_components


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
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    out: Path = out_option("attrscope-counterfactual"),
    self_contained: bool = SELF_CONTAINED_OPTION,
) -> None:
    from ..analysis.counterfactual import find_counterfactual
    from ..analysis.path_output import counterfactual_score_rows
    from ..analysis.pipelines import save_counterfactual
    from ..engine import DIRECTIONS
    from ..keys import model_fingerprint

    one_choice(kind, ("heads", "neurons"), "--kind")
    one_choice(direction, DIRECTIONS, "--direction")
    the_model = load_model_loudly(model, device, dtype)
    (target,) = parse_components([component], the_model, kind)
    settings = dict(max_changes=max_changes, max_perplexity_ratio=max_perplexity_ratio,
                    n_iters=n_iters, top_k=top_k, n_candidates=n_candidates, beam=beam,
                    patience=patience, seed=seed, start=start, standard=standard)
    inputs = {"prompt": prompt, "answer": answer, "distractor": distractor,
              "component": target.label, "kind": kind, "direction": direction, **settings}
    payload = json.dumps({"model": model_fingerprint(the_model), "what": "counterfactual", **inputs},
                         sort_keys=True, default=str)
    checkpoint = checkpoint_for(out / "counterfactual.parts",
                                hashlib.sha256(payload.encode()).hexdigest(), "counterfactual")
    result = find_counterfactual(the_model, prompt, answer, distractor, target, direction,
                                 **settings, log=lambda line: typer.echo(line, err=True),
                                 checkpoint=checkpoint)
    checkpoint.discard()
    typer.echo(f"clean:  {result.clean!r}")
    typer.echo(f"found:  {result.corrupted!r}")
    typer.echo(f"target {result.kind[:-1]} {result.component} {direction} score {result.score:+.4f}"
               f" with {result.n_changed} changed tokens (positions {result.changed_positions}); "
               f"perplexity {result.perplexity_clean:.3f} -> {result.perplexity:.3f} "
               f"(x{result.perplexity_ratio:.3f})")
    if result.standard is not None:
        typer.echo(f"standard corruption {result.standard!r}: target score {result.standard_score:+.4f}")
    rows = counterfactual_score_rows(result)
    others = sorted((r for r in rows if not r["target"]), key=lambda r: -abs(r["score_found"]))[:5]
    typer.echo("largest other components with the found prompt: " +
               "  ".join(f"{r['component']} {r['score_found']:+.3f}" for r in others))
    for file in save_counterfactual(result, the_model, out, self_contained=self_contained):
        typer.echo(f"-> {file}")
