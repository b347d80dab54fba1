"""The architecture seam: one block adapter per model family, under every fast forward.

``adapter_for(model)`` reads a loaded model (a TransformerBridge or a Hugging Face model) into a
:class:`~attrscope.arch.core.BlockAdapter`, or raises :class:`Unsupported` naming the feature no
adapter implements. ``embedding(model, tokens)`` is what enters the first block (token and
position embeddings, any embedding scale), read from the model's own forward.

Supported families (``config.model_type``): see :data:`SUPPORTED_FAMILIES`.
"""

from __future__ import annotations

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


def adapter_for(model, dtype: torch.dtype | None = None) -> BlockAdapter:
    """The model's block adapter with its weights in ``dtype`` (default: :func:`compute_dtype`;
    a float32 copy of a half-precision model's weights); :class:`Unsupported` (a ValueError)
    names what is missing."""
    adapter = _read_adapter(model)
    dtype = dtype or compute_dtype(model)
    return adapter if adapter.dtype == dtype else adapter.cast(dtype)


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
           "cache_device", "compute_dtype", "embedding", "full_forward", "hf_model", "model_dtype",
           "set_cache_device", "set_compute_dtype"]
