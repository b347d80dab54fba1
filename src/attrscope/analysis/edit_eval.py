"""Edit facts and score the edits CounterFact-style; compare edit targets.

Scores of one edited fact (each in [0, 1]; their direction is fixed here, once):

- **efficacy**: 1 if the rewrite prompt now gives the new answer a higher probability than the
  true one, else 0 (1 = the edit took);
- **generalisation**: the fraction of the fact's paraphrase prompts where the new answer beats
  the true one (1 = the edit carries over to other wordings; NaN without paraphrases);
- **specificity**: the fraction of the neighbourhood prompts (other subjects) whose own answer
  still beats the fact's new answer (**1 = untouched**; the seed study counted the opposite,
  see ``PITFALLS.md`` 22; NaN without neighbours). The unedited model's value is reported too:
  it is the ceiling;
- **fluency**: the change of the model's mean next-token loss (nats per token) on neutral text,
  edited minus unedited (0 = unchanged; positive = the edit damaged other text).

The summaries are means over facts with percentile bootstrap intervals over facts (facts without
a value for a score are left out of that score).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float

from ..arch import config_of
from ..tasks.facts import Fact, check_facts, fact_task, neutral_texts
from .agreement import bootstrap_weights
from .edit import (Target, answer_id, build_target, check_edit_folder, check_target_methods,
                   clean_copy, edit_record, index_twin, latent_of, masked_finetune, n_changed,
                   needed_results, parameter_masks, parse_target, save_edited)

SCORES = ("efficacy", "generalisation", "specificity", "fluency")
# An edit stops once the new answer has this probability on its prompt(s), so that targets are
# compared at the same strength of edit rather than at the same number of steps.
STEPS, LR, STOP_PROB = 50, 1e-3, 0.9
COMPARE_TARGETS = ("ap:top10%", "atp:top10%", "ig:top10%", "latent", "ig:top10%+latent",
                   "random@0:ig:top10%+latent", "random@1:ig:top10%+latent",
                   "random@2:ig:top10%+latent", "all")


# -- scoring -----------------------------------------------------------------------------------
def fact_scores(logprobs, fact: Fact, ids: dict[str, int]) -> dict[str, float]:
    """One fact's efficacy, generalisation and specificity (module docstring) and the margin
    log p(new) - log p(true) on the rewrite prompt. ``logprobs(prompts)``: ``[len(prompts),
    vocab]`` next-token log-probabilities; ``ids``: answer string -> token id."""
    prompts = [fact.prompt, *fact.paraphrases, *(p for p, _ in fact.neighbourhood)]
    lp = logprobs(prompts)
    new, true = ids[fact.target_new], ids[fact.target_true]
    wins = (lp[:, new] > lp[:, true]).double()
    n_para = len(fact.paraphrases)
    own = torch.tensor([ids[a] for _, a in fact.neighbourhood], dtype=torch.long)
    neigh = lp[1 + n_para:]
    kept = (neigh.gather(1, own[:, None])[:, 0] > neigh[:, new]).double()
    nan = float("nan")
    return {"efficacy": float(wins[0]),
            "generalisation": float(wins[1:1 + n_para].mean()) if n_para else nan,
            "specificity": float(kept.mean()) if len(own) else nan,
            "margin": float(lp[0, new] - lp[0, true])}


class ModelScorer:
    """Next-token log-probabilities and neutral-text loss of a plain Hugging Face model, prompts
    tokenized as tasks are (with the model's BOS when the bridge prepends one); prompts of one
    token length run as one batch, so no padding is read."""

    def __init__(self, hf: torch.nn.Module, tokenizer, bos: int | None):
        self.hf, self.tokenizer, self.bos = hf, tokenizer, bos
        self.device = next(hf.parameters()).device
        self._ids: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._ids:
            self._ids[text] = ([self.bos] if self.bos is not None else []) + self.tokenizer(
                text, add_special_tokens=False)["input_ids"]
        return self._ids[text]

    def _groups(self, texts: list[str]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for i, text in enumerate(texts):
            groups.setdefault(len(self.ids(text)), []).append(i)
        return groups

    @torch.no_grad()
    def logprobs(self, prompts: list[str]) -> Float[torch.Tensor, "prompts vocab"]:
        """``[len(prompts), vocab]`` float64 log-probabilities of the next token."""
        out = [None] * len(prompts)
        for rows in self._groups(prompts).values():
            tokens = torch.tensor([self.ids(prompts[i]) for i in rows], device=self.device)
            lp = torch.log_softmax(self.hf(tokens).logits[:, -1].double(), -1).cpu()
            for j, i in enumerate(rows):
                out[i] = lp[j]
        return torch.stack(out)

    @torch.no_grad()
    def loss(self, texts: list[str]) -> float:
        """Mean next-token negative log-likelihood (nats per token) over every token of
        ``texts`` after the first."""
        total, count = 0.0, 0
        for rows in self._groups(texts).values():
            tokens = torch.tensor([self.ids(texts[i]) for i in rows], device=self.device)
            lp = torch.log_softmax(self.hf(tokens).logits[:, :-1].double(), -1)
            total += float(-lp.gather(2, tokens[:, 1:, None]).sum())
            count += tokens[:, 1:].numel()
        return total / count if count else math.nan


def evaluate(scorer: ModelScorer, facts: list[Fact], ids: dict[str, int], neutral: list[str],
             neutral_before: float) -> list[dict[str, float]]:
    """Per-fact scores of the model behind ``scorer`` (fluency against ``neutral_before``)."""
    fluency = scorer.loss(neutral) - neutral_before if neutral else float("nan")
    return [{**fact_scores(scorer.logprobs, f, ids), "fluency": fluency} for f in facts]


def summarise(rows: list[dict[str, float]], n_boot: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, dict[str, float]]:
    """Mean over facts and percentile bootstrap interval of each score: ``{score: {mean, low,
    high, n}}`` (facts where a score is NaN left out of it)."""
    out = {}
    for name in (*SCORES, "margin"):
        x = torch.tensor([r[name] for r in rows], dtype=torch.float64)
        x = x[~torch.isnan(x)]
        if x.numel() == 0:
            out[name] = {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
            continue
        means = bootstrap_weights(x.numel(), n_boot, seed) @ x / x.numel()
        tail = (1 - level) / 2
        q = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
        out[name] = {"mean": float(x.mean()), "low": float(q[0]), "high": float(q[1]),
                     "n": int(x.numel())}
    return out


# -- running edits -----------------------------------------------------------------------------
@dataclass
class EditSetup:
    """What every edit of one model and fact set shares."""

    model: object  # the TransformerBridge
    facts: list[Fact]
    hf: torch.nn.Module  # the clean copy that is edited
    scorer: ModelScorer
    ids: dict[str, int]
    neutral: list[str]
    neutral_before: float
    results: dict = field(default_factory=dict)  # (method, direction) -> Scores
    twin: tuple | None = None  # analysis.edit.index_twin of hf, made once
    latent: Target | None = None  # the latent target (a bootstrap), made once

    def masks(self, target: Target) -> dict[str, torch.Tensor]:
        """:func:`~attrscope.analysis.edit.parameter_masks` of ``target`` in the edited copy."""
        if self.twin is None and not target.everything:
            self.twin = index_twin(self.hf)
        return parameter_masks(self.hf, target, self.twin)

    @classmethod
    def prepare(cls, model, facts: list[Fact], source: str = "facts",
                neutral: list[str] | None = None) -> "EditSetup":
        from ..models import as_bridge
        from ..tasks.base import _bos_id

        model = as_bridge(model)
        check_facts(facts, model.tokenizer, source)
        hf = clean_copy(model)
        scorer = ModelScorer(hf, model.tokenizer, _bos_id(model))
        answers = {a for f in facts for a in (f.target_true, f.target_new,
                                              *(x for _, x in f.neighbourhood))}
        ids = {a: answer_id(model.tokenizer, a) for a in answers}
        neutral = neutral_texts() if neutral is None else neutral
        return cls(model, facts, hf, scorer, ids, neutral,
                   scorer.loss(neutral) if neutral else math.nan)

    def examples(self, facts: list[Fact]) -> list[tuple[torch.Tensor, int]]:
        return [(torch.tensor([self.scorer.ids(f.prompt)], device=self.scorer.device),
                 self.ids[f.target_new]) for f in facts]

    def attributions(self, needed: set, source: str, show_progress: bool = False) -> dict:
        """The (method, direction) attributions on the facts' task, computed once."""
        from ..api import attribute

        missing = sorted(needed - set(self.results))
        if missing:
            task = fact_task(self.model, self.facts, source)
            for method, direction in missing:
                self.results[(method, direction)] = attribute(
                    self.model, task, method, direction, ("heads", "neurons"),
                    show_progress=show_progress)
        return self.results

    def target(self, spec: str | Target, seed: int = 0, source: str = "facts",
               sample: int | None = None) -> Target:
        """The target of ``spec`` (attributions computed once); ``sample``: chosen from that
        fact's own scores (see :func:`~attrscope.analysis.edit.build_target`)."""
        if isinstance(spec, Target):
            return spec
        parts = parse_target(spec)
        check_target_methods(parts, spec)
        cfg = config_of(self.model)
        sizes = {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_mlp": cfg.d_mlp}
        results = self.attributions(needed_results(parts), source)
        if self.latent is None and "latent" in spec:
            self.latent = latent_of(results)
        return build_target(parts, results, sizes, seed, spec, sample, self.latent)


def _snapshot(hf, masks) -> dict[str, torch.Tensor]:
    params = dict(hf.named_parameters())
    return {name: params[name].detach().reshape(-1)[idx].clone() for name, idx in masks.items()}


def _restore(hf, masks, saved) -> None:
    params = dict(hf.named_parameters())
    with torch.no_grad():
        for name, idx in masks.items():
            params[name].view(-1).index_copy_(0, idx, saved[name])


@dataclass
class EditResult:
    """An edit: the edited Hugging Face model, the record of what changed, the per-fact scores
    before and after, and their summaries."""

    model: torch.nn.Module
    record: dict
    before: list[dict]
    after: list[dict]
    summary: dict
    folder: Path | None = None


def edit(model, facts, target: str | Target = "ig:top10%", *, steps: int = STEPS, lr: float = LR,
         stop_prob: float | None = STOP_PROB, seed: int = 0,
         out: str | os.PathLike | None = None, n_boot: int = 1000,
         neutral: list[str] | None = None) -> EditResult:
    """Edit ``facts`` (a list of :class:`~attrscope.tasks.facts.Fact`, or a CounterFact-format
    file path) into a copy of ``model``, all facts at once, by fine-tuning only ``target``'s
    parameters (a :class:`~attrscope.analysis.edit.Target` or a spec such as ``"ig:top10%"``,
    ``"latent"``, ``"ig:top10%+latent"``, ``"random:ig:top10%"``, ``"all"``; attributions run on
    the facts' own clean/corrupted pairs, denoising unless the spec names a direction). The
    user's model is not changed. ``out``: write the edited model there (Hugging Face folder with
    ``edit.json``). Scores: see this module's docstring."""
    from ..tasks.facts import read_facts

    if out is not None:
        check_edit_folder(out)
    source = "facts"
    if isinstance(facts, (str, os.PathLike)):
        source, facts = str(facts), read_facts(facts)
    setup = EditSetup.prepare(model, list(facts), source, neutral)
    chosen = setup.target(target, seed, source)
    masks = setup.masks(chosen)
    before = evaluate(setup.scorer, setup.facts, setup.ids, setup.neutral, setup.neutral_before)
    losses = masked_finetune(setup.hf, masks, setup.examples(setup.facts), steps, lr,
                             stop_prob=stop_prob)
    after = evaluate(setup.scorer, setup.facts, setup.ids, setup.neutral, setup.neutral_before)
    settings = {"steps": steps, "lr": lr, "stop_prob": stop_prob, "seed": seed,
                "optimizer": "Adam, no weight decay",
                "loss": "mean -log p(target_new | rewrite prompt)", "facts": source}
    record = edit_record(chosen, masks, settings, setup.facts, setup.hf, losses)
    record["summary"] = {"before": summarise(before, n_boot, seed),
                         "after": summarise(after, n_boot, seed)}
    folder = save_edited(setup.hf, setup.model.tokenizer, record, out) if out else None
    return EditResult(setup.hf, record, before, after, record["summary"]["after"], folder)


def edit_each(setup: EditSetup, chosen: Target | list[Target], steps: int, lr: float,
              stop_prob: float | None = None) -> tuple[list[dict], int]:
    """Edit every fact on its own from the unedited model (the CounterFact protocol) with
    ``chosen``'s parameters (one target, or one per fact), restoring them exactly after each;
    per-fact scores (with the steps taken and the elements changed) and the mean number of
    parameter elements changed."""
    targets = chosen if isinstance(chosen, list) else [chosen] * len(setup.facts)
    masks_of: dict[Target, dict] = {}
    rows = []
    for fact, target in zip(setup.facts, targets):
        if target not in masks_of:
            masks_of[target] = setup.masks(target)
        masks = masks_of[target]
        saved = _snapshot(setup.hf, masks)
        try:
            losses = masked_finetune(setup.hf, masks, setup.examples([fact]), steps, lr,
                                     stop_prob=stop_prob)
            rows += evaluate(setup.scorer, [fact], setup.ids, setup.neutral,
                             setup.neutral_before)
        finally:
            _restore(setup.hf, masks, saved)
        rows[-1].update(steps=len(losses) - 1, changed=n_changed(masks),
                        target_heads=target.labels("heads"),
                        target_neurons=target.labels("neurons"))
    return rows, round(sum(r["changed"] for r in rows) / len(rows))


def compare_edits(model, facts, targets=COMPARE_TARGETS, *, steps: int = STEPS, lr: float = LR,
                  stop_prob: float | None = STOP_PROB, seed: int = 0, n_boot: int = 1000,
                  source: str = "facts", neutral: list[str] | None = None,
                  per_fact: bool = False, progress=None) -> dict:
    """Each target (specs as :func:`edit` takes) edits each fact on its own; returns ``rows``:
    per target its name, heads, neurons, parameters changed, per-fact scores and summary (the
    first row, ``none``, is the unedited model), and ``seconds``. ``neutral``: the texts of the
    fluency score (default :func:`~attrscope.tasks.facts.neutral_texts`). ``per_fact``: each
    fact's ``top`` components are ranked by its own scores, as the seed study chose them (the
    latent set stays the one of all facts); counts are then means over facts."""
    started = time.perf_counter()
    setup = EditSetup.prepare(model, list(facts), source, neutral)
    before = evaluate(setup.scorer, setup.facts, setup.ids, setup.neutral, setup.neutral_before)
    rows = [{"target": "none (unedited)", "heads": 0, "neurons": 0, "changed": 0,
             "facts": before, "summary": summarise(before, n_boot, seed)}]
    for spec in targets:
        chosen = setup.target(spec, seed, source)
        if progress:
            progress(chosen.describe())
        if per_fact and not isinstance(spec, Target):
            chosen = [setup.target(spec, seed, source, sample=i)
                      for i in range(len(setup.facts))]
        rows_of_facts, changed = edit_each(setup, chosen, steps, lr, stop_prob)
        first = chosen[0] if isinstance(chosen, list) else chosen
        every = first.everything
        mean = {kind: _count(sum(len(r[f"target_{kind}"]) for r in rows_of_facts)
                             / len(rows_of_facts)) for kind in ("heads", "neurons")}
        rows.append({"target": first.name + (" (per fact)" if per_fact else ""),
                     "heads": "all" if every else mean["heads"],
                     "neurons": "all" if every else mean["neurons"],
                     "changed": changed, "facts": rows_of_facts,
                     "summary": summarise(rows_of_facts, n_boot, seed)})
    settings = {"steps": steps, "lr": lr, "stop_prob": stop_prob, "seed": seed,
                "n_facts": len(setup.facts), "per_fact": per_fact,
                "n_boot": n_boot, "source": source}
    return {"rows": rows, "settings": settings, "seconds": time.perf_counter() - started,
            "n_parameters": sum(p.numel() for p in setup.hf.parameters())}


# -- output ------------------------------------------------------------------------------------
def _count(x: float) -> int | float:
    """A mean count: whole when every fact had the same, else to one decimal."""
    return int(x) if float(x).is_integer() else round(x, 1)


def _steps(row: dict) -> float:
    """Mean number of optimiser steps an edit took (0 for the unedited row)."""
    return sum(f.get("steps", 0) for f in row["facts"]) / max(1, len(row["facts"]))


def _cell(s: dict) -> str:
    if s["n"] == 0:
        return "–"
    return f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"


def table_rows(comparison: dict) -> list[dict[str, object]]:
    """One flat dict per target: target, heads, neurons, parameters_changed and, per score,
    its mean, low and high."""
    out = []
    for row in comparison["rows"]:
        flat = {"target": row["target"], "heads": row["heads"], "neurons": row["neurons"],
                "parameters_changed": row["changed"], "mean_steps": _steps(row)}
        for name in (*SCORES, "margin"):
            s = row["summary"][name]
            flat.update({name: s["mean"], f"{name}_low": s["low"], f"{name}_high": s["high"]})
        out.append(flat)
    return out


def write_comparison(comparison: dict, out: str | os.PathLike, self_contained: bool = False
                     ) -> list[Path]:
    """``edit-compare.html`` (the report template ``edit.html``; ``self_contained``: plotly.js
    in the page rather than beside it), ``.csv`` (:func:`table_rows`) and ``.json`` (with the
    per-fact scores) in ``out``, each written atomically."""
    from .pages import atomic_write_bytes, table, write_page
    from .report import write_csv

    out = Path(out)
    summary = [{"target": r["target"], "heads": r["heads"], "neurons": r["neurons"],
                "parameters changed": r["changed"], "mean steps": round(_steps(r), 1),
                **{n: _cell(r["summary"][n]) for n in SCORES}} for r in comparison["rows"]]
    page = write_page(out / "edit-compare.html", "edit.html", title="attrscope edit --compare",
                      self_contained=self_contained, settings=comparison["settings"],
                      seconds=comparison["seconds"], summary=table(summary, name="edit-compare"),
                      facts=table(fact_rows(comparison), name="edit-compare-facts"))
    data = out / "edit-compare.json"
    atomic_write_bytes(data, json.dumps(comparison, indent=1).encode())
    return [page, write_csv(out / "edit-compare.csv", table_rows(comparison)), data]


def markdown_table(comparison: dict) -> str:
    """The comparison as a Markdown table (means with their intervals)."""
    columns = ["target", "heads", "neurons", "parameters changed", "mean steps", *SCORES[:3],
               "fluency (Δ loss)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in comparison["rows"]:
        cells = [row["target"], row["heads"], row["neurons"], f"{row['changed']:,}",
                 f"{_steps(row):.1f}", *(_cell(row["summary"][n]) for n in SCORES)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def fact_rows(comparison: dict) -> list[dict[str, object]]:
    """One flat dict per target and fact: the fact's scores and the steps its edit took."""
    return [{"target": row["target"], "fact": i, **{k: f[k] for k in (*SCORES, "margin")},
             "steps": f.get("steps", 0), "parameters_changed": f.get("changed", 0)}
            for row in comparison["rows"] for i, f in enumerate(row["facts"])]
