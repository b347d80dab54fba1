"""Downstream-only forward: the fast path of patched runs, for every family with a block adapter.

A patched run differs from the unpatched one only downstream of the patch, and - because
attention is causal and the run and source prompts share their first ``start`` tokens - only at
positions ``>= start``. This module recomputes exactly that part:

- it starts where the patch enters the residual stream: after the patched layer's attention
  branch (a head), or after its MLP branch (a neuron); in parallel blocks both branches join the
  stream at the end of the block (see :meth:`SuffixForward.enter`);
- it runs only positions ``start..seq-1``, attending to the run's cached keys and values at the
  earlier positions;
- in the last block it computes only the answer position, and it unembeds only what the task's
  metric reads (see :class:`attrscope.tasks.metrics.Readout`).

Everything architecture-specific comes from the model's :class:`~attrscope.arch.BlockAdapter`.
:class:`attrscope.engine.Runner` checks this forward against the model's own on the actual batch
before using it.
"""

from __future__ import annotations

import torch

from .arch import BlockAdapter, forward
from .components import ComponentKind
from .tasks.metrics import Readout

class SuffixForward:
    """The run's cached blocks and the downstream recomputation.

    ``caches[layer]``: from :func:`attrscope.arch.full_forward` on the run (``n`` samples,
    ``seq`` positions): ``pre`` ``[n, seq, d]`` entering the block, ``mid`` after its attention
    (sequential blocks), ``attn_raw`` / ``mlp_raw`` ``[n, seq, d]`` branch outputs before any
    post-norm, ``k`` / ``v`` ``[n, K, seq, E]``; ``final`` ``[n, seq, d]`` the last residual stream.
    """

    def __init__(self, adapter: BlockAdapter, caches: list[dict], final: torch.Tensor):
        self.adapter = adapter
        self.n_layers = adapter.n_layers
        self.caches = caches
        self.final_resid = final

    # Entries of a block cache the downstream recomputation reads.
    STREAMED = ("pre", "mid", "k", "v", "attn_raw", "mlp_raw")

    def move_caches(self, device: torch.device) -> None:
        """Keep the per-layer caches on ``device`` (e.g. host memory); :meth:`cached` brings
        the rows a pass needs to the layer's device as it runs."""
        for cache in self.caches:
            for key in self.STREAMED:
                if cache.get(key) is not None:
                    cache[key] = cache[key].to(device)

    def cached(self, layer: int, key: str, rows: torch.Tensor, start: int = 0,
               end: int | None = None) -> torch.Tensor:
        """``caches[layer][key]`` at ``rows`` ``[R]`` and positions ``start..end-1`` (axis 1;
        axis 2 for ``k`` / ``v``), on ``layer``'s device: ``[R, S, ...]``."""
        full = self.caches[layer][key]
        rows = rows.to(full.device)
        part = full[rows, :, start:end] if key in ("k", "v") else full[rows, start:end]
        return part.to(self.adapter.device_of(layer))

    # -- where a patch enters ----------------------------------------------------------------
    def after(self, branch: str, layer: int, rows: torch.Tensor, start: int, end: int
              ) -> torch.Tensor:
        """``[R, S, d]`` the run's residual stream just after ``branch`` of ``layer`` joined it
        (the block's middle for attention in sequential blocks, else its end), at ``rows`` and
        positions ``start..end-1``, on ``layer``'s device."""
        if branch == "attn" and not self.adapter.parallel:
            return self.cached(layer, "mid", rows, start, end)
        if layer + 1 < self.n_layers:
            return self.cached(layer + 1, "pre", rows, start, end).to(self.adapter.device_of(layer))
        return self.final_resid[rows.to(self.final_resid.device), start:end].to(self.adapter.device_of(layer))

    def stage_after(self, branch: str) -> str:
        return "mid" if branch == "attn" and not self.adapter.parallel else "post"

    def enter(self, kind: ComponentKind, layer: int, raw_change: torch.Tensor,
              rows: torch.Tensor, start: int) -> tuple[torch.Tensor, str]:
        """The residual stream ``[R, S, d]`` (positions ``start..start+S-1``) of rows ``rows``
        ``[R]`` with ``kind``'s branch output of ``layer`` changed by ``raw_change``
        ``[R, S, d]`` before its post-norm, and the stage it is at."""
        a, branch = self.adapter, kind.branch
        end = start + raw_change.shape[1]
        after = self.after(branch, layer, rows, start, end)
        raw_change = raw_change.to(after.device)
        if (a.post_attn if branch == "attn" else a.post_mlp)[layer] is None:
            return after + raw_change, self.stage_after(branch)
        raw = self.cached(layer, f"{branch}_raw", rows, start, end)
        before = after - a.branch_out(branch, layer, raw)
        return before + a.branch_out(branch, layer, raw + raw_change), self.stage_after(branch)

    def enter_activation(self, kind: ComponentKind, layer: int, activation: torch.Tensor,
                         rows: torch.Tensor, start: int) -> tuple[torch.Tensor, str]:
        """As :meth:`enter`, with ``kind``'s whole activation of ``layer`` replaced by
        ``activation`` ``[R, S, units, *features]``."""
        raw_run = self.cached(layer, f"{kind.branch}_raw", rows, start, start + activation.shape[1])
        activation = activation.to(raw_run.device)
        return self.enter(kind, layer, kind.raw_output(self.adapter, layer, activation) - raw_run,
                          rows, start)

    # -- the downstream recomputation --------------------------------------------------------
    def prefix(self, rows: torch.Tensor, start: int):
        """``prefix(layer)``: the run's keys and values ``[R, K, start, E]`` of positions before
        ``start`` at ``rows`` (a :class:`~attrscope.arch.forward.Plan`'s prefix)."""
        return lambda layer: (self.cached(layer, "k", rows, 0, start),
                              self.cached(layer, "v", rows, 0, start))

    def run(self, layer: int, stage: str, resid: torch.Tensor, rows: torch.Tensor, start: int,
            answer_pos: torch.Tensor, readout: Readout) -> torch.Tensor:
        """The task metric ``[R]`` continuing from ``resid`` ``[R, S, d_model]``, the residual
        stream at ``stage`` of ``layer`` (:class:`~attrscope.arch.forward.Start`) at positions
        ``start..``; ``rows`` ``[R]`` sample of each row; ``answer_pos`` ``[R]`` absolute
        positions."""
        plan = forward.Plan(forward.Start(layer, stage, start), prefix=self.prefix(rows, start))
        return forward.metric(self.adapter, resid, plan, answer_pos, readout)
