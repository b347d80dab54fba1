"""Counterfactual search: a corrupted prompt that gives one chosen component a high patching score.

Given a clean prompt, its answer and distractor, and a target component (head ``L.H`` or neuron
``L.N``), find a corrupted prompt x' that

- has the clean prompt's token length (so the two can be patched position by position),
- differs from the clean prompt in at most ``max_changes`` token positions,
- stays fluent: the model's own perplexity on x' is at most ``max_perplexity_ratio`` times its
  perplexity on the clean prompt (perplexity = exp(mean next-token negative log-likelihood over
  the prompt's tokens, each predicted from the tokens before it)),
- decodes to a string that tokenizes back to exactly the same tokens,

and maximises the target's exact patching score (metric = logit(answer) - logit(distractor) at
the last prompt token, the answer being the clean prompt's):

- ``denoising`` (default): score = m(x' with the target's activation, at every position, taken
  from the clean prompt) - m(x'). Maximised: the target alone restores the most.
- ``noising``: score = m(clean with the target's activation taken from x') - m(clean). Its sign
  convention makes a needed component negative, so the search maximises -score.

The search is discrete and guided by gradients. At each step the objective is differentiated
with respect to the one-hot encoding of x' (the embedding is computed as one-hot @ W_E inside
the model), which ranks every single-token substitution (position p, token v) by its linearised
gain grad[p, v] - grad[p, x'_p]. The ``top_k`` best tokens per editable position form a pool;
``n_candidates`` of them (the best half by gain, the rest drawn from the pool with a generator
seeded by ``seed``) are evaluated exactly in one batch, candidates breaking a constraint are
dropped, and the best one is kept if it raises the objective. The search stops after ``n_iters``
steps or ``patience`` steps without improvement. Deterministic given ``seed`` (on one device).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch

from .. import arch
from ..checkpoint import NO_CHECKPOINT, Checkpoint, NoCheckpoint
from ..suffix_forward import SuffixForward
from ..arch import forward
from ..engine import check_direction, hooks_attached, verified_adapter
from ..tasks.base import PromptPair, _bos_id, _encode, build_task
from ..tasks.metrics import Readout
from .path import Component

EMBED_HOOK = "hook_embed"


def prompt_ids(model, text: str) -> list[int]:
    """Token ids of a prompt as a task would run it (with the model's BOS token if it uses one)."""
    bos = _bos_id(model)
    return ([bos] if bos is not None else []) + _encode(model.tokenizer, text)


def single_token(model, text: str, role: str) -> int:
    ids = _encode(model.tokenizer, text)
    if len(ids) != 1:
        hint = ""
        if text and not text.startswith(" ") and len(_encode(model.tokenizer, " " + text)) == 1:
            hint = f" (did you mean {(' ' + text)!r} with a leading space? it is one token)"
        raise ValueError(f"{role} {text!r} must be a single token but is {len(ids)} tokens{hint}.")
    return ids[0]


class PatchingObjective:
    """Exact (and differentiable) patching score of one component for candidate prompts x'.

    Candidates are ``[C, S]`` token ids of the clean prompt's length S. The clean prompt's run
    is computed once: its metric, the target's activation ``[S, *features]`` and the residual
    stream where the target's output enters it.

    Every run is on the model's block adapter (:mod:`attrscope.arch.forward`) when it has one
    and it reproduces the model's metric on the clean prompt (the one decision,
    :func:`attrscope.engine.verified_adapter`); otherwise through the model's hooks.
    :meth:`evaluate` (exact, no gradients) computes the patched run from the target's layer on
    (the patch enters the residual stream where the target's branch joins it,
    :meth:`SuffixForward.enter`); :meth:`gradient` differentiates whole patched runs with
    respect to the one-hot encoding of x'.
    """

    def __init__(self, model, clean_ids: list[int], answer_id: int, distractor_id: int,
                 component: Component, direction: str, allow_fast: bool = True):
        self.model = model
        self.device = model.cfg.device if model.cfg.device is not None else "cpu"
        self.clean = torch.tensor(clean_ids, dtype=torch.long, device=self.device)
        self.answer_id, self.distractor_id = answer_id, distractor_id
        self.component = component
        self.direction = check_direction(direction)
        kind, layer = component.spec, component.layer
        self.site = (forward.BRANCH_POINT[kind.branch], layer)
        self.n_units = kind.n_units(arch.config_of(model))
        self.W_E = model.W_E.detach()
        self.fast = None
        with torch.no_grad():
            hold = forward.Hold({self.site})
            logits = self._logits(self.clean[None], None, [hold])  # the model's own run
            self.metric_clean = self._metric(logits)[0]
            self.clean_unit = self._unit(hold)[0].clone()  # [S, *features]
            self.nll_clean = float(self._nll(logits, self.clean[None])[0])
            if allow_fast:
                self.fast, _ = verified_adapter(model, self._clean_check)

    def _clean_check(self, adapter) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The suffix-only forward's unpatched metric on the clean prompt against the model's."""
        self.clean_suffix = self._suffix(adapter, self.clean[None])
        rows = torch.zeros(1, dtype=torch.long, device=self.device)
        unpatched = self._fast_metric(self.clean_suffix, rows, torch.zeros_like(self.clean_unit[None]))
        return {"metric": (unpatched, self.metric_clean[None])}

    def _suffix(self, adapter, tokens: torch.Tensor) -> SuffixForward:
        """The suffix-only forward over the cached unpatched run of ``tokens`` ``[B, S]``."""
        caches: list[dict] = []
        final = arch.full_forward(adapter, arch.embedding(self.model, tokens, adapter), caches)
        return SuffixForward(adapter, caches, final)

    # -- pieces ---------------------------------------------------------------------------------
    def _logits(self, tokens: torch.Tensor, onehot: torch.Tensor | None,
                edits: list[forward.Edit]) -> torch.Tensor:
        """Full logits ``[B, S, V]`` of tokens ``[B, S]`` run with ``edits``; with ``onehot``
        ``[B, S, V]`` the token embedding is ``onehot @ W_E``, differentiably."""
        token_embeds = None if onehot is None else onehot.to(self.W_E.dtype) @ self.W_E
        if self.fast is None:
            hooks = forward.as_hooks(edits, int(self.model.cfg.n_layers))
            if token_embeds is not None:
                hooks.insert(0, (EMBED_HOOK, lambda act, hook: token_embeds))
            with hooks_attached(self.model, hooks):
                return self.model(tokens)
        embed = arch.embedding(self.model, tokens, self.fast, token_embeds)
        return self.fast.logits(forward.final_stream(self.fast, embed, forward.Plan(edits=edits)))

    def _unit(self, hold: forward.Hold) -> torch.Tensor:
        """The target unit's activation ``[B, S, *f]`` held by ``hold``."""
        return hold.held[self.site][:, :, self.component.unit]

    def _set_unit(self, values: torch.Tensor) -> forward.Replace:
        """A patch setting the target unit, at every position, to ``values`` ``[B or 1, S, *f]``."""
        full = values.new_zeros(values.shape[0], values.shape[1], self.n_units, *values.shape[2:])
        full[:, :, self.component.unit] = values
        mask = torch.zeros(1, self.n_units, dtype=torch.bool, device=values.device)
        mask[0, self.component.unit] = True
        return forward.Replace(self.site, mask, full)

    def _fast_metric(self, suffix: SuffixForward, rows: torch.Tensor, delta: torch.Tensor
                     ) -> torch.Tensor:
        """Metric ``[R]`` of the cached runs ``rows`` ``[R]`` of ``suffix`` with the target unit
        changed by ``delta`` ``[R, S, *f]``, continued by the suffix-only forward."""
        kind, layer = self.component.spec, self.component.layer
        unit = torch.tensor([self.component.unit], device=delta.device)
        change = kind.write(suffix.adapter, layer, delta.unsqueeze(2), unit)[0]  # [R, S, d]
        patched, stage = suffix.enter(kind, layer, change, rows, 0)
        R, S = change.shape[:2]
        last = torch.full((R,), S - 1, dtype=torch.long, device=delta.device)
        readout = Readout("logit_diff", torch.full_like(last, self.answer_id)[:, None],
                          torch.full_like(last, self.distractor_id)[:, None])
        return suffix.run(layer, stage, patched, rows, 0, last, readout)

    def _metric(self, logits: torch.Tensor) -> torch.Tensor:
        """logits ``[B, S, V]`` -> logit(answer) - logit(distractor) at the last position ``[B]``."""
        last = logits[:, -1]
        return last[:, self.answer_id] - last[:, self.distractor_id]

    @staticmethod
    def _nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token negative log-likelihood ``[B]`` (float64) of tokens ``[B, S]``."""
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        return -logp.gather(2, tokens[:, 1:, None]).squeeze(2).to(torch.float64).mean(-1)

    def _scores(self, tokens: torch.Tensor, onehot: torch.Tensor | None = None):
        """(score, metric of x', nll of x'), each ``[B]``, for tokens ``[B, S]``. With ``onehot``
        ``[B, S, V]`` the embedding of x' is computed from it and the patched runs are whole
        runs, so the score is differentiable in it; without, on the adapter, the patched run is
        the suffix-only forward."""
        B = tokens.shape[0]
        hold = forward.Hold({self.site})
        logits = self._logits(tokens, onehot, [hold])
        metric = self._metric(logits)
        unit = self._unit(hold)
        suffix = self.fast is not None and onehot is None
        if self.direction == "denoising":
            if suffix:
                rows = torch.arange(B, device=tokens.device)
                patched = self._fast_metric(self._suffix(self.fast, tokens), rows,
                                            self.clean_unit - unit)
            else:
                patched = self._metric(self._logits(tokens, onehot,
                                                    [self._set_unit(self.clean_unit[None])]))
            score = patched - metric
        else:
            if suffix:
                rows = torch.zeros(B, dtype=torch.long, device=tokens.device)
                patched = self._fast_metric(self.clean_suffix, rows, unit - self.clean_unit)
            else:
                clean = self.clean[None].expand(B, -1)
                patched = self._metric(self._logits(clean, None, [self._set_unit(unit)]))
            score = patched - self.metric_clean
        return score, metric, self._nll(logits, tokens)

    def objective_of(self, score: torch.Tensor) -> torch.Tensor:
        """What the search maximises: the score (denoising) or minus the score (noising)."""
        return score if self.direction == "denoising" else -score

    # -- public ---------------------------------------------------------------------------------
    def evaluate(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Exact scores of candidates ``[C, S]``: dict of ``[C]`` tensors score, objective,
        metric (unpatched metric of x'), perplexity, perplexity_ratio (vs the clean prompt)."""
        with torch.no_grad():
            score, metric, nll = self._scores(tokens)
        return {"score": score, "objective": self.objective_of(score), "metric": metric,
                "perplexity": nll.exp(), "perplexity_ratio": (nll - self.nll_clean).exp()}

    def gradient(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective ``[B]``, d objective / d one-hot ``[B, S, V]``) at prompts ``[B, S]``."""
        onehot = torch.nn.functional.one_hot(tokens, self.W_E.shape[0]).to(self.W_E.dtype)
        onehot.requires_grad_(True)
        with torch.enable_grad():
            score, _, _ = self._scores(tokens, onehot)
            objective = self.objective_of(score)
            (grad,) = torch.autograd.grad(objective.sum(), onehot)
        return objective.detach(), grad.detach()


@dataclass
class Counterfactual:
    """What the search found. ``score`` is the target's patching score with the found prompt
    (sign convention of ``direction``); ``scores``/``standard_scores`` are the ``ap`` scores
    ``[n_layers, n_units]`` of every component of the target's kind with the found prompt and
    with the ``standard`` corrupted prompt (if one was given)."""

    clean: str
    corrupted: str
    answer: str
    distractor: str
    component: str
    kind: str
    direction: str
    score: float
    n_changed: int
    changed_positions: list[int]
    perplexity_clean: float
    perplexity: float
    metric_clean: float
    metric_corrupted: float
    scores: torch.Tensor
    standard: str | None = None
    standard_score: float | None = None
    standard_scores: torch.Tensor | None = None
    history: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def perplexity_ratio(self) -> float:
        return self.perplexity / self.perplexity_clean


def patching_scores(model, clean: str, corrupted: str, answer: str, distractor: str,
                    direction: str, kind: str) -> torch.Tensor:
    """``ap`` scores ``[n_layers, n_units]`` of every component of ``kind`` for one prompt pair."""
    from ..api import attribute

    task = build_task(model, [PromptPair(clean, corrupted, answer, distractor)], name="counterfactual")
    return attribute(model, task, "ap", direction, kind, show_progress=False)[kind][0]


def _decode(model, ids: list[int]) -> str:
    skip = 1 if _bos_id(model) is not None else 0
    return model.tokenizer.decode(ids[skip:], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)


class Proposals(NamedTuple):
    """How many substitutions a step proposes: at most ``max_changes`` positions may differ from
    the clean prompt, the ``top_k`` tokens of every position form the pool, ``n_candidates`` are
    drawn from it."""

    max_changes: int
    top_k: int
    n_candidates: int


def propose(grad: torch.Tensor, tokens: torch.Tensor, clean: torch.Tensor,
            editable: torch.Tensor, banned: torch.Tensor, limits: Proposals,
            generator: torch.Generator) -> torch.Tensor:
    """Single-token substitutions of ``tokens`` ``[S]`` ranked by the linearised gain
    grad[p, v] - grad[p, tokens[p]] (grad ``[S, V]``, the objective's gradient with respect to the
    one-hot input): the ``top_k`` tokens of every editable position form a pool, of which the
    best ``n_candidates // 2`` and a seeded random draw of the rest are returned as candidate
    prompts ``[C, S]``. Positions beyond ``max_changes`` differences from ``clean`` are closed."""
    max_changes, top_k, n_candidates = limits
    S, V = grad.shape
    device = tokens.device
    gain = grad - grad.gather(1, tokens[:, None])
    gain[~editable] = -math.inf
    gain[:, banned] = -math.inf
    gain[torch.arange(S, device=device), tokens] = -math.inf
    changed = tokens != clean
    if int(changed.sum()) >= max_changes:
        gain[~changed] = -math.inf  # only already-changed positions may change (or revert)
    top_gain, top_tok = gain.topk(min(top_k, V), dim=1)  # [S, k]
    pos = torch.arange(S, device=device)[:, None].expand_as(top_tok)
    ok = torch.isfinite(top_gain)
    pool_gain, pool_pos, pool_tok = top_gain[ok].cpu(), pos[ok], top_tok[ok]
    order = torch.argsort(pool_gain, descending=True, stable=True)
    n_best = min(len(order), max(1, n_candidates // 2))
    rest = order[n_best:]
    n_random = min(len(rest), n_candidates - n_best)
    picked = torch.cat([order[:n_best], rest[torch.randperm(len(rest), generator=generator)[:n_random]]])
    picked = picked.to(device)
    cands = tokens[None].repeat(len(picked), 1)
    cands[torch.arange(len(picked), device=device), pool_pos[picked]] = pool_tok[picked]
    return cands


def _saved_step(beams: list, best: float, stale: int, history: list[dict], stop: bool,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The search's whole state after a step, as tensors for a checkpoint chunk: the beams'
    tokens ``[B, S]`` and state values ``[B]``, and best, stale, stop, the history (JSON bytes)
    and the random generator's state, so a resumed search continues exactly as this one."""
    saved = {"tokens": torch.stack([tokens for tokens, _ in beams]),
             "best": torch.tensor(best, dtype=torch.float64), "stale": torch.tensor(stale),
             "stop": torch.tensor(stop), "generator": generator.get_state(),
             "history": torch.frombuffer(bytearray(json.dumps(history).encode()), dtype=torch.uint8)}
    for key in beams[0][1]:
        saved[f"state.{key}"] = torch.stack([state[key] for _, state in beams])
    return saved


def _restore_step(saved: dict[str, torch.Tensor], generator: torch.Generator,
                  device: torch.device) -> tuple[list, float, int, list[dict], bool]:
    """(beams, best, stale, history, stop) of :func:`_saved_step`, the beams on ``device``;
    sets ``generator``'s state."""
    generator.set_state(saved["generator"])
    keys = [k[len("state."):] for k in saved if k.startswith("state.")]
    beams = [(tokens.to(device), {k: saved[f"state.{k}"][i].to(device) for k in keys})
             for i, tokens in enumerate(saved["tokens"])]
    history = json.loads(bytes(saved["history"].tolist()).decode())
    return (beams, float(saved["best"]), int(saved["stale"]), history, bool(saved["stop"]))


def find_counterfactual(model, clean: str, answer: str, distractor: str, component: Component,
                        direction: str = "denoising", *, max_changes: int = 3,
                        max_perplexity_ratio: float = 2.0, n_iters: int = 20, top_k: int = 16,
                        n_candidates: int = 64, beam: int = 4, patience: int = 3, seed: int = 0,
                        start: str | None = None, standard: str | None = None,
                        log: Callable[[str], None] | None = None,
                        checkpoint: Checkpoint | NoCheckpoint = NO_CHECKPOINT) -> Counterfactual:
    """Search a corrupted prompt for ``component`` (see the module docstring).

    ``start``: the prompt the search starts from (default: the clean prompt itself, score 0);
    it must satisfy the constraints. ``standard``: a corrupted prompt to compare with (e.g. the
    task's usual corruption); its ``ap`` scores are reported next to the found prompt's.
    ``log``: called with one line per search step and per scoring phase (progress).
    ``checkpoint`` (:mod:`attrscope.checkpoint`): keeps the search's state after every step, so
    an interrupted search resumes at the step it was in, with the same result.
    """
    log = log or (lambda line: None)
    check_direction(direction)
    for name, value, low in (("max_changes", max_changes, 1), ("n_iters", n_iters, 1),
                             ("top_k", top_k, 1), ("n_candidates", n_candidates, 1),
                             ("beam", beam, 1), ("patience", patience, 1)):
        if int(value) < low:
            raise ValueError(f"{name} must be at least {low}, got {value}.")
    if not max_perplexity_ratio >= 1:
        raise ValueError(f"max_perplexity_ratio must be at least 1 (the clean prompt's own "
                         f"perplexity), got {max_perplexity_ratio}.")
    answer_id = single_token(model, answer, "answer")
    distractor_id = single_token(model, distractor, "distractor")
    if answer_id == distractor_id:
        raise ValueError(f"answer and distractor are the same token {answer!r}.")
    clean_ids = prompt_ids(model, clean)
    if len(clean_ids) < 2:
        raise ValueError(f"The clean prompt {clean!r} is too short to search.")
    if _decode(model, clean_ids) != clean:
        clean = _decode(model, clean_ids)  # the text the tokens stand for
    objective = PatchingObjective(model, clean_ids, answer_id, distractor_id, component, direction)
    device = objective.device
    clean_t = objective.clean
    S = len(clean_ids)

    def check(ids: torch.Tensor) -> torch.Tensor:
        """Round trip ``[C]``: each candidate decodes to text that tokenizes back to itself."""
        return torch.tensor([prompt_ids(model, _decode(model, row)) == row
                             for row in ids.tolist()], dtype=torch.bool, device=device)

    if start is None:
        current = clean_t.clone()
    else:
        start_ids = prompt_ids(model, start)
        if len(start_ids) != S:
            raise ValueError(f"start prompt has {len(start_ids)} tokens but the clean prompt has "
                             f"{S}; they must match: start={start!r}.")
        current = torch.tensor(start_ids, dtype=torch.long, device=device)
        if int((current != clean_t).sum()) > max_changes:
            raise ValueError(f"start prompt differs from the clean prompt in "
                             f"{int((current != clean_t).sum())} tokens, more than max_changes="
                             f"{max_changes}.")
    state = objective.evaluate(current[None])
    if float(state["perplexity_ratio"][0]) > max_perplexity_ratio:
        raise ValueError(f"start prompt's perplexity is {float(state['perplexity_ratio'][0]):.2f} "
                         f"times the clean prompt's, above max_perplexity_ratio="
                         f"{max_perplexity_ratio}.")
    editable = torch.ones(S, dtype=torch.bool, device=device)
    if _bos_id(model) is not None:
        editable[0] = False
    banned = torch.tensor(sorted(set(model.tokenizer.all_special_ids)), dtype=torch.long,
                          device=device)
    generator = torch.Generator().manual_seed(int(seed))
    beams = [(current, {k: v[0] for k, v in state.items()})]  # best first
    best = float(state["objective"][0])
    history = [{"iteration": 0, "objective": best, "score": float(state["score"][0]),
                "n_changed": int((current != clean_t).sum()),
                "perplexity_ratio": float(state["perplexity_ratio"][0]), "evaluated": 1,
                "feasible": 1, "prompt": _decode(model, current.tolist())}]
    stale = 0
    for iteration in range(1, n_iters + 1):
        saved = checkpoint.get(f"step{iteration}")
        if saved is not None:  # a finished step of an interrupted search
            beams, best, stale, history, stop = _restore_step(saved, generator, device)
            if stop:
                break
            continue
        stop = False
        _, grads = objective.gradient(torch.stack([tokens for tokens, _ in beams]))
        limits = Proposals(max_changes, top_k, n_candidates)
        proposals = [propose(grad, tokens, clean_t, editable, banned, limits, generator)
                     for grad, (tokens, _) in zip(grads, beams)]
        seen = {tuple(tokens.tolist()) for tokens, _ in beams}
        rows = []
        for row in torch.cat(proposals).tolist():
            if tuple(row) not in seen:
                seen.add(tuple(row))
                rows.append(row)
        cands = torch.tensor(rows, dtype=torch.long, device=device).view(len(rows), S)
        cands = cands[check(cands)] if rows else cands  # text that tokenizes back to itself
        if not rows:
            stop = True
        elif len(cands) == 0:
            stale += 1
            stop = stale >= patience
        else:
            result = objective.evaluate(cands)
            feasible = result["perplexity_ratio"] <= max_perplexity_ratio
            pool = list(beams) + [(cands[i], {k: v[i] for k, v in result.items()})
                                  for i in feasible.nonzero().flatten().tolist()]
            order = sorted(range(len(pool)), key=lambda i: -float(pool[i][1]["objective"]))
            beams = [pool[i] for i in order[:beam]]  # stable: earlier (older) entries win ties
            top_tokens, top_state = beams[0]
            improved = float(top_state["objective"]) > best + 1e-6
            best = max(best, float(top_state["objective"]))
            stale = 0 if improved else stale + 1
            history.append({"iteration": iteration, "objective": float(top_state["objective"]),
                            "score": float(top_state["score"]),
                            "n_changed": int((top_tokens != clean_t).sum()),
                            "perplexity_ratio": float(top_state["perplexity_ratio"]),
                            "evaluated": len(cands), "feasible": int(feasible.sum()),
                            "prompt": _decode(model, top_tokens.tolist())})
            log(f"step {iteration}/{n_iters}: {len(cands)} candidates, {int(feasible.sum())} "
                f"feasible; best score {float(top_state['score']):+.4f}")
            stop = stale >= patience
        checkpoint.put(f"step{iteration}", _saved_step(beams, best, stale, history, stop,
                                                        generator))
        if stop:
            break
    current, final = beams[0]
    state = {k: v[None] for k, v in final.items()}

    found = _decode(model, current.tolist())
    kind = component.kind
    log(f"scoring every {kind[:-1]} with the found prompt (ap)"
        + (" and with the standard corruption ..." if standard is not None else " ..."))
    scores = patching_scores(model, clean, found, answer, distractor, direction, kind)
    standard_scores = standard_score = None
    if standard is not None:
        standard_scores = patching_scores(model, clean, standard, answer, distractor, direction, kind)
        standard_score = float(standard_scores[component.layer, component.unit])
    diff = (current != clean_t).nonzero().flatten().tolist()
    settings = {"max_changes": max_changes, "max_perplexity_ratio": max_perplexity_ratio,
                "n_iters": n_iters, "top_k": top_k, "n_candidates": n_candidates,
                "beam": beam, "patience": patience, "seed": seed, "start": start}
    return Counterfactual(
        clean=clean, corrupted=found, answer=answer, distractor=distractor,
        component=component.label, kind=kind, direction=direction,
        score=float(state["score"][0]), n_changed=len(diff), changed_positions=diff,
        perplexity_clean=math.exp(objective.nll_clean),
        perplexity=float(state["perplexity"][0]), metric_clean=float(objective.metric_clean),
        metric_corrupted=float(state["metric"][0]), scores=scores, standard=standard,
        standard_score=standard_score, standard_scores=standard_scores, history=history,
        settings=settings)


__all__ = ["Counterfactual", "PatchingObjective", "find_counterfactual", "patching_scores",
           "prompt_ids"]
