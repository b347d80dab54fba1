"""The architecture seam: one block adapter per model family, under every fast forward.

``adapter_for(model)`` reads a loaded model (a TransformerBridge or a Hugging Face model) into a
:class:`~attrscope.arch.core.BlockAdapter`, or raises :class:`Unsupported` naming the feature no
adapter implements. ``embedding(model, tokens)`` is what enters the first block (token and
position embeddings, any embedding scale), read from the model's own forward.

Supported families (``config.model_type``): see :data:`SUPPORTED_FAMILIES`.
"""

from __future__ import annotations

import torch

from .core import BlockAdapter, Norm, Rotary
from .families import READERS, Unsupported

SUPPORTED_FAMILIES = tuple(sorted(READERS))


def hf_model(model) -> torch.nn.Module:
    """The Hugging Face model under a TransformerBridge (or the model itself)."""
    return getattr(model, "original_model", model)


def adapter_for(model) -> BlockAdapter:
    """The model's block adapter; :class:`Unsupported` (a ValueError) names what is missing."""
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


def embedding(model, tokens: torch.Tensor, adapter: BlockAdapter | None = None) -> torch.Tensor:
    """``[n, seq, d_model]``: the residual stream entering the first block for ``tokens``
    ``[n, seq]``, taken from the model's own forward (stopped there)."""
    adapter = adapter or adapter_for(model)
    captured = {}

    def grab(module, args, kwargs):
        captured["x"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    handle = adapter.first_layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            hf_model(model)(tokens)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["x"].detach()


def full_forward(adapter: BlockAdapter, embed: torch.Tensor, caches: list[dict] | None = None
                 ) -> torch.Tensor:
    """The final residual stream ``[n, seq, d]`` from the embedding ``[n, seq, d]`` through every
    block; ``caches``: a list receiving each block's cache (see :meth:`BlockAdapter.block`),
    with its input as ``"pre"``."""
    positions = torch.arange(embed.shape[1], device=embed.device)
    resid = embed
    for layer in range(adapter.n_layers):
        cache = None if caches is None else {"pre": resid}
        resid = adapter.block(layer, resid, positions, cache=cache)
        if caches is not None:
            caches.append(cache)
    return resid


__all__ = ["BlockAdapter", "Norm", "Rotary", "Unsupported", "SUPPORTED_FAMILIES", "adapter_for",
           "embedding", "full_forward", "hf_model"]
