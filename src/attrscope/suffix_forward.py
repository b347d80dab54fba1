"""Downstream-only forward for GPT-2-style blocks: the fast path of patched runs.

A patched run differs from the unpatched one only downstream of the patch, and - because
attention is causal and the run and source prompts share their first ``start`` tokens - only at
positions ``>= start``. This module recomputes exactly that part:

- it starts at the patched layer (from the run's cached residual stream), or half-way through it
  (after attention, for a head patch; after the MLP, for a neuron patch);
- it runs only positions ``start..seq-1``, attending to the run's cached keys and values at the
  earlier positions;
- in the last block it computes only the answer position, and it unembeds only the answer and
  distractor tokens (see :class:`attrscope.tasks.metrics.Readout`).

It reads the model's own weights through the TransformerBridge (``W_Q``, ``W_O``, ``W_in``, ...)
and is used only for the block structure it implements (pre-norm LayerNorm blocks, learned
positions, sequential attention then MLP, plain GELU/ReLU MLP, multi-head attention): GPT-2 and
its relatives. :class:`attrscope.engine.Runner` checks it against the model's own forward on the
actual batch before using it, and otherwise patches with hooks through the bridge.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .tasks.metrics import Readout

_ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


def supports(model) -> bool:
    """Whether the model's configuration is the block structure this module implements."""
    cfg = model.cfg
    return (
        getattr(cfg, "normalization_type", None) == "LN"
        and getattr(cfg, "positional_embedding_type", None) == "standard"
        and not getattr(cfg, "gated_mlp", False)
        and getattr(cfg, "n_key_value_heads", None) in (None, cfg.n_heads)
        and getattr(cfg, "act_fn", None) in _ACTIVATIONS
        and plain_sequential_blocks(cfg)
    )


def plain_sequential_blocks(cfg) -> bool:
    """Sequential pre-norm attention-then-MLP blocks without soft-capping, local attention,
    query/key norms, extra norms, experts or a per-layer attention scale."""
    return (
        not getattr(cfg, "parallel_attn_mlp", False)
        and not getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
        and getattr(cfg, "attn_scores_soft_cap", -1.0) in (None, -1.0)
        and getattr(cfg, "output_logits_soft_cap", -1.0) in (None, -1.0)
        and getattr(cfg, "num_experts", None) in (None, 0)
        and not getattr(cfg, "use_local_attn", False)
        and not getattr(cfg, "use_qk_norm", False)
        and not getattr(cfg, "use_normalization_before_and_after", False)
        and getattr(cfg, "use_attn_scale", True)
    )


def _layer_norm(module):
    inner = getattr(module, "original_component", module)
    return inner.weight.detach(), inner.bias.detach(), float(inner.eps)


class SuffixForward:
    """The model's blocks as plain tensor functions on positions ``start..seq-1``.

    Shapes: ``R`` stacked rows (copies x samples), ``S`` = seq - start suffix positions.
    ``prefix_k``/``prefix_v`` per layer: ``[n, seq, n_heads, d_head]`` keys and values of the run
    (only their first ``start`` positions are read).
    """

    def __init__(self, model, prefix_k: list[torch.Tensor], prefix_v: list[torch.Tensor]):
        cfg = model.cfg
        self.n_layers = int(cfg.n_layers)
        self.scale = 1.0 / math.sqrt(cfg.d_head)
        self.act = _ACTIVATIONS[cfg.act_fn]
        self.n_heads, self.d_head = int(cfg.n_heads), int(cfg.d_head)
        with torch.no_grad():
            W_Q, W_K, W_V = model.W_Q.detach(), model.W_K.detach(), model.W_V.detach()
            # [layers, d_model, 3 * n_heads * d_head]: one matmul gives queries, keys and values
            self.W_QKV = torch.cat([w.permute(0, 2, 1, 3).flatten(2) for w in (W_Q, W_K, W_V)], dim=2)
            self.b_QKV = torch.cat([b.detach().flatten(1) for b in (model.b_Q, model.b_K, model.b_V)], dim=1)
            self.W_O, self.b_O = model.W_O.detach(), model.b_O.detach()
            self.W_in, self.b_in = model.W_in.detach(), model.b_in.detach()
            self.W_out, self.b_out = model.W_out.detach(), model.b_out.detach()
            self.W_U, self.b_U = model.W_U.detach(), model.b_U.detach()
        self.ln1 = [_layer_norm(block.ln1) for block in model.blocks]
        self.ln2 = [_layer_norm(block.ln2) for block in model.blocks]
        self.ln_final = _layer_norm(model.ln_final)
        self.prefix_k, self.prefix_v = prefix_k, prefix_v

    @staticmethod
    def _norm(x: torch.Tensor, params) -> torch.Tensor:
        weight, bias, eps = params
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)

    def attention_out(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Attention output ``[R, S, d_model]`` from ``z`` ``[R, S, n_heads, d_head]``."""
        return torch.einsum("rshe,hed->rsd", z, self.W_O[layer]) + self.b_O[layer]

    def mlp_out(self, layer: int, post: torch.Tensor) -> torch.Tensor:
        """MLP output ``[R, S, d_model]`` from post-activations ``[R, S, d_mlp]``."""
        return post @ self.W_out[layer] + self.b_out[layer]

    def _mlp(self, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
        pre = self._norm(resid_mid, self.ln2[layer]) @ self.W_in[layer] + self.b_in[layer]
        return resid_mid + self.mlp_out(layer, self.act(pre))

    def _attention(self, layer: int, resid: torch.Tensor, rows: torch.Tensor, start: int,
                   query_pos: torch.Tensor | None) -> torch.Tensor:
        """z ``[R, Q, n_heads, d_head]`` for queries at all suffix positions (``query_pos`` None,
        Q = S) or at one absolute position per row (``query_pos`` ``[R]``, Q = 1)."""
        R, S, _ = resid.shape
        H, E = self.n_heads, self.d_head
        x = self._norm(resid, self.ln1[layer])
        qkv = (x @ self.W_QKV[layer] + self.b_QKV[layer]).view(R, S, 3, H, E)
        q, k, v = qkv.unbind(dim=2)  # each [R, S, H, E]
        if start > 0:
            k = torch.cat([self.prefix_k[layer][rows, :start], k], dim=1)
            v = torch.cat([self.prefix_v[layer][rows, :start], v], dim=1)
        key_pos = torch.arange(k.shape[1], device=resid.device)
        if query_pos is None:
            q_abs = torch.arange(start, start + S, device=resid.device)
            allowed = (key_pos[None, :] <= q_abs[:, None])[None, None]  # [1, 1, S, keys]
        else:
            q = q[torch.arange(R, device=q.device), query_pos - start].unsqueeze(1)  # [R, 1, H, E]
            allowed = (key_pos[None, :] <= query_pos[:, None])[:, None, None]  # [R, 1, 1, keys]
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=allowed, scale=self.scale)
        return z.transpose(1, 2)

    def run(self, layer: int, stage: str, resid: torch.Tensor, rows: torch.Tensor, start: int,
            answer_pos: torch.Tensor, readout: Readout) -> torch.Tensor:
        """The task metric ``[R]`` (as ``readout`` says), continuing from ``resid``
        ``[R, S, d_model]``, the residual stream at ``stage`` of ``layer``: ``"pre"`` (entering
        the block), ``"mid"`` (after its attention) or ``"post"`` (leaving it).
        ``rows`` ``[R]`` sample of each row; ``answer_pos`` ``[R]`` absolute positions."""
        if stage == "pre":
            first = layer
        elif stage == "mid":
            if layer == self.n_layers - 1:
                return self._final(self._mlp(layer, self._at(resid, answer_pos, start)), readout)
            resid, first = self._mlp(layer, resid), layer + 1
        elif stage == "post":
            first = layer + 1
        else:
            raise ValueError(f"stage must be 'pre', 'mid' or 'post', got {stage!r}")
        if first == self.n_layers:
            return self._final(self._at(resid, answer_pos, start), readout)
        for block in range(first, self.n_layers - 1):
            z = self._attention(block, resid, rows, start, None)
            resid = self._mlp(block, resid + self.attention_out(block, z))
        last = self.n_layers - 1
        z = self._attention(last, resid, rows, start, answer_pos)
        at_answer = self._at(resid, answer_pos, start)
        resid_mid = at_answer + self.attention_out(last, z).squeeze(1)
        return self._final(self._mlp(last, resid_mid), readout)

    @staticmethod
    def _at(resid: torch.Tensor, answer_pos: torch.Tensor, start: int) -> torch.Tensor:
        return resid[torch.arange(resid.shape[0], device=resid.device), answer_pos - start]

    def _final(self, resid: torch.Tensor, readout: Readout) -> torch.Tensor:
        """resid ``[R, d_model]`` at the answer position -> the task metric ``[R]``."""
        return readout.from_final(self._norm(resid, self.ln_final), self.W_U, self.b_U)
