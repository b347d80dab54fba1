"""One reader per model family: Hugging Face modules -> :class:`~attrscope.arch.core.BlockAdapter`.

Each reader is declared for the ``model_type`` values of its family's configs and states what it
refuses (:class:`Unsupported`, raised before any computation). Sizes come from the weights'
shapes, not the config. Adding a family means adding one reader here and one test fixture.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from .core import BlockAdapter, Norm, Rotary


class Unsupported(ValueError):
    """The model has a feature no adapter implements; the message names it."""


READERS: dict[str, Callable[[torch.nn.Module], BlockAdapter]] = {}


def reader(*model_types: str):
    def register(fn):
        for name in model_types:
            READERS[name] = fn
        return fn

    return register


# -- weight helpers -------------------------------------------------------------------------
def _t(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach()


def linear(module) -> tuple[torch.Tensor, torch.Tensor]:
    """An ``nn.Linear`` as ``(W [in, out], b [out])`` (zeros without a bias)."""
    weight = module.weight.detach().T
    bias = _t(getattr(module, "bias", None))
    return weight, bias if bias is not None else weight.new_zeros(weight.shape[1])


def conv1d(module) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT-2's ``Conv1D`` (weight stored ``[in, out]``)."""
    return module.weight.detach(), module.bias.detach()


def split_heads(W: torch.Tensor, b: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``W [d, heads * E]``, ``b [heads * E]`` -> ``[heads, d, E]``, ``[heads, E]``."""
    d = W.shape[0]
    return W.view(d, heads, -1).permute(1, 0, 2), b.view(heads, -1)


def layer_norm(module) -> Norm:
    return Norm("layer", _t(module.weight), _t(module.bias), float(module.eps))


def rms_norm(module, offset: float = 0.0, scale_in_float32: bool = False) -> Norm:
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if eps is None:
        raise Unsupported(f"cannot read the epsilon of the norm {type(module).__name__}")
    return Norm("rms", _t(module.weight), None, float(eps), offset, scale_in_float32)


def unembedding(hf) -> tuple[torch.Tensor, torch.Tensor]:
    """The output embedding as ``(W_U [d, V], b_U [V])``."""
    return linear(hf.get_output_embeddings())


def rotary_from_module(module, layer_type: str | None = None, pairs: bool = False) -> Rotary:
    """A :class:`Rotary` whose angles come from the model's own rotary module (any rope scaling
    it implements is kept). GPT-J's module returns half-width ``(sin, cos)`` for adjacent pairs."""

    def angles(positions: torch.Tensor, dtype: torch.dtype):
        probe = torch.zeros(1, dtype=dtype, device=positions.device)
        args = (probe, positions[None]) + ((layer_type,) if layer_type is not None else ())
        with torch.no_grad():
            first, second = module(*args)
        if pairs:  # (sin, cos), each [1, P, rot / 2]
            return second[0].repeat_interleave(2, -1), first[0].repeat_interleave(2, -1)
        return first[0], second[0]

    return Rotary(angles, pairs)


def sliding_windows(config, n_layers: int) -> list[int | None]:
    """Per layer: the sliding window (keys within ``window`` positions of the query) or None."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is None:
        return [window] * n_layers
    return [window if kind == "sliding_attention" else None for kind in types]


# Activations computed by one fused kernel instead of Hugging Face's Python formula (five
# elementwise passes over the MLP's hidden layer: a fifth of ``ap``'s time on GPT-2), equal to it
# up to rounding (4.8e-7 at |x| = 10 in float32).
FUSED_ACTIVATIONS = {"gelu_new": functools.partial(F.gelu, approximate="tanh")}


def activation(name: str):
    if name not in ACT2FN:
        raise Unsupported(f"activation {name!r}")
    return FUSED_ACTIVATIONS.get(name, ACT2FN[name])


def _stack_layers(per_layer: list[dict]) -> dict[str, list]:
    return {key: [layer[key] for layer in per_layer] for key in per_layer[0]}


def attention_scale(attn, d_head: int) -> float:
    scaling = getattr(attn, "scaling", None)
    return float(scaling) if scaling is not None else 1.0 / math.sqrt(d_head)


def _ungated_layer(qkv, out, mlp_in, mlp_out, ln_attn, ln_mlp, n_heads: int) -> dict:
    """One layer's weights for :func:`_ungated_adapter`. qkv: ``(W, b)`` of queries, keys and
    values per head (``[H, d, E]``, ``[H, E]``); out, mlp_in, mlp_out: ``(W [in, out], b)`` of the
    attention output (``[H * E, d]``) and the MLP's two projections; the two pre-norms."""
    (W_Q, b_Q), (W_K, b_K), (W_V, b_V) = qkv
    W_O, b_O = out
    return dict(W_Q=W_Q, b_Q=b_Q, W_K=W_K, b_K=b_K, W_V=W_V, b_V=b_V,
                W_O=W_O.view(n_heads, -1, W_O.shape[1]), b_O=b_O, W_in=mlp_in[0], b_in=mlp_in[1],
                W_out=mlp_out[0], b_out=mlp_out[1], ln_attn=ln_attn, ln_mlp=ln_mlp)


def _ungated_adapter(family: str, hf, layers: list[dict], n_heads: int, act, ln_final,
                     first_layer, scale: float | None = None, **options) -> BlockAdapter:
    """The adapter of a family with one key/value head per query head and an ungated MLP (GPT-2,
    GPT-NeoX, GPT-J, OPT), from its per-layer weights ``layers`` (W_Q ``[H, d, E]``, ..., W_in
    ``[d, d_mlp]``, norms). ``scale``: the attention scale (None: 1/sqrt(d_head)); ``options``:
    further BlockAdapter fields (rotary, parallel)."""
    s = _stack_layers(layers)
    E = s["W_Q"][0].shape[2]
    W_U, b_U = unembedding(hf)
    return BlockAdapter(
        family=family, n_layers=len(layers), n_heads=n_heads, n_kv_heads=n_heads, d_head=E,
        d_model=s["W_Q"][0].shape[1], d_mlp=s["W_in"][0].shape[1], W_gate=None, b_gate=None,
        act=act, ln_final=ln_final, W_U=W_U, b_U=b_U,
        scale=1.0 / math.sqrt(E) if scale is None else float(scale), first_layer=first_layer,
        **options, **s)


# -- GPT-2 ----------------------------------------------------------------------------------
@reader("gpt2")
def read_gpt2(hf) -> BlockAdapter:
    cfg = hf.config
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        raise Unsupported("scale_attn_by_inverse_layer_idx (a per-layer attention scale)")
    if getattr(cfg, "add_cross_attention", False):
        raise Unsupported("cross-attention")
    blocks, H = hf.transformer.h, int(cfg.n_head)
    layers = []
    for block in blocks:
        W, b = conv1d(block.attn.c_attn)
        d = W.shape[0]
        (Wq, Wk, Wv), (bq, bk, bv) = W.split(d, dim=1), b.split(d)
        qkv = (split_heads(Wq, bq, H), split_heads(Wk, bk, H), split_heads(Wv, bv, H))
        layers.append(_ungated_layer(qkv, conv1d(block.attn.c_proj), conv1d(block.mlp.c_fc),
                                     conv1d(block.mlp.c_proj), layer_norm(block.ln_1),
                                     layer_norm(block.ln_2), H))
    return _ungated_adapter("gpt2", hf, layers, H, activation(cfg.activation_function),
                            layer_norm(hf.transformer.ln_f), blocks[0],
                            scale=None if cfg.scale_attn_weights else 1.0)


# -- GPT-NeoX / Pythia ----------------------------------------------------------------------
@reader("gpt_neox")
def read_gpt_neox(hf) -> BlockAdapter:
    cfg, blocks = hf.config, hf.gpt_neox.layers
    H = int(cfg.num_attention_heads)
    layers = []
    for block in blocks:
        W, b = linear(block.attention.query_key_value)  # [d, H * 3E], per head q | k | v
        d = W.shape[0]
        Wh = W.view(d, H, 3, -1).permute(2, 1, 0, 3)  # [3, H, d, E]
        bh = b.view(H, 3, -1).permute(1, 0, 2)
        layers.append(_ungated_layer(
            tuple(zip(Wh, bh)), linear(block.attention.dense), linear(block.mlp.dense_h_to_4h),
            linear(block.mlp.dense_4h_to_h), layer_norm(block.input_layernorm),
            layer_norm(block.post_attention_layernorm), H))
    rotary = rotary_from_module(hf.gpt_neox.rotary_emb)
    return _ungated_adapter("gpt_neox", hf, layers, H, activation(cfg.hidden_act),
                            layer_norm(hf.gpt_neox.final_layer_norm), blocks[0],
                            scale=getattr(blocks[0].attention, "scaling", None),
                            rotary=[rotary] * len(blocks), parallel=bool(cfg.use_parallel_residual))


# -- GPT-J ----------------------------------------------------------------------------------
@reader("gptj")
def read_gptj(hf) -> BlockAdapter:
    cfg, blocks = hf.config, hf.transformer.h
    H = int(cfg.n_head)
    layers = []
    for block in blocks:
        heads = [split_heads(*linear(getattr(block.attn, f"{x}_proj")), H) for x in "qkv"]
        norm = layer_norm(block.ln_1)  # attention and MLP read the same normalised stream
        layers.append(_ungated_layer(heads, linear(block.attn.out_proj), linear(block.mlp.fc_in),
                                     linear(block.mlp.fc_out), norm, norm, H))
    rotary = rotary_from_module(hf.transformer.rotary_emb, pairs=True)
    return _ungated_adapter("gptj", hf, layers, H, activation(cfg.activation_function),
                            layer_norm(hf.transformer.ln_f), blocks[0],
                            rotary=[rotary] * len(blocks), parallel=True)


# -- OPT ------------------------------------------------------------------------------------
@reader("opt")
def read_opt(hf) -> BlockAdapter:
    cfg, decoder = hf.config, hf.model.decoder
    if not cfg.do_layer_norm_before:
        raise Unsupported("post-LayerNorm blocks (do_layer_norm_before=False, the OPT-350m style)")
    if getattr(decoder, "project_in", None) is not None or getattr(decoder, "project_out", None) is not None:
        raise Unsupported("a projected embedding (word_embed_proj_dim != hidden_size, the "
                          "OPT-350m style)")
    if getattr(decoder, "final_layer_norm", None) is None:
        raise Unsupported("no final LayerNorm")
    H = int(cfg.num_attention_heads)
    layers = []
    for block in decoder.layers:
        heads = [split_heads(*linear(getattr(block.self_attn, f"{x}_proj")), H) for x in "qkv"]
        layers.append(_ungated_layer(heads, linear(block.self_attn.out_proj), linear(block.fc1),
                                     linear(block.fc2), layer_norm(block.self_attn_layer_norm),
                                     layer_norm(block.final_layer_norm), H))
    return _ungated_adapter("opt", hf, layers, H, activation(cfg.activation_function),
                            layer_norm(decoder.final_layer_norm), decoder.layers[0])


# -- Llama and its relatives ----------------------------------------------------------------
# Per family: which norm modules are pre-norms and post-norms, the RMSNorm variant, and
# whether the q/k norms span one head or all heads.
_LLAMA_LIKE = {
    # model_type: (attn pre, mlp pre, attn post, mlp post, rms offset, scale in f32, q/k norm per head)
    "llama": ("input_layernorm", "post_attention_layernorm", None, None, 0.0, False, True),
    "mistral": ("input_layernorm", "post_attention_layernorm", None, None, 0.0, False, True),
    "qwen2": ("input_layernorm", "post_attention_layernorm", None, None, 0.0, False, True),
    "qwen3": ("input_layernorm", "post_attention_layernorm", None, None, 0.0, False, True),
    "phi3": ("input_layernorm", "post_attention_layernorm", None, None, 0.0, False, True),
    "gemma2": ("input_layernorm", "pre_feedforward_layernorm", "post_attention_layernorm",
               "post_feedforward_layernorm", 1.0, True, True),
    "gemma3_text": ("input_layernorm", "pre_feedforward_layernorm", "post_attention_layernorm",
                    "post_feedforward_layernorm", 1.0, True, True),
    "olmo2": (None, None, "post_attention_layernorm", "post_feedforward_layernorm", 0.0, True,
              False),
}


def _attention_projections(attn, H: int, K: int, E: int):
    """q, k, v as ``(W [heads, d, E], b [heads, E])`` from separate or fused (Phi-3) projections."""
    if hasattr(attn, "qkv_proj"):
        W, b = linear(attn.qkv_proj)
        sizes = [H * E, K * E, K * E]
        return [split_heads(w, bb, n) for w, bb, n in zip(W.split(sizes, 1), b.split(sizes), (H, K, K))]
    return [split_heads(*linear(getattr(attn, f"{x}_proj")), n) for x, n in zip("qkv", (H, K, K))]


def _gated_mlp(mlp):
    """(W_in = up, b_in, W_gate, b_gate, W_out, b_out) from separate or fused (Phi-3) projections."""
    if hasattr(mlp, "gate_up_proj"):
        W, b = linear(mlp.gate_up_proj)
        (Wg, Wu), (bg, bu) = W.chunk(2, dim=1), b.chunk(2)
    else:
        (Wg, bg), (Wu, bu) = linear(mlp.gate_proj), linear(mlp.up_proj)
    Wout, bout = linear(mlp.down_proj)
    return Wu, bu, Wg, bg, Wout, bout


@reader(*_LLAMA_LIKE)
def read_llama_like(hf) -> BlockAdapter:
    cfg = hf.config
    model_type = cfg.model_type
    pre_attn, pre_mlp, post_attn, post_mlp, offset, f32, per_head = _LLAMA_LIKE[model_type]
    if getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts", None):
        raise Unsupported("mixture-of-experts MLPs")
    blocks = hf.model.layers
    H, K = int(cfg.num_attention_heads), int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    attn0 = blocks[0].self_attn
    E = int(getattr(attn0, "head_dim", None) or cfg.hidden_size // H)
    norm = lambda module: None if module is None else rms_norm(module, offset, f32)  # noqa: E731
    layers = []
    for block in blocks:
        attn = block.self_attn
        (Wq, bq), (Wk, bk), (Wv, bv) = _attention_projections(attn, H, K, E)
        Wo, bo = linear(attn.o_proj)
        Wu, bu, Wg, bg, Wout, bout = _gated_mlp(block.mlp)
        get = lambda name: None if name is None else getattr(block, name)  # noqa: E731
        layers.append(dict(
            W_Q=Wq, b_Q=bq, W_K=Wk, b_K=bk, W_V=Wv, b_V=bv, W_O=Wo.view(H, E, -1), b_O=bo,
            W_in=Wu, b_in=bu, W_gate=Wg, b_gate=bg, W_out=Wout, b_out=bout,
            ln_attn=norm(get(pre_attn)), ln_mlp=norm(get(pre_mlp)), post_attn=norm(get(post_attn)),
            post_mlp=norm(get(post_mlp)), q_norm=norm(getattr(attn, "q_norm", None)),
            k_norm=norm(getattr(attn, "k_norm", None))))
    s = _stack_layers(layers)
    types = getattr(cfg, "layer_types", None)
    if model_type == "gemma3_text":  # a rotary embedding per layer type (local / global)
        by_type = {kind: rotary_from_module(hf.model.rotary_emb, kind) for kind in set(types)}
        rotary = [by_type[kind] for kind in types]
    else:
        shared = rotary_from_module(hf.model.rotary_emb)
        rotary = [shared] * len(blocks)
    W_U, b_U = unembedding(hf)
    return BlockAdapter(
        family=model_type, n_layers=len(blocks), n_heads=H, n_kv_heads=K, d_head=E,
        d_model=s["W_Q"][0].shape[1], d_mlp=s["W_in"][0].shape[1],
        act=activation(getattr(cfg, "hidden_activation", None) or cfg.hidden_act),
        ln_final=norm(hf.model.norm), W_U=W_U, b_U=b_U, scale=attention_scale(attn0, E),
        first_layer=blocks[0], rotary=rotary, window=sliding_windows(cfg, len(blocks)),
        qk_norm_per_head=per_head, attn_softcap=getattr(cfg, "attn_logit_softcapping", None),
        logit_softcap=getattr(cfg, "final_logit_softcapping", None), **s)
