"""Per-architecture pieces of the edge forward, behind one interface.

:class:`~attrscope.edges.forward.EdgeForward` runs the same loop for every supported model (one
input copy per destination, attention with per-head projections, an MLP, the final norm and the
metric); what differs between architectures lives here:

- :class:`Gpt2Blocks`: LayerNorm, learned positions, multi-head attention, plain GELU/ReLU MLP,
  biases: the block structure of :mod:`attrscope.suffix_forward`, whose weights it reuses;
- :class:`LlamaBlocks`: RMSNorm, rotary positions, grouped-query attention (``n_kv_heads`` key
  and value heads, each shared by ``n_heads / n_kv_heads`` query heads), gated (SwiGLU) MLP,
  biases where the checkpoint has them (none for Llama; Qwen2-style q/k/v biases are read).

Both read the weights through the TransformerBridge (``W_Q`` ``[L, H, d, E]``, ``W_K`` and
``W_V`` ``[L, n_kv_heads, d, E]``, ``W_O``, ``W_in``, ``W_gate``, ``W_out``, ``W_U``, the norms'
modules, the model's own rotary embedding module). Neither is trusted blindly:
:meth:`attrscope.edges.methods.EdgeRun.prepare` refuses a model whose re-implemented metric
differs from the bridge's.

The interface (``L`` layers, ``H`` query heads, ``K`` key/value heads, ``E`` = d_head):

- ``W_Q`` ``[L, H, d, E]``, ``W_K``/``W_V`` ``[L, K, d, E]``, ``b_Q`` ``[L, H, E]``,
  ``b_K``/``b_V`` ``[L, K, E]``, ``W_O`` ``[L, H, E, d]``, ``b_O`` ``[L, d]``, ``b_out`` ``[L, d]``,
  ``scale`` (multiplies q . k);
- ``norm_attn(layer, x)``, ``norm_mlp(layer, x)``: the block's two norms, ``[..., d]``;
- ``rotate(x, positions)``: positional rotation of queries or keys ``[R, P, heads, E]`` at
  absolute ``positions`` ``[P]`` (identity without rotary embeddings);
- ``mlp(layer, x)``: MLP output without its output bias from the normalised input ``[..., d]``;
- ``_final(resid, readout)``: the metric from the final residual stream at the
  answer position. It is :meth:`SuffixForward._final` itself (one implementation of the final
  norm, unembedding and metric); each class supplies the ``_norm`` it calls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import suffix_forward
from ..suffix_forward import SuffixForward

_LLAMA_ACTIVATIONS = {"silu": F.silu, "swish": F.silu, **suffix_forward._ACTIVATIONS}


def llama_supported(model) -> bool:
    """Whether the model's configuration is the Llama-style structure :class:`LlamaBlocks`
    implements (RMSNorm, full-width rotate-half rotary embeddings, gated MLP)."""
    cfg = model.cfg
    return (
        getattr(cfg, "normalization_type", None) == "RMS"
        and getattr(cfg, "positional_embedding_type", None) == "rotary"
        and getattr(cfg, "gated_mlp", False)
        and getattr(cfg, "act_fn", None) in _LLAMA_ACTIVATIONS
        and not getattr(cfg, "rotary_adjacent_pairs", False)
        and getattr(cfg, "rotary_dim", None) in (None, cfg.d_head)
        and hasattr(model, "rotary_emb")
        and suffix_forward.plain_sequential_blocks(cfg)
    )


def blocks_for(model):
    """The block implementation of ``model``; a ValueError names what is not supported."""
    if suffix_forward.supports(model):
        return Gpt2Blocks(model)
    if llama_supported(model):
        return LlamaBlocks(model)
    cfg = model.cfg
    raise ValueError(
        "Edge methods support GPT-2-style blocks (LayerNorm, learned positions, multi-head "
        "attention, plain MLP) and Llama-style blocks (RMSNorm, rotary positions, grouped-query "
        f"attention, gated MLP); {cfg.model_name!r} is neither (normalization "
        f"{getattr(cfg, 'normalization_type', None)!r}, positions "
        f"{getattr(cfg, 'positional_embedding_type', None)!r}, gated MLP "
        f"{getattr(cfg, 'gated_mlp', False)}, activation {getattr(cfg, 'act_fn', None)!r}).")


class Gpt2Blocks:
    """GPT-2-style blocks; weights from :class:`~attrscope.suffix_forward.SuffixForward`."""

    _norm = staticmethod(SuffixForward._norm)
    _final = SuffixForward._final

    def __init__(self, model):
        sf = SuffixForward(model, [], [])
        self.n_layers, self.n_heads, self.d_head = sf.n_layers, sf.n_heads, sf.d_head
        self.n_kv_heads = sf.n_heads
        L, H, E = sf.n_layers, sf.n_heads, sf.d_head
        d = sf.W_QKV.shape[1]
        # the fused [L, d, 3 H E] weights back to [L, 3, H, d, E] (q, k, v)
        W = sf.W_QKV.view(L, d, 3, H, E).permute(0, 2, 3, 1, 4)
        self.W_Q, self.W_K, self.W_V = W.unbind(1)
        self.b_Q, self.b_K, self.b_V = sf.b_QKV.view(L, 3, H, E).unbind(1)
        self.W_O, self.b_O, self.b_out = sf.W_O, sf.b_O, sf.b_out
        self.W_in, self.b_in, self.W_out, self.act = sf.W_in, sf.b_in, sf.W_out, sf.act
        self.W_U, self.b_U = sf.W_U, sf.b_U
        self.ln1, self.ln2, self.ln_final = sf.ln1, sf.ln2, sf.ln_final
        self.scale = sf.scale

    def norm_attn(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x, self.ln1[layer])

    def norm_mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x, self.ln2[layer])

    @staticmethod
    def rotate(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x  # learned positions are part of the input node's output

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.act(x @ self.W_in[layer] + self.b_in[layer]) @ self.W_out[layer]


def _rms_params(module):
    inner = getattr(module, "original_component", module)
    eps = getattr(inner, "variance_epsilon", getattr(inner, "eps", None))
    if eps is None:
        raise ValueError(f"Cannot read the epsilon of the norm {type(inner).__name__}.")
    return inner.weight.detach(), float(eps)


def _stacked_or_zeros(model, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """The bridge's stacked bias ``name`` or zeros of ``shape`` for a bias-free checkpoint."""
    try:
        value = getattr(model, name)
    except AttributeError:
        value = None
    if value is None:
        return like.new_zeros(shape)
    return value.detach().reshape(shape)


class LlamaBlocks:
    """Llama-style blocks: RMSNorm, rotary positions, grouped-query attention, gated MLP."""

    _final = SuffixForward._final

    def __init__(self, model):
        cfg = model.cfg
        self.n_layers, self.n_heads = int(cfg.n_layers), int(cfg.n_heads)
        self.d_head = int(cfg.d_head)
        self.n_kv_heads = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
        L, H, K, E, d = self.n_layers, self.n_heads, self.n_kv_heads, self.d_head, int(cfg.d_model)
        with torch.no_grad():
            self.W_Q, self.W_K = model.W_Q.detach(), model.W_K.detach()
            self.W_V, self.W_O = model.W_V.detach(), model.W_O.detach()
            if self.W_K.shape[1] != K or self.W_Q.shape[1] != H:
                raise ValueError(f"W_Q {tuple(self.W_Q.shape)} / W_K {tuple(self.W_K.shape)} do "
                                 f"not have {H} query and {K} key/value heads.")
            self.b_Q = _stacked_or_zeros(model, "b_Q", (L, H, E), self.W_Q)
            self.b_K = _stacked_or_zeros(model, "b_K", (L, K, E), self.W_K)
            self.b_V = _stacked_or_zeros(model, "b_V", (L, K, E), self.W_V)
            self.b_O = _stacked_or_zeros(model, "b_O", (L, d), self.W_O)
            self.W_in, self.W_gate = model.W_in.detach(), model.W_gate.detach()
            self.W_out = model.W_out.detach()
            d_mlp = self.W_in.shape[-1]
            self.b_in = _stacked_or_zeros(model, "b_in", (L, d_mlp), self.W_in)
            self.b_gate = _stacked_or_zeros(model, "b_gate", (L, d_mlp), self.W_in)
            self.b_out = _stacked_or_zeros(model, "b_out", (L, d), self.W_out)
            self.W_U = model.W_U.detach()
            self.b_U = _stacked_or_zeros(model, "b_U", (self.W_U.shape[1],), self.W_U)
        self.act = _LLAMA_ACTIVATIONS[cfg.act_fn]
        self.ln1 = [_rms_params(block.ln1) for block in model.blocks]
        self.ln2 = [_rms_params(block.ln2) for block in model.blocks]
        self.ln_final = _rms_params(model.ln_final)
        # The model's own rotary module gives cos/sin (any rope scaling it implements).
        self.rotary = getattr(model.rotary_emb, "original_component", model.rotary_emb)
        attn = getattr(model.blocks[0].attn, "original_component", None)
        self.scale = float(getattr(attn, "scaling", None) or 1.0 / math.sqrt(E))

    @staticmethod
    def _norm(x: torch.Tensor, params) -> torch.Tensor:
        """RMSNorm ``[..., d]``, in float32 as Hugging Face's Llama computes it."""
        weight, eps = params
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return weight * normed.to(x.dtype)

    def norm_attn(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x, self.ln1[layer])

    def norm_mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x, self.ln2[layer])

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate-half rotary embedding of ``x`` ``[R, P, heads, E]`` at ``positions`` ``[P]``."""
        cos, sin = self.rotary(x, positions[None])  # [1, P, E] each
        cos, sin = cos[0, :, None].to(x.dtype), sin[0, :, None].to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-second, first], dim=-1) * sin

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        gate = self.act(x @ self.W_gate[layer] + self.b_gate[layer])
        return (gate * (x @ self.W_in[layer] + self.b_in[layer])) @ self.W_out[layer]
