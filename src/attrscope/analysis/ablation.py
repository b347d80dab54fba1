"""Evaluate the model with a set of components replaced, to check attributions by ablation.

A component (head ``L.H`` or neuron ``L.N``, or a unit of a site: ``resid_pre``, ``attn_out``,
``mlp_out``, ``q``, ``k``, ``v``, :mod:`attrscope.components`) is replaced at every position of
the *run* prompt (``run="clean"`` by default) by one of:

- ``zero``: 0 (for a head, its ``z``; its output is then 0 because the output is ``z @ W_O``).
  For ``resid_pre`` it is the **whole residual stream** entering that block (layer ``n_layers``:
  the final stream) set to 0: the token's embedding and every earlier block's output are gone
  there, and the later blocks read a stream of norm 0 (their pre-norm gives its bias alone) and
  add their outputs to it. For ``attn_out`` / ``mlp_out`` it is the layer's whole branch output
  before any post-norm, its output bias included; for ``q`` / ``k`` / ``v`` the vector before
  any rotary embedding (a zero query, or key, gives that head uniform attention);
- ``mean``: its mean activation over the reference prompts **per position**, counting only real
  tokens (a prompt contributes to positions up to its own last token; padding never counts).
  Positions no reference prompt reaches take the mean over all real positions. The default
  reference prompts are the task's clean and corrupted prompts;
- ``other``: the other prompt's activation (for ``run="clean"``, the corrupted prompt's: the
  ablation is noising patching of the whole set at once).

Many sets are evaluated per forward pass: copies of the batch are stacked and each copy has its
own mask of replaced units, held in a tensor made for that call — never a loop variable captured
by a closure (the seed code's late-binding bug ablated one component per layer). The replacing
values are the batch's own, read by every copy (:class:`TiledReplace`), not copied per set.

The sites need the model's block adapter (a model run through TransformerLens hooks ablates
heads and neurons only; a site is refused naming it). Their values are those of the one forward's
points (:mod:`attrscope.arch.forward`), replaced by the same masked edits as heads and neurons.

On the block adapter a pass shares the unablated run (:class:`attrscope.suffix_forward.SuffixForward`):
it starts at the earliest layer any of its sets ablates, from the run's cached stream (sets are
grouped by that layer), and with ``other`` only at the first position where the clean and
corrupted prompts differ (before it, the other prompt's activations are the run's own, so
replacing them changes nothing), the earlier positions' keys and values coming from the cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from ..arch import config_of
from ..checkpoint import NO_CHECKPOINT, Checkpoint, NoCheckpoint
from ..components import KINDS, Component, ComponentKind, parse_component  # noqa: F401
from ..arch import forward
from ..arch.forward import Replace
from ..engine import Runner, chunks, default_memory_budget
from ..tasks.base import Task
from ..sites import from_units, held_activations, require_adapter, site_activations, stream

ABLATIONS = ("zero", "mean", "other")


def all_components(kind: str, cfg) -> list[Component]:
    spec = KINDS[kind]
    return [Component(kind, layer, unit) for layer in range(spec.n_layers(int(cfg.n_layers)))
            for unit in range(spec.n_units(cfg))]


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


@dataclass
class TiledReplace(Replace):
    """A :class:`Replace` for ``copies`` stacked copies of an ``n``-sample batch: row
    ``c * n + i`` takes ``values[i]`` (``[n or 1, pos >= P, units, *features]``), so the values
    are held once, not once per copy."""

    def spares_last_block(self, n_layers: int) -> bool:
        return self.site[1] < n_layers - 1

    def __call__(self, point: str, layer: int, x: torch.Tensor) -> torch.Tensor:
        if (point, layer) != self.site:
            return x
        n = self.values.shape[0]
        tiled = x.view(x.shape[0] // n, n, *x.shape[1:])  # [copies, n, P, units, *features]
        m = self.mask.reshape(tiled.shape[0], n, 1, self.mask.shape[1], *([1] * (x.dim() - 3)))
        values = self.values[:, :x.shape[1]].to(x)
        return torch.where(m.to(x.device), values, tiled).view(x.shape)


def _chunk_name(sets: list[frozenset]) -> str:
    """A name for a block of ablated sets that depends only on the sets, in order."""
    # the dataclass's order, by key: its generated comparisons took seconds for 131,072 neurons
    key = lambda c: (c.kind, c.layer, c.unit, c.position)  # noqa: E731
    labels = "|".join(",".join(f"{c.kind}:{c.label}" for c in sorted(s, key=key)) for s in sets)
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
        sites = [kind for kind in self.kinds if not kind.hooked]
        if sites:  # refused here, before any ablation, naming the sites and why
            require_adapter(self.runner, sites)
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
        """hook name -> ``[n or 1, seq, units, *features]`` values that replace ablated units
        (a one-unit site's, ``resid_pre``, ``attn_out``, ``mlp_out``: ``[n or 1, seq, d]``, the
        shape of its point of the forward)."""
        if self._replacements is None:
            seq = self.run_tokens.shape[1]
            if self.how == "other":
                acts = dict(self.runner.source_acts)
            elif self.runner.hooked_kinds:
                acts = self.runner.activations(self.reference_tokens)
            else:
                acts = {}
            acts.update(self._site_activations())
            if self.how == "zero":
                self._replacements = {k: torch.zeros_like(v[:1, :1]).expand(1, seq, *v.shape[2:])
                                      for k, v in acts.items()}
            elif self.how == "mean":
                self._replacements = {
                    k: per_position_mean(v, self.reference_lengths, seq).unsqueeze(0)
                    for k, v in acts.items()}
            else:
                self._replacements = acts
        return self._replacements

    def _site_activations(self) -> dict[str, torch.Tensor]:
        """hook name -> the sites' activations, in their points' shapes: the other prompts'
        (``other``), the run's (``zero``: only their shapes count) or the reference prompts'
        (``mean``)."""
        sites = [kind for kind in self.kinds if not kind.hooked]
        if not sites:
            return {}
        if self.how == "mean":
            acts = held_activations(self.runner, sites, self.reference_tokens)
        else:
            acts = site_activations(self.runner, sites, "source" if self.how == "other" else "run")
        return {KINDS[name].hook_name(layer): from_units(KINDS[name], v)
                for (name, layer), v in acts.items() if KINDS[name] in sites}

    def _check(self, components: Sequence[Component]) -> None:
        known = {k.name: k.n_units(config_of(self.model)) for k in self.kinds}
        for c in components:
            if c.kind not in known:
                raise ValueError(f"This ablator handles {sorted(known)}, not {c.kind} ({c}).")
            layers = c.spec.n_layers(self.n_layers)
            if not (0 <= c.layer < layers and 0 <= c.unit < known[c.kind]):
                if not (c.spec.per_layer or c.spec.final_layer):  # raises with the reason
                    parse_component(f"{c.layer}.{c.unit}", c.kind, config_of(self.model))
                raise ValueError(f"{c.kind} {c.label} does not exist: the model has {layers} "
                                 f"layers of {c.kind} (0-{layers - 1}), {known[c.kind]} "
                                 f"{c.spec.unit}(s) each (0-{known[c.kind] - 1}).")

    def site(self, kind: str, layer: int) -> tuple[str, int]:
        """The ``(point, layer)`` of the forward where ``kind``'s units of ``layer`` are."""
        return KINDS[kind].point_at(layer, self.n_layers)

    def edits_for(self, sets: Sequence[Sequence[Component]], n: int, start: int = 0
                  ) -> list[Replace]:
        """Patches (:class:`TiledReplace`) that ablate ``sets[s]`` in batch rows
        ``s*n .. (s+1)*n - 1``: one per site, each with its own ``[rows, units]`` mask, for a
        pass that computes positions from ``start`` on."""
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
            edits.append(TiledReplace(self.site(kind_name, layer), mask,
                                      self.replacements[name][:, start:]))
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

    def _sets_per_pass(self) -> int:
        """Sets one pass holds: ``max_batch_rows // n``, fewer when the default memory budget of
        a batched pass (:func:`attrscope.engine.default_memory_budget`, by the one memory model)
        allows fewer rows: a large model's passes would otherwise hold gigabytes."""
        rows = self.max_batch_rows
        if self.runner.fast is not None:
            start = self.runner.start if self.how == "other" else 0
            budget = {"max_memory": default_memory_budget(self.run_tokens.device)}
            rows = min(rows, self.runner.rows_per_pass(budget, span=(start,
                                                                     self.run_tokens.shape[1])))
        return max(1, rows // self.task.n)

    def _evaluate(self, sets: list[frozenset]) -> torch.Tensor:
        """``[len(sets), n]`` ablated metrics, :meth:`_sets_per_pass` sets per pass, the sets
        grouped by the earliest layer they ablate (each pass starts there on the fast path)."""
        n = self.task.n
        per_pass = self._sets_per_pass()
        order = sorted(range(len(sets)), key=lambda s: min((c.layer for c in sets[s]),
                                                           default=self.n_layers - 1))
        values = torch.empty(len(sets), n)
        with torch.no_grad():
            for i in range(0, len(sets), per_pass):
                picked = order[i:i + per_pass]
                # a set's order does not matter (edits_for makes masks); sorting one of all
                # but 10 of Llama-3.2-1B's 131,072 neurons took 2 s (dataclass comparisons)
                chunk = [list(sets[s]) for s in picked]
                metric = self._ablated_metric(chunk)
                values[torch.tensor(picked)] = metric.view(len(chunk), n).float().cpu()
        return values

    def _ablated_metric(self, chunk: list[list[Component]]) -> torch.Tensor:
        """Metric ``[len(chunk) * n]`` of the run with ``chunk[s]`` ablated in copy s."""
        n, runner = self.task.n, self.runner
        for components in chunk:  # before any layer of theirs is looked up
            self._check(components)
        rows = runner.rows_for(len(chunk))
        fast = runner.fast
        if fast is None:
            tokens = self.run_tokens.repeat(len(chunk), 1)
            return runner.metric_of(tokens, self.edits_for(chunk, n), rows)
        first = min((c.layer for components in chunk for c in components),
                    default=self.n_layers - 1)
        start = runner.start if self.how == "other" else 0
        resid = stream(runner, first, rows, start, self.run_tokens.shape[1])
        plan = forward.Plan(forward.Start(first, "pre", start), edits=self.edits_for(chunk, n, start),
                            prefix=fast.prefix(rows, start) if start else None)
        return forward.metric(fast.adapter, resid, plan, self.task.answer_pos[rows],
                              self.task.readout(rows))

    def components(self, kind: str) -> list[Component]:
        """Every component of ``kind`` this ablator can replace (the null sets' pool)."""
        return all_components(kind, config_of(self.model))

    @property
    def base(self) -> torch.Tensor:
        """``[n]`` unablated metric of the run prompts."""
        return self.metrics([[]])[0]

    def metric_change(self, sets: Sequence[Sequence[Component]]) -> torch.Tensor:
        """``[len(sets)]`` mean over samples of (ablated metric - unablated metric)."""
        return (self.metrics(sets) - self.base).mean(dim=1)
