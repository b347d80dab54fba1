"""The architecture seam: one block adapter per model family, under every fast forward.

``adapter_for(model)`` reads a loaded model (a TransformerBridge or a Hugging Face model) into a
:class:`~attrscope.arch.core.BlockAdapter`, or raises :class:`Unsupported` naming the feature no
adapter implements. ``embedding(model, tokens)`` is what enters the first block (token and
position embeddings, any embedding scale), read from the model's own forward.

Supported families (``config.model_type``): see :data:`SUPPORTED_FAMILIES`.
"""

from __future__ import annotations

import copy
import weakref

import torch

from .core import BlockAdapter, Norm, Rotary
from .forward import full_forward
from .families import READERS, Unsupported

SUPPORTED_FAMILIES = tuple(sorted(READERS))


def hf_model(model) -> torch.nn.Module:
    """The Hugging Face model under a TransformerBridge (or the model itself)."""
    return getattr(model, "original_model", model)


HALF = (torch.float16, torch.bfloat16)
# The compute dtype and cache device chosen for a model (load_model's compute= and caches=), kept
# by attrscope beside the model, weakly, rather than as attributes of the user's module.
_CHOSEN: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def model_dtype(model) -> torch.dtype:
    return next(hf_model(model).parameters()).dtype


def set_compute_dtype(model, dtype: torch.dtype | None) -> None:
    """Make the fast forwards on ``model`` compute in ``dtype`` (None: the default, see
    :func:`compute_dtype`), for every method and command that runs it."""
    _CHOSEN.setdefault(hf_model(model), {})["compute_dtype"] = dtype


def compute_dtype(model) -> torch.dtype:
    """The dtype the fast forwards compute in: the one set by :func:`set_compute_dtype`, else
    float32 for a float16 / bfloat16 model (patch effects are small differences of large
    activations, which half precision loses), else the model's own."""
    chosen = _CHOSEN.get(hf_model(model), {}).get("compute_dtype")
    if chosen is not None:
        return chosen
    dtype = model_dtype(model)
    return torch.float32 if dtype in HALF else dtype


def set_cache_device(model, device: str | torch.device | None) -> None:
    """Keep the fast path's per-layer run caches on ``device`` (e.g. ``"cpu"``: host memory,
    streamed to each layer's device as it runs; None: where they are computed)."""
    _CHOSEN.setdefault(hf_model(model), {})["cache_device"] = (
        None if device is None else torch.device(device))


def cache_device(model) -> torch.device | None:
    """The device set by :func:`set_cache_device`, or None."""
    return _CHOSEN.get(hf_model(model), {}).get("cache_device")


# The adapters read from a model, per dtype, kept beside the model weakly (gone with it): a
# half-precision model's float32 working copy (its norms and unembedding; the per-layer matrices
# are cast as read) is made once and shared by every forward, Runner and EdgeRun on it rather
# than once per forward.
# Each is stamped with the model's parameters (storage, in-place version, device, dtype), so
# moving, re-loading or editing the weights in place (under no_grad) reads them again.
_ADAPTERS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _weights_stamp(hf: torch.nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in hf.parameters())


def adapter_for(model, dtype: torch.dtype | None = None) -> BlockAdapter:
    """The model's block adapter with its weights in ``dtype`` (default: :func:`compute_dtype`;
    a float32 copy of a half-precision model's weights), made once per model and dtype and
    shared (see :func:`forget_adapters`); :class:`Unsupported` (a ValueError) names what is
    missing."""
    hf = hf_model(model)
    dtype = dtype or compute_dtype(model)
    stamp = _weights_stamp(hf)
    known = _ADAPTERS.setdefault(hf, {})
    if any(old_stamp != stamp for old_stamp, _ in known.values()):
        known.clear()  # the weights changed: drop every stale copy before making a new one
    if dtype not in known:
        adapter = _read_adapter(model)
        if adapter.dtype != dtype:
            # A half-precision model's matrices are cast layer by layer as they are read: a
            # whole float32 copy would hold twice the model's weights beside them.
            adapter = adapter.cast(dtype, on_read=adapter.dtype in HALF)
        known[dtype] = (stamp, adapter)
    return known[dtype][1]


def config_of(model):
    """The model's TransformerLens config as attrscope reads its sizes: the bridge's own, or,
    where the weights disagree with it (OPT's bridge gives ``d_mlp`` = 4 d_model whatever its
    ``ffn_dim``), a copy with the widths the adapter reads from the weights. The bridge's own
    ``cfg`` is never changed; every unit count, memory model and estimate reads this."""
    cfg = model.cfg
    try:
        adapter = adapter_for(model, model_dtype(model))  # sizes only: no compute-dtype copy
    except Unsupported:
        return cfg  # the TransformerLens fallback: the bridge's config is what its hooks see
    if int(cfg.d_mlp) == adapter.d_mlp:
        return cfg
    fixed = copy.copy(cfg)
    fixed.d_mlp = adapter.d_mlp
    return fixed


def has_adapter(model, dtype: torch.dtype | None = None) -> bool:
    """Whether :func:`adapter_for` has the model's adapter in ``dtype`` (default: the compute
    dtype) made and current: a call now pays nothing to make it."""
    hf = hf_model(model)
    made = _ADAPTERS.get(hf, {}).get(dtype or compute_dtype(model))
    return made is not None and made[0] == _weights_stamp(hf)


def forget_adapters(model) -> None:
    """Drop the adapters (and any float32 working copy of the weights) kept for ``model``:
    its memory is freed now rather than when the model is."""
    _ADAPTERS.pop(hf_model(model), None)


def _read_adapter(model) -> BlockAdapter:
    hf = hf_model(model)
    config = getattr(hf, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in READERS:
        raise Unsupported(
            f"model type {model_type!r} has no block adapter; supported families: "
            f"{', '.join(SUPPORTED_FAMILIES)}.")
    try:
        return READERS[model_type](hf)
    except Unsupported as e:
        raise Unsupported(f"{model_type} model with {e}: not supported by attrscope's fast "
                          "forwards.") from None


class _Stop(Exception):
    pass


def embedding(model, tokens: torch.Tensor, adapter: BlockAdapter | None = None,
              token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """``[n, seq, d_model]``: the residual stream entering the first block for ``tokens``
    ``[n, seq]``, taken from the model's own forward (stopped there), in the adapter's dtype
    on its first layer's device. ``token_embeddings`` ``[n, seq, d_model]``: used instead of the
    model's token-embedding lookup (e.g. one-hot @ W_E), and the result is differentiable in
    them (positions, scaling and the rest as the model does)."""
    adapter = adapter or adapter_for(model)
    hf = hf_model(model)
    captured = {}

    def grab(module, args, kwargs):
        captured["x"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    def lookup(module, args, output):
        return token_embeddings.to(output.dtype)

    handles = [adapter.first_layer.register_forward_pre_hook(grab, with_kwargs=True)]
    if token_embeddings is not None:
        handles.append(hf.get_input_embeddings().register_forward_hook(lookup))
    try:
        with torch.set_grad_enabled(token_embeddings is not None and torch.is_grad_enabled()):
            hf(tokens)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    x = captured["x"] if token_embeddings is not None else captured["x"].detach()
    return x.to(device=adapter.device_of(0), dtype=adapter.dtype)


__all__ = ["BlockAdapter", "Norm", "Rotary", "Unsupported", "SUPPORTED_FAMILIES", "adapter_for",
           "cache_device", "compute_dtype", "config_of", "embedding", "forget_adapters", "full_forward", "hf_model", "model_dtype",
           "set_cache_device", "set_compute_dtype"]
