"""Evaluate the model with a set of components replaced, to check attributions by ablation.

A component (head ``L.H`` or neuron ``L.N``) is replaced at every position of the *run* prompt
(``run="clean"`` by default) by one of:

- ``zero``: 0 (for a head, its ``z``; its output is then 0 because the output is ``z @ W_O``);
- ``mean``: its mean activation over the reference prompts **per position**, counting only real
  tokens (a prompt contributes to positions up to its own last token; padding never counts).
  Positions no reference prompt reaches take the mean over all real positions. The default
  reference prompts are the task's clean and corrupted prompts;
- ``other``: the other prompt's activation (for ``run="clean"``, the corrupted prompt's: the
  ablation is noising patching of the whole set at once).

Many sets are evaluated per forward pass: copies of the batch are stacked and each copy has its
own mask of replaced units, held in a tensor made for that call — never a loop variable captured
by a closure (the seed code's late-binding bug ablated one component per layer).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from ..arch import config_of
from ..checkpoint import NO_CHECKPOINT, Checkpoint, NoCheckpoint
from ..components import KINDS, Component, ComponentKind, parse_component  # noqa: F401
from ..arch.forward import BRANCH_POINT, Replace
from ..engine import Runner, chunks
from ..tasks.base import Task

ABLATIONS = ("zero", "mean", "other")


def all_components(kind: str, cfg) -> list[Component]:
    n_units = KINDS[kind].n_units(cfg)
    return [Component(kind, layer, unit) for layer in range(int(cfg.n_layers))
            for unit in range(n_units)]


def per_position_mean(acts: torch.Tensor, lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Mean activation per position over prompts, padding excluded.

    acts: ``[n, pos, *rest]``; lengths: ``[n]`` real tokens per prompt. Returns
    ``[seq_len, *rest]``: position p averages the prompts with ``p < length``; positions no prompt
    reaches (and positions beyond ``pos``) take the mean over all real positions.
    """
    n, pos = acts.shape[:2]
    real = torch.arange(pos, device=acts.device)[None, :] < lengths.to(acts.device)[:, None]
    weights = real.to(acts.dtype).reshape(n, pos, *([1] * (acts.dim() - 2)))
    summed = (acts * weights).sum(dim=0)  # [pos, *rest]
    counts = weights.sum(dim=0)  # [pos, 1...]
    overall = summed.sum(dim=0) / counts.sum().clamp(min=1)
    out = overall.expand(seq_len, *acts.shape[2:]).clone()
    reached = min(pos, seq_len)
    has = (counts[:reached] > 0).expand(reached, *acts.shape[2:])
    out[:reached] = torch.where(has, summed[:reached] / counts[:reached].clamp(min=1),
                                out[:reached])
    return out


# Sets per resumable chunk of an ablation sweep: fixed, so chunk names never depend on batching.
ABLATION_CHUNK = 64


def _chunk_name(sets: list[frozenset]) -> str:
    """A name for a block of ablated sets that depends only on the sets, in order."""
    labels = "|".join(",".join(f"{c.kind}:{c.layer}.{c.unit}" for c in sorted(s)) for s in sets)
    return "ablate." + hashlib.sha256(labels.encode()).hexdigest()[:24]


class Ablator:
    """Metric of ``task`` with sets of components replaced (``how``: zero, mean, other).

    run: which prompt of each pair is run ("clean" or "corrupted"). reference: (tokens
    ``[m, seq]``, lengths ``[m]``), the prompts of the ``mean`` ablation (default: the task's
    clean and corrupted prompts).
    """

    def __init__(self, model, task: Task, how: str = "other", run: str = "clean",
                 kinds: Sequence[str] = ("heads", "neurons"),
                 reference: tuple[torch.Tensor, torch.Tensor] | None = None,
                 max_batch_rows: int = 1024, runner: Runner | None = None):
        if how not in ABLATIONS:
            raise ValueError(f"Ablation {how!r} is unknown; choose from {', '.join(ABLATIONS)}.")
        if run not in ("clean", "corrupted"):
            raise ValueError(f"run must be 'clean' or 'corrupted', got {run!r}.")
        self.model, self.task, self.how, self.run = model, task, how, run
        self.kinds = [KINDS[k] if isinstance(k, str) else k for k in kinds]
        self.max_batch_rows = max_batch_rows
        self.run_tokens = task.clean_tokens if run == "clean" else task.corrupted_tokens
        if reference is None:
            reference = (torch.cat([task.clean_tokens, task.corrupted_tokens]),
                         (task.answer_pos + 1).repeat(2))
        reference_tokens, reference_lengths = reference
        self.reference_tokens = reference_tokens.to(self.run_tokens.device)
        self.reference_lengths = reference_lengths.to(self.run_tokens.device)
        # The Runner of the matching patching direction gives the other prompt's activations
        # and a forward that unembeds only each sample's answer position; a caller's runner for
        # the same model, task, direction and kinds is reused with its caches.
        direction = "noising" if run == "clean" else "denoising"
        reusable = (runner is not None and runner.model is model and runner.task is task
                    and runner.direction == direction
                    and {k.name for k in self.kinds} <= {k.name for k in runner.kinds})
        self.runner = runner if reusable else Runner(model, task, direction, self.kinds)
        self._replacements: dict[str, torch.Tensor] | None = None
        self._memo: dict[frozenset, torch.Tensor] = {}
        # Where finished blocks of ablated sets are kept, so an interrupted sweep resumes.
        self.checkpoint: Checkpoint | NoCheckpoint = NO_CHECKPOINT

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    def _hook_names(self) -> list[tuple[ComponentKind, int, str]]:
        return [(kind, layer, kind.hook_name(layer)) for kind in self.kinds
                for layer in range(self.n_layers)]

    @property
    def replacements(self) -> dict[str, torch.Tensor]:
        """hook name -> ``[n or 1, seq, units, *features]`` values that replace ablated units."""
        if self._replacements is None:
            seq = self.run_tokens.shape[1]
            if self.how == "other":
                self._replacements = dict(self.runner.source_acts)
            else:
                acts = self.runner.activations(self.reference_tokens)
                if self.how == "zero":
                    self._replacements = {k: torch.zeros_like(v[:1, :1]).expand(1, seq, *v.shape[2:])
                                          for k, v in acts.items()}
                else:
                    self._replacements = {
                        k: per_position_mean(v, self.reference_lengths, seq).unsqueeze(0)
                        for k, v in acts.items()}
        return self._replacements

    def _check(self, components: Sequence[Component]) -> None:
        known = {k.name: k.n_units(config_of(self.model)) for k in self.kinds}
        for c in components:
            if c.kind not in known:
                raise ValueError(f"This ablator handles {sorted(known)}, not {c.kind} ({c}).")
            if not (0 <= c.layer < self.n_layers and 0 <= c.unit < known[c.kind]):
                parse_component(c.label, c.kind, config_of(self.model))  # raises with the reason

    def edits_for(self, sets: Sequence[Sequence[Component]], n: int) -> list[Replace]:
        """Patches (:class:`~attrscope.arch.forward.Replace`) that ablate ``sets[s]`` in batch
        rows ``s*n .. (s+1)*n - 1``: one per site, each with its own ``[rows, units]`` mask."""
        picks: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
        for s, components in enumerate(sets):
            self._check(components)
            for c in components:
                set_ids, units = picks.setdefault((c.kind, c.layer), ([], []))
                set_ids.append(s)
                units.append(c.unit)
        device = self.run_tokens.device
        edits = []
        for (kind_name, layer), (set_ids, units) in picks.items():
            kind = KINDS[kind_name]
            name = kind.hook_name(layer)
            per_set = torch.zeros(len(sets), kind.n_units(config_of(self.model)), dtype=torch.bool,
                                  device=device)
            per_set[torch.tensor(set_ids, device=device), torch.tensor(units, device=device)] = True
            mask = per_set.repeat_interleave(n, dim=0)  # [len(sets) * n, units]
            replacement = self.replacements[name]
            if replacement.shape[0] != 1:  # per-sample values ("other"): one copy per set
                replacement = replacement.repeat(len(sets), *([1] * (replacement.dim() - 1)))
            edits.append(Replace((BRANCH_POINT[kind.branch], layer), mask, replacement))
        return edits

    def metrics(self, sets: Sequence[Sequence[Component]]) -> torch.Tensor:
        """``[len(sets), n]`` metric of every sample with each set ablated (an empty set gives
        the unablated metric). Each distinct set is evaluated once per Ablator (memoised)."""
        n = self.task.n
        self.runner.metric_run  # noqa: B018 - runs (once) the check that allows the early stop
        keys = [frozenset(components) for components in sets]
        todo = list(dict.fromkeys(key for key in keys if key not in self._memo))
        for block in chunks(todo, ABLATION_CHUNK):
            found = self.checkpoint.chunk(_chunk_name(block),
                                          lambda: {"metric": self._evaluate(block)})
            self._memo.update(zip(block, found["metric"]))
        return torch.stack([self._memo[key] for key in keys]) if keys else torch.empty(0, n)

    def _evaluate(self, sets: list[frozenset]) -> torch.Tensor:
        """``[len(sets), n]`` ablated metrics, ``max_batch_rows // n`` sets per pass."""
        n = self.task.n
        per_pass = max(1, self.max_batch_rows // n)
        values = []
        with torch.no_grad():
            for i in range(0, len(sets), per_pass):
                chunk = [sorted(key) for key in sets[i:i + per_pass]]
                tokens = self.run_tokens.repeat(len(chunk), 1)
                rows = self.runner.rows_for(len(chunk))
                metric = self.runner.metric_of(tokens, self.edits_for(chunk, n), rows)
                values.append(metric.view(len(chunk), n).float().cpu())
        return torch.cat(values)

    @property
    def base(self) -> torch.Tensor:
        """``[n]`` unablated metric of the run prompts."""
        return self.metrics([[]])[0]

    def metric_change(self, sets: Sequence[Sequence[Component]]) -> torch.Tensor:
        """``[len(sets)]`` mean over samples of (ablated metric - unablated metric)."""
        return (self.metrics(sets) - self.base).mean(dim=1)
