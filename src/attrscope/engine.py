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

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .components import ComponentKind
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


class Runner:
    """Everything an attribution of one task in one direction needs from the model.

    run_acts[hook] / source_acts[hook]: ``[n, pos, units, *features]`` cached activations.
    resid_pre[layer]: ``[n, pos, d_model]`` residual stream of the run entering ``layer``
    (``resid_pre[n_layers]`` is the final residual stream).
    neuron_write: per layer ``W_out`` ``[d_mlp, d_model]`` when neuron patches can be applied
    as rank-1 updates of the residual stream (see ``activation_patching``), else None.
    metric_run / metric_source: ``[n]`` unpatched metric of the run and source prompts.
    """

    def __init__(self, model, task: Task, direction: str, kinds: Sequence[ComponentKind]):
        check_direction(direction)
        self.model = model
        self.task = task
        self.direction = direction
        self.kinds = list(kinds)
        self.n_layers = int(model.cfg.n_layers)
        self.n = task.n
        if direction == "denoising":
            self.run_tokens, self.source_tokens = task.corrupted_tokens, task.clean_tokens
        else:
            self.run_tokens, self.source_tokens = task.clean_tokens, task.corrupted_tokens
        self._early_stop = FINAL_NORM_HOOK in model.hook_dict
        hook_names = [kind.hook_name(layer) for kind in self.kinds for layer in range(self.n_layers)]
        resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in range(self.n_layers)]
        resid_names.append(f"blocks.{self.n_layers - 1}.hook_resid_post")
        with torch.no_grad():
            full_logits = model(self.run_tokens)
            reference = task.metric(full_logits)
            del full_logits
            self.metric_run, acts = self.capture(self.run_tokens, hook_names + resid_names)
            if not torch.allclose(self.metric_run, reference, atol=1e-4, rtol=1e-4):
                # The model post-processes logits after unembedding (e.g. soft-capping):
                # read the metric from full logits instead of the final residual stream.
                self._early_stop = False
                self.metric_run, acts = self.capture(self.run_tokens, hook_names + resid_names)
            self.metric_source, source_acts = self.capture(self.source_tokens, hook_names)
        resid = [acts.pop(name) for name in resid_names]
        # resid_pre[layer] for layer in 0..n_layers: the last entry is the final residual stream.
        self.resid_pre = resid
        self.run_acts = acts
        self.source_acts = source_acts
        self.neuron_write = self._neuron_write_matrices()

    def _neuron_write_matrices(self) -> list[torch.Tensor] | None:
        """``W_out`` per layer ``[d_mlp, d_model]`` if a neuron's post-activation reaches the
        residual stream only through it (checked on the cached run), else None."""
        from .components import NEURONS

        if NEURONS not in self.kinds or not self._early_stop:
            return None
        try:
            w_out = self.model.W_out
        except Exception:  # architectures without a plain output matrix (e.g. mixtures of experts)
            return None
        if w_out.dim() != 3 or w_out.shape[:2] != (self.n_layers, self.model.cfg.d_mlp):
            return None
        # Check linearity where it matters: patching every neuron of a layer through W_out must
        # give the same metric as patching it with a hook.
        with torch.no_grad():
            for layer in {0, self.n_layers - 1}:
                name = NEURONS.hook_name(layer)
                source = self.source_acts[name]
                via_hook = self.metric_with_activation(NEURONS, layer, source)
                delta = (source - self.run_acts[name]) @ w_out[layer]
                via_write = self.metric_after_layer(layer, self.resid_pre[layer + 1] + delta)
                if not torch.allclose(via_hook, via_write, atol=1e-4, rtol=1e-4):
                    return None
        return [w_out[layer].detach() for layer in range(self.n_layers)]

    def metric_after_layer(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """Metric ``[copies * n]`` given the residual stream leaving ``layer``,
        ``[copies * n, pos, d_model]`` (copies of the batch stacked)."""
        rows = self.rows_for(resid.shape[0] // self.n)
        if layer + 1 < self.n_layers:
            return self._forward_metric(resid, layer + 1, [], rows)
        at_answer = resid[torch.arange(resid.shape[0], device=resid.device), self.task.answer_pos[rows]]
        logits = self.model.unembed(self.model.ln_final(at_answer.unsqueeze(1))).squeeze(1)
        return self.task.metric_at(logits, rows)

    # -- forward passes ---------------------------------------------------------------------
    def _forward_metric(self, model_input: torch.Tensor, start_layer: int | None,
                        fwd_hooks: list[tuple[str, HookFn]], rows: torch.Tensor) -> torch.Tensor:
        """Metric ``[batch]`` of one forward; ``rows[i]`` is the sample of batch row i."""
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
        metric = self._forward_metric(tokens, None, [(name, saver(name)) for name in hook_names], rows)
        missing = [name for name in hook_names if name not in store]
        if missing:
            raise RuntimeError(f"The model never reached hook point(s) {missing[:3]}.")
        return metric.detach(), store

    def rows_for(self, copies: int) -> torch.Tensor:
        """Sample index of each row when ``copies`` copies of the batch are stacked: ``[copies*n]``."""
        return torch.arange(self.n, device=self.run_tokens.device).repeat(copies)

    def metric_from_layer(self, layer: int, copies: int,
                          fwd_hooks: list[tuple[str, HookFn]]) -> torch.Tensor:
        """Metric ``[copies * n]`` of the run restarted at ``layer`` from its cached residual
        stream, stacked ``copies`` times (copy c is rows ``c*n .. (c+1)*n - 1``), with hooks."""
        resid = self.resid_pre[layer]
        if copies > 1:
            resid = resid.repeat(copies, *([1] * (resid.dim() - 1)))
        return self._forward_metric(resid, layer, fwd_hooks, self.rows_for(copies))

    def metric_with_activation(self, kind: ComponentKind, layer: int,
                               activation: torch.Tensor) -> torch.Tensor:
        """Metric of the run with the whole ``kind`` activation of ``layer`` replaced.

        activation: ``[copies * n, pos, units, *features]`` -> ``[copies * n]``.
        Differentiable in ``activation``.
        """
        copies = activation.shape[0] // self.n

        def replace(act: torch.Tensor, hook) -> torch.Tensor:
            return activation

        return self.metric_from_layer(layer, copies, [(kind.hook_name(layer), replace)])


def chunks(items: Sequence[int] | torch.Tensor, size: int) -> Iterator:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def copies_per_pass(max_rows: int, n: int) -> int:
    """How many stacked copies of an ``n``-sample batch fit in ``max_rows`` rows (at least 1)."""
    return max(1, int(max_rows) // max(1, n))
