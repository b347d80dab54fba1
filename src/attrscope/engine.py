"""Running a model for attribution: cached runs, patched runs from a layer on, progress.

Vocabulary used throughout:

- the **run** prompt is the one executed; the **source** prompt is the one whose activations are
  patched in. ``denoising`` runs the corrupted prompt and patches in clean activations;
  ``noising`` runs the clean prompt and patches in corrupted activations.
- a patched forward starts at the patched layer from the run's cached residual stream (everything
  upstream is identical), stacks ``copies`` patched versions of the batch along the batch
  dimension, and unembeds only the position each sample's metric reads.
"""

from __future__ import annotations

import functools
import math
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from . import arch
from .arch import forward
from .arch.memory import PassShape, Widths, bytes_per_row, rows_for_budget
from .checkpoint import NO_CHECKPOINT, Checkpoint, NoCheckpoint
from .components import ComponentKind
from .suffix_forward import SuffixForward
from .tasks.base import Task

DIRECTIONS = ("denoising", "noising")
FINAL_NORM_HOOK = "ln_final.hook_out"
HookFn = Callable[[torch.Tensor, object], torch.Tensor | None]


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(
            f"Unknown direction {direction!r}; use 'denoising' (run corrupted, patch in clean) "
            "or 'noising' (run clean, patch in corrupted)."
        )
    return direction


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the final residual stream is known."""


@contextmanager
def hooks_attached(model, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Attach forward hooks for the duration of the block; they are removed even on error."""
    with model.hooks(fwd_hooks=list(fwd_hooks), reset_hooks_end=True):
        yield


def progress_bar(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


# The one sample-grouping rule's limits (:func:`sample_groups`). Groups of one sample still make
# wide passes (each stacks the patched units or path steps of its group), and on IOI prompts 8
# groups compute half the positions one group does: ``ap`` neurons took 79 s instead of 174 s,
# ``ap`` heads 0.81 s instead of 1.06 s (4-layer GPT-2-width model, 8 prompts, CPU).
MAX_SAMPLE_GROUPS = 8
MIN_GROUP_SIZE = 1
# A group's fixed cost (its passes' Python and kernel launches), in FLOPs of work: on a small
# model a group of one sample costs more in overhead than it saves in positions (the test suite
# ran 2.4x longer with groups that ignored it), on a real-size one it is a few positions.
PASS_OVERHEAD_FLOPS = 5e7


def group_overhead(widths: Widths) -> float:
    """A sample group's fixed cost in sample-positions of one block of a model of ``widths``
    (:func:`sample_groups`' ``overhead``)."""
    d = widths.d_model
    return PASS_OVERHEAD_FLOPS / (2 * (4 * d * d + 2 * d * widths.d_mlp))


class Runner:
    """Everything an attribution of one task in one direction needs from the model.

    run_acts[hook] / source_acts[hook]: ``[n, pos, units, *features]`` cached activations.
    Caches are computed on first use, so a method pays only for the passes it needs.

    resid_pre[layer]: ``[n, pos, d_model]`` residual stream of the run entering ``layer``
    (``resid_pre[n_layers]`` is the final residual stream).
    metric_run / metric_source: ``[n]`` unpatched metric of the run and source prompts.
    start: positions before it are identical in the run and source prompts of every sample.
    fast: the verified suffix-only forward (:mod:`attrscope.suffix_forward`), or None; then
    ``fast_unavailable`` says why.

    Once the fast path is verified, every patched run, gradient forward and ablation runs on the
    block adapter (:mod:`attrscope.arch.forward`), and so does the source prompt's cache. The
    model's own forward (TransformerLens hooks) gives the reference run the adapter is checked
    against, whose metric and activations are kept as the run's cache when the adapter computes
    in the model's dtype (equal to the adapter's within the check's tolerance; scores recorded
    before the one forward depend on them to 1e-6); it runs everything only for a model without
    an adapter (the fallback).

    compute_dtype: the dtype of the fast forwards (given, else the model's chosen one,
    :func:`attrscope.arch.compute_dtype`: float32 for a half-precision model); only the check
    of the fast path against the model runs in the model's dtype.
    cache_device: where the suffix forward's per-layer caches live (None: where they are
    computed; ``"cpu"``: host memory, streamed to each layer's device as it runs).
    checkpoint: where the running method keeps finished chunks (:mod:`attrscope.checkpoint`).
    """

    def __init__(self, model, task: Task, direction: str, kinds: Sequence[ComponentKind],
                 allow_fast: bool = True, cache_device: str | torch.device | None = None,
                 compute_dtype: torch.dtype | None = None):
        check_direction(direction)
        self.model = model
        self.task = task
        self.direction = direction
        self.kinds = list(kinds)
        # The kinds the model's own hooks capture (heads, neurons); the other sites come from
        # the adapter (attrscope.sites), kept here by "run" / "source".
        self.hooked_kinds = [kind for kind in self.kinds if kind.hooked]
        self.site_cache: dict[str, dict] = {}
        self.n_layers = int(model.cfg.n_layers)
        self.n = task.n
        if direction == "denoising":
            self.run_tokens, self.source_tokens = task.corrupted_tokens, task.clean_tokens
        else:
            self.run_tokens, self.source_tokens = task.clean_tokens, task.corrupted_tokens
        self.start = first_difference(task)
        self._allow_fast = allow_fast
        # Reading the metric from the final residual stream (skipping the full unembedding) is
        # trusted only once the run cache has checked it against the full logits.
        self._early_stop = False
        self._run: dict | None = None
        self._source: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        self._metric_run_known: torch.Tensor | None = None
        self.fast_unavailable: str | None = None
        # Where a method keeps its finished chunks; attrscope.attribute sets it for one call.
        self.checkpoint: Checkpoint | NoCheckpoint = NO_CHECKPOINT
        self.model_dtype = arch.model_dtype(model)
        chosen = compute_dtype or arch.compute_dtype(model)
        self.compute_dtype = chosen if allow_fast else self.model_dtype
        if cache_device is None:
            cache_device = arch.cache_device(model)
        self.cache_device = None if cache_device is None else torch.device(cache_device)
        # Refuse at once, before any forward, a run whose caches cannot fit in memory.
        self.memory_plan = check_memory(model, task.n, int(task.clean_tokens.shape[1]), self.kinds)
        # Read once: every pass's row budget needs them, and reading them stamps the weights.
        self.widths = Widths.of_config(arch.config_of(model))
        self._groups: dict[bool, list[torch.Tensor]] = {}  # sample_groups, by from_start

    # -- caches, computed on first use ------------------------------------------------------
    @property
    def metric_run(self) -> torch.Tensor:
        if self._run is None and self._metric_run_known is not None:
            return self._metric_run_known
        return self._run_cache()["metric"]

    @property
    def run_acts(self) -> dict[str, torch.Tensor]:
        return self._run_cache()["acts"]

    @property
    def resid_pre(self) -> list[torch.Tensor]:
        return self._run_cache()["resid_pre"]

    @property
    def fast(self) -> SuffixForward | None:
        return self._run_cache()["fast"]

    @property
    def metric_source(self) -> torch.Tensor:
        return self._source_cache()[0]

    @property
    def source_acts(self) -> dict[str, torch.Tensor]:
        return self._source_cache()[1]

    @property
    def engine_used(self) -> str:
        """Which forward computed the patched runs so far (without computing anything)."""
        if self._run is not None and self._run["fast"] is not None:
            return forward.ENGINE
        return forward.FALLBACK_ENGINE

    def note_metric_run(self, metric: torch.Tensor) -> None:
        """Record the unpatched run metric ``[n]`` a method computed anyway (saves a forward)."""
        if self._run is None:
            self._metric_run_known = metric.detach()

    def _hook_names(self) -> list[str]:
        return [kind.hook_name(layer) for kind in self.hooked_kinds for layer in range(self.n_layers)]

    def _run_cache(self) -> dict:
        if self._run is not None:
            return self._run
        L, model, task = self.n_layers, self.model, self.task
        resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in range(L)]
        resid_names.append(f"blocks.{L - 1}.hook_resid_post")
        wanted = self._hook_names() + resid_names
        can_stop = FINAL_NORM_HOOK in model.hook_dict
        if can_stop:
            wanted.append(FINAL_NORM_HOOK)
        with torch.no_grad():
            metric, acts = self.capture(self.run_tokens, wanted)
            if can_stop:
                final = acts.pop(FINAL_NORM_HOOK)
                rows = self.rows_for(1)
                at_answer = final[torch.arange(self.n, device=final.device), task.answer_pos]
                logits = model.unembed(at_answer.unsqueeze(1)).squeeze(1)
                # False for models that post-process logits after unembedding (soft-capping).
                self._early_stop = torch.allclose(task.metric_at(logits, rows), metric,
                                                  atol=1e-4, rtol=1e-4)
        run = {"metric": metric, "resid_pre": [acts.pop(name) for name in resid_names], "acts": acts}
        self._run = run
        run["fast"] = None
        if self._allow_fast:
            with torch.no_grad():
                run["fast"] = self._verified_fast_path()
        else:
            self.fast_unavailable = "not requested"
        if run["fast"] is not None and self.compute_dtype != self.model_dtype:
            self._take_adapter_run(run)
        elif self.compute_dtype != self.model_dtype:
            self.compute_dtype = self.model_dtype
            warnings.warn(f"attrscope: the fast path is unavailable ({self.fast_unavailable}), so "
                          f"scores are computed in the model's {_name(self.model_dtype)} through "
                          "its hooks, which loses precision; load the model in float32 for exact "
                          "scores.", stacklevel=2)
        if run["fast"] is not None and self.cache_device is not None:
            run["fast"].move_caches(self.cache_device)
        return run

    def _take_adapter_run(self, run: dict) -> None:
        """Replace the model's (half-precision) run caches by the verified adapter's, computed in
        ``compute_dtype``: the metric, the activations and the residual streams. (In the model's
        own dtype its caches are kept: the check has shown them equal to the adapter's within
        that dtype's tolerance.)"""
        fast = run["fast"]
        rows = self.rows_for(1)
        run["metric"] = fast.adapter.final(fast.final_resid[rows, self.task.answer_pos],
                                           self.task.readout(rows))
        run["acts"] = _acts_from_caches(self.hooked_kinds, fast.caches)
        run["resid_pre"] = [c["pre"] for c in fast.caches] + [fast.final_resid]
        self._metric_run_known = None

    def _source_cache(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self._source is None:
            with torch.no_grad():
                if self.fast is not None:
                    self._source = self._adapter_capture(self.source_tokens)
                else:
                    self._source = self.capture(self.source_tokens, self._hook_names())
        return self._source

    def _adapter_capture(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """As :meth:`capture` for the kinds' activations, computed by the fast path's adapter
        (in ``compute_dtype``)."""
        adapter = self.fast.adapter
        caches: list[dict] = []
        final = arch.full_forward(adapter, arch.embedding(self.model, tokens, adapter), caches)
        rows = self.rows_for(1)
        metric = adapter.final(final[rows, self.task.answer_pos], self.task.readout(rows))
        return metric, _acts_from_caches(self.hooked_kinds, caches)

    def _verified_fast_path(self) -> SuffixForward | None:
        """The suffix-only forward on the model's block adapter, if it reproduces the model's
        unpatched metric and the hooked activations on this batch; else None, with the reason
        in ``fast_unavailable``."""
        made: dict[str, SuffixForward] = {}

        def checks(adapter) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
            caches: list[dict] = []
            final = arch.full_forward(adapter, arch.embedding(self.model, self.run_tokens, adapter),
                                      caches)
            fast = made["fast"] = SuffixForward(adapter, caches, final)
            rows = self.rows_for(1)
            found = {"metric": (adapter.final(final[rows, self.task.answer_pos],
                                              self.task.readout(rows)), self.metric_run)}
            for kind in self.hooked_kinds:
                ours = kind.point
                for layer in range(self.n_layers):
                    found[kind.hook_name(layer)] = (caches[layer][ours],
                                                    self.run_acts[kind.hook_name(layer)])
            layer = suffix_check_layer(adapter)
            resid = caches[layer]["pre"][:, self.start:]
            found[f"suffix from layer {layer}"] = (
                fast.run(layer, "pre", resid, rows, self.start, *self._answer_args(rows)),
                self.metric_run)
            return found

        adapter, self.fast_unavailable = verified_adapter(self.model, checks, self.compute_dtype)
        return None if adapter is None else made["fast"]

    def _answer_args(self, rows: torch.Tensor):
        task = self.task
        return task.answer_pos[rows], task.readout(rows)

    # -- forward passes ---------------------------------------------------------------------
    def metric_of(self, tokens: torch.Tensor, edits: Sequence[forward.Edit], rows: torch.Tensor
                  ) -> torch.Tensor:
        """Metric ``[batch]`` of ``tokens`` ``[batch, seq]`` run with ``edits`` (``rows[i]``:
        the sample of batch row i), differentiable in what the edits hold: on the verified block
        adapter (:mod:`attrscope.arch.forward`), or through TransformerLens hooks when the model
        has none (:attr:`fast` decides, once per run)."""
        if self.fast is None:
            return self._hooked_metric(tokens, None, forward.as_hooks(edits, self.n_layers), rows)
        adapter = self.fast.adapter
        embed = arch.embedding(self.model, tokens, adapter)
        if torch.is_grad_enabled():
            embed.requires_grad_(True)  # so that gradients reach the edited points
        return forward.metric(adapter, embed, forward.Plan(edits=edits),
                              self.task.answer_pos[rows], self.task.readout(rows))

    def _hooked_metric(self, model_input: torch.Tensor, start_layer: int | None,
                       fwd_hooks: list[tuple[str, HookFn]], rows: torch.Tensor) -> torch.Tensor:
        """Metric ``[batch]`` of one forward through the model with TransformerLens hooks (the
        fallback, and the model's own run the adapter is checked against); ``rows[i]`` is the
        sample of batch row i."""
        task, model = self.task, self.model
        kwargs = {} if start_layer is None else {"start_at_layer": start_layer}
        if not self._early_stop:
            with hooks_attached(model, fwd_hooks):
                logits = model(model_input, **kwargs)
            return task.metric(logits, rows)
        captured: dict[str, torch.Tensor] = {}

        def stop(act: torch.Tensor, hook) -> None:
            captured["final"] = act
            raise _StopForward

        try:
            with hooks_attached(model, [*fwd_hooks, (FINAL_NORM_HOOK, stop)]):
                model(model_input, **kwargs)
        except _StopForward:
            pass
        final = captured["final"]
        positions = task.answer_pos[rows]
        at_answer = final[torch.arange(final.shape[0], device=final.device), positions]
        logits = model.unembed(at_answer.unsqueeze(1)).squeeze(1)
        return task.metric_at(logits, rows)

    def capture(self, tokens: torch.Tensor, hook_names: Sequence[str]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run ``tokens`` [n, seq] unpatched; return the metric [n] and the named activations."""
        store: dict[str, torch.Tensor] = {}

        def saver(name: str) -> HookFn:
            # Keyed by the requested name: the bridge reports aliases (hook_z) by their
            # canonical hook point (attn.o.hook_in).
            def save(act: torch.Tensor, hook) -> None:
                store[name] = act.detach()

            return save

        rows = torch.arange(self.n, device=tokens.device)
        metric = self._hooked_metric(tokens, None, [(name, saver(name)) for name in hook_names], rows)
        missing = [name for name in hook_names if name not in store]
        if missing:
            raise RuntimeError(f"The model never reached hook point(s) {missing[:3]}.")
        return metric.detach(), store

    def activations(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """The kinds' activations ``[m, seq, units, *features]`` (by hook name) of any prompts
        ``tokens`` ``[m, seq]``, unpatched, from the adapter (or the model's hooks without one)."""
        with torch.no_grad():
            if self.fast is not None:
                caches: list[dict] = []
                adapter = self.fast.adapter
                arch.full_forward(adapter, arch.embedding(self.model, tokens, adapter), caches)
                return _acts_from_caches(self.hooked_kinds, caches)
            store: dict[str, torch.Tensor] = {}
            hooks = [(name, functools.partial(_store, store, name)) for name in self._hook_names()]
            with hooks_attached(self.model, hooks):
                self.model(tokens)
            return store

    def rows_for(self, copies: int, samples: torch.Tensor | None = None) -> torch.Tensor:
        """Sample index of each row when ``copies`` copies of the batch (or of ``samples``) are
        stacked: ``[copies * len(samples)]``."""
        if samples is None:
            samples = torch.arange(self.n, device=self.run_tokens.device)
        return samples.repeat(copies)

    def gradient_chunks(self, settings: dict, desc: str, show_progress: bool
                        ) -> Iterator[torch.Tensor]:
        """Sample indices ``[b]`` (on the run's device) in chunks that fit one forward and
        backward pass of the whole model, with a progress bar over the chunks."""
        self._run_cache()  # decides whether these passes run on the adapter
        rows_per_pass = self.rows_per_pass(settings, 0, backward=True, hooked=True)
        sample_chunks = list(chunks(torch.arange(self.n), rows_per_pass))
        with progress_bar(len(sample_chunks), desc, show_progress) as bar:
            for rows in sample_chunks:
                yield rows.to(self.run_tokens.device)
                bar.update(1)

    def sample_groups(self, from_start: bool = True) -> list[torch.Tensor]:
        """The task's samples in groups of similar span (:func:`task_groups`), on the run's
        device."""
        if from_start not in self._groups:  # ig asks once per layer
            self._groups[from_start] = [g.to(self.run_tokens.device)
                                        for g in task_groups(self.task, self.widths, from_start)]
        return self._groups[from_start]

    def rows_per_pass(self, settings: dict, first_layer: int = 0, span: tuple[int, int] | None = None,
                      backward: bool = False, hooked: bool = False) -> int:
        """Rows (stacked copies x samples) one pass may hold: ``settings["max_batch_rows"]``
        when given, else as many as ``settings["max_memory"]`` bytes allow by
        :func:`attrscope.arch.memory.bytes_per_row`, for a pass from ``first_layer`` on over positions ``span``
        (start, end) on the fast path, or over the whole sequence through the bridge (``hooked``,
        or when the fast path is not used)."""
        if settings.get("max_batch_rows") is not None:
            return max(1, int(settings["max_batch_rows"]))
        seq = int(self.run_tokens.shape[1])
        if hooked or self.fast is None:
            positions = keys = seq
            logits = not self._early_stop
        else:
            start, end = span if span is not None else (self.start, seq)
            positions, keys, logits = end - start, end, False
        itemsize = torch.empty((), dtype=self.compute_dtype).element_size()
        shape = PassShape(positions, keys, self.n_layers - first_layer, backward, logits)
        return rows_for_budget(self.widths, shape, settings["max_memory"],
                               itemsize)

    def span(self, samples: torch.Tensor) -> tuple[int, int]:
        """(start, end): positions a patch can change for these samples and the metric reads."""
        return first_difference(self.task, samples), int(self.task.answer_pos[samples].max()) + 1

    def metric_from_layer(self, layer: int, copies: int, fwd_hooks: list[tuple[str, HookFn]],
                          samples: torch.Tensor | None = None) -> torch.Tensor:
        """Metric ``[copies * g]`` of the run on ``samples`` (default all n) restarted at
        ``layer`` from its cached residual stream, stacked ``copies`` times (copy c is rows
        ``c*g .. (c+1)*g - 1``), with hooks."""
        rows = self.rows_for(copies, samples)
        return self._hooked_metric(self.resid_pre[layer][rows], layer, fwd_hooks, rows)

    def metric_with_activation(self, kind: ComponentKind, layer: int, activation: torch.Tensor,
                               start: int = 0, samples: torch.Tensor | None = None) -> torch.Tensor:
        """Metric of the run with the ``kind`` activation of ``layer`` replaced at positions
        ``start..seq-1`` (earlier positions keep the run's values).

        activation: ``[copies * g, seq - start, units, *features]`` for ``copies`` stacked
        copies of ``samples`` (default: all n) -> ``[copies * g]``. Differentiable in ``activation``. Uses the suffix-only fast path when it is verified for
        this model, otherwise a hooked forward through the bridge from ``layer`` on.
        """
        if samples is None:
            samples = torch.arange(self.n, device=self.run_tokens.device)
        copies = activation.shape[0] // len(samples)
        rows = self.rows_for(copies, samples)
        if self.fast is not None:
            resid, stage = self.fast.enter_activation(kind, layer, activation, rows, start)
            return self.fast.run(layer, stage, resid, rows, start, *self._answer_args(rows))
        name = kind.hook_name(layer)
        if start > 0:
            prefix = self.run_acts[name][rows, :start]
            activation = torch.cat([prefix, activation.to(prefix.dtype)], dim=1)

        def replace(act: torch.Tensor, hook) -> torch.Tensor:
            return activation

        return self.metric_from_layer(layer, copies, [(name, replace)], samples)

    def units_moved(self, kind: ComponentKind, layer: int, units: list[int],
                    samples: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A function ``(which [C], alpha [C, g]) -> metric [C * g]`` of the run on ``samples``
        (g of them) with unit ``units[which[c]]`` of copy c at ``run + alpha * (source - run)``
        (differentiable in alpha).

        On the fast path the unit's change enters the residual stream where its branch joins
        it (``alpha * kind.write(...)``, :meth:`SuffixForward.enter`) and only positions
        ``span(samples)`` are computed; otherwise the whole activation goes through
        :meth:`metric_with_activation`."""
        name = kind.hook_name(layer)
        if self.fast is not None:
            fast, task = self.fast, self.task
            start, end = self.span(samples)
            picked = torch.tensor(units, device=samples.device)
            delta = (self.source_acts[name][samples, start:end]
                     - self.run_acts[name][samples, start:end]).index_select(2, picked)
            change = kind.write(fast.adapter, layer, delta, picked)  # [units', g, S, d]

            def metric(which: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
                rows = self.rows_for(len(which), samples)
                scaled = alpha[:, :, None, None] * change[which.to(change.device)]
                patched, stage = fast.enter(kind, layer, scaled.flatten(0, 1), rows, start)
                return fast.run(layer, stage, patched, rows, start, task.answer_pos[rows],
                                task.readout(rows))

            return metric
        start = self.start
        base = self.run_acts[name][samples, start:]
        delta = self.source_acts[name][samples, start:] - base
        n_units = base.shape[2]
        extra_dims = (1,) * (base.dim() - 3)  # feature axes after the unit axis
        unit_ids = torch.tensor(units, device=base.device)

        def hooked(which: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
            onehot = torch.nn.functional.one_hot(unit_ids[which.to(base.device)], n_units).to(base.dtype)
            onehot = onehot.view(len(which), 1, 1, n_units, *extra_dims)
            a = alpha.view(len(which), len(samples), 1, 1, *extra_dims)
            acts = base.unsqueeze(0) + a * onehot * delta.unsqueeze(0)
            return self.metric_with_activation(kind, layer, acts.flatten(0, 1), start, samples)

        return hooked

    def metric_with_units_patched(self, kind: ComponentKind, layer: int, units: torch.Tensor,
                                  samples: torch.Tensor | None = None) -> torch.Tensor:
        """Metric ``[len(units) * g]`` of ``len(units)`` stacked copies of the run on ``samples``
        (default all, g of them), copy c with unit ``units[c]`` of ``layer`` (at every position)
        taken from the source prompt.

        On the fast path a patch enters the residual stream through ``kind.write`` (the unit's
        change times its output weights: ``delta @ W_O[head]`` or ``delta * W_out[neuron]``)
        where its branch joins the stream (:meth:`SuffixForward.enter`): the rest of the block
        is unchanged, so nothing is recomputed for the other units. Only positions
        ``span(samples)`` are computed.
        """
        if samples is None:
            samples = torch.arange(self.n, device=self.run_tokens.device)
        name = kind.hook_name(layer)
        if self.fast is None:
            start = self.start
            run = self.run_acts[name][samples, start:]
            source = self.source_acts[name][samples, start:]
            return self.metric_with_activation(kind, layer, patched_copies(run, source, units),
                                               start, samples)
        start, end = self.span(samples)
        run = self.run_acts[name][samples, start:end]
        source = self.source_acts[name][samples, start:end]
        rows = self.rows_for(len(units), samples)
        delta = source.index_select(2, units) - run.index_select(2, units)  # [g, S, copies, *f]
        change = kind.write(self.fast.adapter, layer, delta, units).flatten(0, 1)  # [copies*g, S, d]
        patched, stage = self.fast.enter(kind, layer, change, rows, start)
        return self.fast.run(layer, stage, patched, rows, start, *self._answer_args(rows))


def _store(store: dict, name: str, act: torch.Tensor, hook=None) -> None:
    store[name] = act.detach()


def _acts_from_caches(kinds: Sequence[ComponentKind], caches: list[dict]) -> dict[str, torch.Tensor]:
    """Each kind's hooked activation per layer (``hook_z`` = the cache's ``z``, ``mlp.hook_post``
    = its ``hidden``) from the adapter's block caches."""
    return {kind.hook_name(layer): cache[kind.point]
            for kind in kinds if kind.hooked for layer, cache in enumerate(caches)}


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def patched_copies(run: torch.Tensor, source: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """``len(units)`` copies of the run activation, copy c with unit ``units[c]`` from the source.

    run, source: ``[n, pos, units_total, *features]`` -> ``[copies * n, pos, units_total, *features]``.
    """
    copies = len(units)
    stacked = run.unsqueeze(0).repeat(copies, *([1] * run.dim()))
    stacked[torch.arange(copies, device=run.device), :, :, units] = source.index_select(2, units).movedim(2, 0)
    return stacked.flatten(0, 1)


def suffix_check_layer(adapter: arch.BlockAdapter) -> int:
    """Where the self-check's suffix run starts: the earliest layer that is the last of its kind
    of attention (sliding window, rotary embedding), so that the one run covers, with the cached
    keys and values of earlier positions, every kind of layer the model has (the full forward
    checked every layer without them); the last layer for a model whose layers are alike."""
    last: dict[tuple, int] = {}
    for layer in range(adapter.n_layers):
        last[(adapter.window[layer], id(adapter.rotary[layer]))] = layer
    return min(last.values())


def mismatch(checks: dict[str, tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype
             ) -> str | None:
    """The one self-check of a re-implemented forward against the model: the first of
    ``checks`` (name -> (computed, the model's)) that differs beyond the tolerance of the model's
    ``dtype`` (:func:`verification_tolerance`, relative to the largest |value|), described as
    ``"NAME (max difference X, tolerance Y for DTYPE)"``; None when all agree."""
    tol = verification_tolerance(dtype)
    for name, (got, want) in checks.items():
        scale = float(want.abs().max()) if want.numel() else 0.0
        got, want = got.to(want.device), want.to(got.dtype)
        atol = tol * max(1.0, scale)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=tol, atol=atol):
            worst = float((got - want).abs().max()) if got.shape == want.shape else float("nan")
            return (f"{name} (max difference {worst:.3g}, tolerance {atol:.3g} for "
                    f"{_name(dtype)})")
    return None


def verified_adapter(model, checks: Callable[[arch.BlockAdapter], dict],
                     dtype: torch.dtype | None = None
                     ) -> tuple[arch.BlockAdapter | None, str | None]:
    """The one fast-or-fallback decision: ``(adapter, None)`` when the model has a block adapter
    (computing in ``dtype``; default :func:`attrscope.arch.compute_dtype`) and every check
    ``checks(adapter)`` returns (name -> (computed, the model's)) passes :func:`mismatch`; else
    ``(None, why)``, and the caller runs the model through its hooks (or refuses, where there
    is no fallback)."""
    try:
        adapter = arch.adapter_for(model, dtype)
    except arch.Unsupported as e:
        return None, str(e)
    dtype = arch.model_dtype(model)
    bad = mismatch(checks(adapter), dtype)
    if bad is None:
        return adapter, None
    return None, (f"the {adapter.family} block adapter (computing in {_name(adapter.dtype)}) does "
                  f"not reproduce the {_name(dtype)} model's {bad} on this batch; if the model is "
                  "in half precision, load it in float32 (--dtype float32)")


def verification_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of a re-implemented forward against the model's own in ``dtype``.

    float64 gets 1e-6, not ~1e-12: a Hugging Face model loaded in float64 still computes some
    pieces in float32 (RMSNorm, rotary tables, the eager attention's softmax), so its own
    forward is accurate only to float32 there (1e-7 measured on Llama and Gemma-2)."""
    return {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 1e-2}.get(dtype, 5e-2)


def sample_groups(starts: torch.Tensor, ends: torch.Tensor, min_size: int = MIN_GROUP_SIZE,
                  max_groups: int = MAX_SAMPLE_GROUPS, overhead: float = 0.0
                  ) -> list[torch.Tensor]:
    """The one sample-grouping rule: sample indices in groups whose passes compute positions
    ``min(starts[g]) .. max(ends[g]) - 1`` only (``starts``, ``ends`` ``[n]``: each sample's
    first position a pass must compute and one past its answer), so a group's passes skip the
    others' padding and the positions before their first difference. Of the partitions of the
    samples, in order of span, into at most ``max_groups`` runs of at least ``min_size`` (one
    group when there are fewer samples), the one that computes the fewest sample-positions,
    with the fewest groups among equals."""
    n = len(starts)
    order = sorted(range(n), key=lambda i: (int(starts[i]), int(ends[i]), i))
    first = torch.tensor([float(starts[i]) for i in order], dtype=torch.float64)
    last = torch.tensor([float(ends[i]) for i in order], dtype=torch.float64)
    size = max(1, min_size)
    limit = max(1, min(max_groups, n // size))
    # best[k][j]: fewest sample-positions of the first j samples in k + 1 groups; cuts[k][j]:
    # where the last of those groups begins
    best = torch.full((limit, n + 1), float("inf"), dtype=torch.float64)
    cuts = torch.zeros(limit, n + 1, dtype=torch.long)
    widest = torch.empty(0, dtype=torch.float64)  # widest[b]: max(last[b:j]), grown with j
    for j in range(1, n + 1):
        widest = torch.cat([torch.maximum(widest, last[j - 1]), last[j - 1:j]])
        if j < size:
            continue
        begins = torch.arange(j - size + 1)
        group = (j - begins) * (widest[:j - size + 1] - first[:j - size + 1]) + overhead
        best[0, j] = group[0]
        for k in range(1, limit):
            best[k, j], cuts[k, j] = (best[k - 1, :j - size + 1] + group).min(0)
    totals = best[:, n].tolist()
    if not math.isfinite(min(totals)):
        return [torch.tensor(sorted(order), dtype=torch.long, device=starts.device)]
    k = totals.index(min(totals))  # the first: the fewest groups among equals
    bounds, j = [n], n
    for level in range(k, -1, -1):
        j = int(cuts[level][j])
        bounds.append(j)
    bounds.reverse()
    return [torch.tensor(sorted(order[a:b]), dtype=torch.long, device=starts.device)
            for a, b in zip(bounds, bounds[1:])]


def task_groups(task: Task, widths: Widths, from_start: bool = True) -> list[torch.Tensor]:
    """:func:`sample_groups` of a task's samples on a model of ``widths``, each spanning its
    first clean/corrupted difference (``from_start``; else position 0) to its answer."""
    ends = task.answer_pos + 1
    starts = first_differences(task) if from_start else torch.zeros_like(ends)
    return sample_groups(starts, ends, overhead=group_overhead(widths))


def first_differences(task: Task) -> torch.Tensor:
    """``[n]``: each sample's first position where its clean and corrupted tokens differ, capped
    at its answer position (every earlier position is identical in both)."""
    differs = task.clean_tokens != task.corrupted_tokens
    positions = torch.where(differs.any(dim=1), differs.float().argmax(dim=1),
                            torch.full_like(task.answer_pos, differs.shape[1]))
    return torch.minimum(positions, task.answer_pos)


def first_difference(task: Task, samples: torch.Tensor | None = None) -> int:
    """First position where any of ``samples``' (default all) clean and corrupted tokens differ,
    capped at their earliest answer position: every position before it is identical in both."""
    firsts = first_differences(task)
    return int((firsts if samples is None else firsts[samples.to(firsts.device)]).min())


def chunks(items: Sequence[int] | torch.Tensor, size: int) -> Iterator:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def copies_per_pass(max_rows: int, n: int) -> int:
    """How many stacked copies of an ``n``-sample batch fit in ``max_rows`` rows (at least 1)."""
    return max(1, int(max_rows) // max(1, n))


# -- memory budget of the batched passes -------------------------------------------------------
_MEMORY_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                 "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
# Fraction of the memory free when a method starts that its batched passes may use by default.
DEFAULT_MEMORY_FRACTION = 0.5


def parse_memory(value: int | float | str) -> int:
    """Bytes from ``4000000000``, ``"4GB"``, ``"512 MiB"`` or ``"1.5GiB"``; refuses anything else."""
    if isinstance(value, bool):
        raise ValueError(f"max_memory must be a size such as 2GB or 512MiB, got {value!r}.")
    if isinstance(value, (int, float)):
        try:
            number, unit = float(value), ""
        except OverflowError:
            number, unit = float("inf"), ""
    else:
        text = str(value).strip().upper().replace(" ", "")
        digits = text.rstrip("KMGTIB")
        number_text, unit = digits, text[len(digits):]
        try:
            number = float(number_text)
        except ValueError:
            number = float("nan")
        if unit not in _MEMORY_UNITS or number != number:
            raise ValueError(f"max_memory must be a size such as 2GB or 512MiB, got {value!r}.")
    if not math.isfinite(number * _MEMORY_UNITS[unit]):
        raise ValueError(f"max_memory must be a finite size such as 2GB or 512MiB, got {value!r}.")
    size = int(number * _MEMORY_UNITS[unit])
    if size <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r}.")
    return size


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device`` now: free GPU memory (plus what torch's caching
    allocator holds unused) on CUDA; MemAvailable of /proc/meminfo (or free physical pages)
    otherwise."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


# The default max_memory's ceiling on the CPU. Larger batches are no faster there (GPT-2-small
# shape, 20 prompts: ig 2.07 s per path step at 60 rows, 1.85 s at 380; eap-ig 11.5 s for 40
# rows in passes of 15, 11.9 s in passes of 30), while half of a large machine's free memory
# let ig and eap-ig take 14-16 GB of a shared 24 GB machine. A GPU keeps the fraction alone:
# its throughput grows with the batch.
CPU_MEMORY_CAP = 2 * 2**30


def default_memory_budget(device: torch.device) -> int:
    """The default ``max_memory``: a fraction (DEFAULT_MEMORY_FRACTION) of the memory free on
    ``device`` when the method starts, at most CPU_MEMORY_CAP on the CPU."""
    budget = int(DEFAULT_MEMORY_FRACTION * available_memory(device))
    return budget if device.type == "cuda" else min(budget, CPU_MEMORY_CAP)


# -- memory planned before the run ---------------------------------------------------------------
# Share of the memory free at the start that the caches, the unbatched forwards and the scores
# may take: the rest is for the batched passes (DEFAULT_MEMORY_FRACTION of what is free then).
PLANNED_FRACTION = 0.4


class MemoryPlanError(ValueError):
    """A run whose estimated peak memory does not fit; the message says what to change."""


def memory_plan(model, n: int, seq: int, kinds: Sequence[ComponentKind], results: int = 1
                ) -> dict[str, int]:
    """Estimated bytes, before any computation, of what a node run of ``n`` prompt pairs of
    ``seq`` tokens holds besides its batched passes (those fit ``max_memory``):

    - ``caches``: the run's block caches in the compute dtype (per layer and position: the
      stream entering and after attention, queries, keys, values, z, neuron activations, both
      branch outputs) and the hooked activations and residual streams the model's own forward
      returns (model dtype), plus the source prompt's activations of ``kinds``;
    - ``forward``: one unbatched forward of all n prompts through the model (its intermediates
      and full logits), which the caches are computed by;
    - ``scores``: ``results`` float32 score tensors ``[n, n_layers, units]`` per kind.
    """
    cfg = arch.config_of(model)
    L, d, m, H, E = (int(cfg.n_layers), int(cfg.d_model), int(cfg.d_mlp), int(cfg.n_heads),
                     int(cfg.d_head))
    K = int(getattr(cfg, "n_key_value_heads", None) or H)
    compute = torch.empty((), dtype=arch.compute_dtype(model)).element_size()
    own = torch.empty((), dtype=arch.model_dtype(model)).element_size()
    kind_features = sum(H * E if k.branch == "attn" else m for k in kinds)
    block = 6 * d + 2 * H * E + 2 * K * E + m
    per_position = L * block * compute + (L * kind_features + (L + 1) * d) * own
    per_position += L * kind_features * compute  # the source prompt's activations
    units = sum(k.n_units(cfg) for k in kinds)
    return {"caches": n * seq * per_position,
            "forward": n * bytes_per_row(Widths.of_config(cfg), PassShape(seq, seq, L, logits=True),
                                         own),
            "scores": n * L * units * 4 * results}


def check_memory(model, n: int, seq: int, kinds: Sequence[ComponentKind], results: int = 1,
                 available: int | None = None) -> dict[str, int]:
    """The :func:`memory_plan`, or :class:`MemoryPlanError` at once (before any computation)
    when it exceeds PLANNED_FRACTION of the memory free on the model's device, naming the
    estimate and the largest ``n`` that fits."""
    plan = memory_plan(model, n, seq, kinds, results)
    device = next(model.parameters()).device
    available = available_memory(device) if available is None else available
    allowed = int(PLANNED_FRACTION * available)
    total = sum(plan.values())
    if total > allowed:
        fits = max(0, allowed * n // max(total, 1))
        parts = ", ".join(f"{name} {_gb(size)}" for name, size in plan.items())
        raise MemoryPlanError(
            f"{n} prompt pairs of {seq} tokens need an estimated {_gb(total)} before the batched "
            f"passes ({parts}), more than the {_gb(allowed)} planned for them "
            f"({PLANNED_FRACTION:.0%} of the {_gb(available)} free on {device}). Use --n {fits} "
            "or fewer (split the task and run the parts), fewer component kinds, or a machine "
            "with more memory.")
    return plan


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"
