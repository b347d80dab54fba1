"""The one implementation of a transformer block that every fast forward is built on.

A :class:`BlockAdapter` holds a loaded model's weights in one layout, whatever the family
(``L`` layers, ``H`` query heads, ``K`` key/value heads, ``E`` = d_head, ``d`` = d_model,
``m`` = d_mlp; every list is indexed by layer):

- ``W_Q[l]`` ``[H, d, E]``, ``W_K[l]`` / ``W_V[l]`` ``[K, d, E]``, biases ``b_Q[l]`` ``[H, E]``,
  ``b_K[l]`` / ``b_V[l]`` ``[K, E]``; ``W_O[l]`` ``[H, E, d]``, ``b_O[l]`` ``[d]``;
- ``W_in[l]`` ``[d, m]`` (the "up" projection), ``W_gate[l]`` ``[d, m]`` or None (plain MLP),
  ``W_out[l]`` ``[m, d]`` and their biases; ``act`` the activation;
- norms (:class:`Norm` or None): ``ln_attn[l]`` / ``ln_mlp[l]`` before attention / MLP,
  ``post_attn[l]`` / ``post_mlp[l]`` applied to a branch's output before it joins the residual
  stream (Gemma-2/3, OLMo-2), ``q_norm[l]`` / ``k_norm[l]`` on queries and keys;
- ``parallel``: attention and MLP both read the stream entering the block (GPT-NeoX, GPT-J);
- positions: a :class:`Rotary` per layer or None (learned positions are in the embedding);
- attention: ``scale`` multiplies q . k, ``attn_softcap``, ``window[l]`` (sliding window or None);
- the end: ``ln_final``, ``W_U`` ``[d, V]``, ``b_U`` ``[V]``, ``logit_softcap``.

Family readers (:mod:`attrscope.arch.families`) fill it from the Hugging Face modules; the methods
here are the block's pieces as tensor functions; :mod:`attrscope.arch.forward` walks the blocks
with them (the one forward every method runs on), so attention, norms and MLPs exist once.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # the adapters sit below the tasks: they only call what a readout offers
    from ..tasks.metrics import Readout


@dataclass
class Norm:
    """LayerNorm (``kind="layer"``) or RMSNorm (``"rms"``) over the last axis.

    RMSNorm is computed in float32 as Hugging Face does; ``offset`` 1 scales by ``1 + weight``
    (Gemma); ``scale_in_float32`` multiplies by the weight before casting back (Gemma, OLMo-2)
    rather than after (Llama)."""

    kind: str
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    offset: float = 0.0
    scale_in_float32: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        if self.scale_in_float32:
            return (self.rms_scale(x) * x.float()).to(x.dtype)
        return self.apply_scale((x.float() * self.inverse_rms(x)).to(x.dtype))

    def inverse_rms(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., 1]`` float32 1 / rms(x)."""
        return torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)

    def apply_scale(self, normed: torch.Tensor) -> torch.Tensor:
        return normed * (self.weight + self.offset) if self.weight is not None else normed

    def rms_scale(self, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm as a per-row linear map: ``[..., d]`` float32 factors f with norm(x) = f * x."""
        gain = self.weight.float() + self.offset if self.weight is not None else 1.0
        return self.inverse_rms(x) * gain

    def split(self, total: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
        """RMSNorm of a sum distributed over its terms: ``parts`` ``[..., k, d]`` summing to
        ``total`` ``[..., d]`` -> ``[..., k, d]`` whose sum is ``self(total)``: each term times
        the factor the norm applies to the whole sum."""
        if self.kind != "rms":
            raise ValueError("Only an RMSNorm distributes over the terms of its input.")
        factor = self.rms_scale(total).unsqueeze(-2)
        return (parts.float() * factor).to(parts.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)


@dataclass
class Rotary:
    """Rotary embedding of the first ``cos.shape[-1]`` features of each head.

    ``angles(positions [P], dtype)`` gives ``(cos, sin)`` ``[P, rot]`` (from the model's own
    rotary module, so any scaling it implements is kept); ``pairs`` rotates adjacent feature
    pairs (GPT-J) instead of the two halves (GPT-NeoX, Llama)."""

    angles: Callable[[torch.Tensor, torch.dtype], tuple[torch.Tensor, torch.Tensor]]
    pairs: bool = False
    _tables: dict = field(default_factory=dict, repr=False)

    def table(self, length: int, dtype: torch.dtype, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` ``[T, rot]`` for positions ``0..T-1``, T >= length (computed once per
        dtype and device, and again only for longer inputs)."""
        key = (dtype, str(device))
        known = self._tables.get(key)
        if known is None or known[0].shape[0] < length:
            positions = torch.arange(-(-length // 64) * 64, device=device)
            known = self.angles(positions, dtype)
            self._tables[key] = known
        return known

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x ``[R, P, heads, E]`` at absolute ``positions`` ``[P]`` -> same shape."""
        cos, sin = self.table(int(positions.max()) + 1, x.dtype, x.device)
        cos, sin = cos[positions], sin[positions]
        rot = cos.shape[-1]
        cos, sin = cos[:, None, :], sin[:, None, :]
        turned, kept = x[..., :rot], x[..., rot:]
        rotate = _rotate_pairs if self.pairs else _rotate_half
        turned = turned * cos + rotate(turned) * sin
        return torch.cat([turned, kept], dim=-1) if kept.shape[-1] else turned


def _is_tensor_list(value, n_layers: int) -> bool:
    return (isinstance(value, list) and len(value) == n_layers
            and any(isinstance(v, torch.Tensor) for v in value))


class _Recast:
    """Saved-tensor hooks (:meth:`BlockAdapter.recasting`) under which autograd keeps, for the
    backward, not a float32 matrix cast from a :class:`CastOnRead` list (or a view of it) but
    the recipe to cast it again: a backward through every layer then holds one layer's float32
    matrices at a time, like the forward, instead of the whole model's."""

    def __init__(self):
        self.made: dict[int, tuple] = {}  # storage address -> (weakref to the cast, remake)

    def register(self, tensor: torch.Tensor, remake: Callable[[], torch.Tensor]) -> torch.Tensor:
        address = tensor.untyped_storage().data_ptr()
        if not address:  # empty or meta: nothing to save, and no address of its own
            return tensor

        def gone(ref, address=address):
            if self.made.get(address, (None,))[0] is ref:
                del self.made[address]

        self.made[address] = (weakref.ref(tensor, gone), remake)
        return tensor

    def pack(self, t: torch.Tensor):
        strided = t.layout == torch.strided and t.device.type != "meta" and t.numel() > 0
        entry = self.made.get(t.untyped_storage().data_ptr()) if strided else None
        if entry is None or entry[0]() is None:
            return t
        return (entry[1], t.size(), t.stride(), t.storage_offset())

    @staticmethod
    def unpack(packed):
        if isinstance(packed, tuple):
            remake, size, stride, offset = packed
            return remake().as_strided(size, stride, offset)
        return packed


_RECAST = _Recast()


class CastOnRead(list):
    """A per-layer list of the model's tensors read as ``dtype``: ``items[layer]`` is cast when
    read (None stays None). A half-precision model's float32 working copy is then one layer's
    matrices at a time, not the whole model's (2x its weights)."""

    def __init__(self, items, dtype: torch.dtype):
        super().__init__(items)
        self.dtype = dtype

    def __getitem__(self, index):
        value = super().__getitem__(index)
        if isinstance(index, slice):
            return [self._cast(v) for v in value]
        return self._cast(value)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _cast(self, value):
        if not isinstance(value, torch.Tensor):
            return value
        dtype = self.dtype
        return _RECAST.register(value.to(dtype=dtype), lambda: value.to(dtype=dtype))


@dataclass
class BlockAdapter:
    """One model's weights in the shared layout (see the module docstring) and the block's
    pieces as tensor functions. ``family`` names the reader that filled it."""

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_mlp: int
    W_Q: list[torch.Tensor]
    W_K: list[torch.Tensor]
    W_V: list[torch.Tensor]
    b_Q: list[torch.Tensor]
    b_K: list[torch.Tensor]
    b_V: list[torch.Tensor]
    W_O: list[torch.Tensor]
    b_O: list[torch.Tensor]
    W_in: list[torch.Tensor]
    b_in: list[torch.Tensor]
    W_gate: list[torch.Tensor] | None
    b_gate: list[torch.Tensor] | None
    W_out: list[torch.Tensor]
    b_out: list[torch.Tensor]
    act: Callable[[torch.Tensor], torch.Tensor]
    ln_attn: list[Norm | None]
    ln_mlp: list[Norm | None]
    ln_final: Norm
    W_U: torch.Tensor
    b_U: torch.Tensor
    scale: float
    first_layer: torch.nn.Module  # the Hugging Face module whose input is the embedding
    post_attn: list[Norm | None] = field(default_factory=list)
    post_mlp: list[Norm | None] = field(default_factory=list)
    q_norm: list[Norm | None] = field(default_factory=list)
    k_norm: list[Norm | None] = field(default_factory=list)
    qk_norm_per_head: bool = True  # False: the norm spans all heads' features (OLMo-2)
    rotary: list[Rotary | None] = field(default_factory=list)
    window: list[int | None] = field(default_factory=list)
    parallel: bool = False
    attn_softcap: float | None = None
    logit_softcap: float | None = None
    # Per layer, W_Q, W_K, W_V side by side as one [(H + 2K) E, d] matrix and their biases (made
    # on first use; a copy made by cast/place starts empty).
    _fused: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        L = self.n_layers
        for name in ("post_attn", "post_mlp", "q_norm", "k_norm", "rotary", "window"):
            if not getattr(self, name):
                setattr(self, name, [None] * L)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the adapter computes in (its weights')."""
        return self.W_U.dtype

    def cast(self, dtype: torch.dtype, on_read: bool = False) -> "BlockAdapter":
        """A copy whose weights and norms are in ``dtype`` (the model's own are untouched):
        the compute dtype of the fast forwards (float32 for a half-precision model).

        ``on_read``: the per-layer matrices stay the model's and are cast each time a layer
        reads them (:class:`CastOnRead`), so a float32 copy of one layer lives at a time rather
        than of the whole model; the norms, the unembedding and the rest are cast at once."""
        if not on_read:
            return self._map(lambda t, layer: t.to(dtype=dtype))
        lazy = {f.name: CastOnRead(getattr(self, f.name), dtype) for f in fields(self)
                if _is_tensor_list(getattr(self, f.name), self.n_layers)}
        eager = replace(self, **{name: [] for name in lazy}, _fused={})
        eager = eager._map(lambda t, layer: t.to(dtype=dtype))
        return replace(eager, **lazy, _fused={})

    def place(self, plan: list) -> "BlockAdapter":
        """A copy with layer ``l``'s weights on device ``plan[l]`` (the unembedding on the last
        layer's): :meth:`block` runs each layer where its weights are."""
        if len(plan) != self.n_layers:
            raise ValueError(f"A device plan needs one device per layer ({self.n_layers}), got {len(plan)}.")
        last = plan[-1]
        return self._map(lambda t, layer: t.to(device=plan[layer] if layer is not None else last))

    def _map(self, fn) -> "BlockAdapter":
        """A copy with ``fn(tensor, layer or None)`` applied to every weight and norm."""
        def one(value, layer):
            if isinstance(value, torch.Tensor):
                return fn(value, layer)
            if isinstance(value, Norm):
                return replace(value, **{k: None if getattr(value, k) is None else fn(getattr(value, k), layer)
                                         for k in ("weight", "bias")})
            return value

        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list) and len(value) == self.n_layers:
                changes[f.name] = [one(v, layer) for layer, v in enumerate(value)]
            elif isinstance(value, (torch.Tensor, Norm)):
                changes[f.name] = one(value, None)
        return replace(self, **changes, _fused={})

    def device_of(self, layer: int) -> torch.device:
        """Where layer ``layer``'s weights (and so its computation) are."""
        return self.W_Q[layer].device

    @property
    def fused_layers(self) -> int:
        """Layers whose q/k/v matrices side by side are kept (made on first use, when the
        adapter holds its weights rather than casting them as read)."""
        return len(self._fused)

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def has_post_norms(self) -> bool:
        return any(n is not None for n in self.post_attn + self.post_mlp)

    # -- attention ---------------------------------------------------------------------------
    def _project(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
                 norm: Norm | None) -> torch.Tensor:
        """x ``[R, P, d]`` (one input for all heads) or ``[R, P, heads, d]`` (one per head)
        -> ``[R, P, heads, E]``, with the query/key norm."""
        heads, E = W.shape[0], W.shape[2]
        if norm is None or self.qk_norm_per_head:
            spec = "rpd,hde->rphe" if x.dim() == 3 else "rphd,hde->rphe"
            out = torch.einsum(spec, x, W) + b
            return out if norm is None else norm(out)
        # The norm spans every head's features: a per-head input needs all heads' projections.
        flat = W.permute(1, 0, 2).reshape(W.shape[1], heads * E)
        if x.dim() == 3:
            return norm(x @ flat + b.flatten()).unflatten(-1, (heads, E))
        every = norm(torch.einsum("rphd,df->rphf", x, flat) + b.flatten())
        every = every.unflatten(-1, (heads, E))  # [R, P, input head, head, E]
        return torch.diagonal(every, dim1=2, dim2=3).movedim(-1, 2)

    def queries(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Normalised input ``[R, P, d]`` or ``[R, P, H, d]`` -> queries ``[R, P, H, E]``
        (before any rotary embedding)."""
        return self._project(x, self.W_Q[layer], self.b_Q[layer], self.q_norm[layer])

    def keys(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """``[R, P, d]`` or ``[R, P, K, d]`` -> ``[R, P, K, E]`` (before any rotary embedding)."""
        return self._project(x, self.W_K[layer], self.b_K[layer], self.k_norm[layer])

    def values(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """``[R, P, d]`` or ``[R, P, K, d]`` -> ``[R, P, K, E]``."""
        return self._project(x, self.W_V[layer], self.b_V[layer], None)

    def qkv(self, layer: int, x: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``[R, P, H, E]``, keys and values ``[R, P, K, E]`` (before rotary) from the
        stream entering the block ``[R, P, d]`` (before the pre-norm), or from one input copy
        per attention input slot ``[R, P, S, d]``: per key/value head g, its group's query
        inputs, then g's key and value input (``S = K (group + 2)``, the edge graph's slots)."""
        if x.dim() == 3:  # every input reads the same stream: normalise it once, one product
            return self._fused_qkv(layer, self.norm_in("attn", layer, x))
        R, P, _, d = x.shape
        group = self.group
        x = self.norm_in("attn", layer, x).reshape(R, P, self.n_kv_heads, group + 2, d)
        xq = x[:, :, :, :group].flatten(2, 3)  # [R, P, H, d]
        xk, xv = x[:, :, :, group], x[:, :, :, group + 1]  # [R, P, K, d] each
        return self.queries(layer, xq), self.keys(layer, xk), self.values(layer, xv)

    def recasting(self):
        """A context under which the backward keeps this adapter's cast-on-read matrices as
        recipes (see :class:`_Recast`); nothing for an adapter whose weights are all held."""
        if not isinstance(self.W_Q, CastOnRead):
            return contextlib.nullcontext()
        return torch.autograd.graph.saved_tensors_hooks(_RECAST.pack, _RECAST.unpack)

    def _fused_weights(self, layer: int) -> torch.Tensor:
        W = [w.permute(1, 0, 2).flatten(1) for w in (self.W_Q[layer], self.W_K[layer], self.W_V[layer])]
        return torch.cat(W, 1).T.contiguous()

    def _fused_qkv(self, layer: int, x: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`queries`, :meth:`keys` and :meth:`values` of one normalised input ``[R, P, d]``
        by one matrix product (the three projections' weights side by side)."""
        if layer not in self._fused:
            b = [bias.flatten() for bias in (self.b_Q[layer], self.b_K[layer], self.b_V[layer])]
            fused = (self._fused_weights(layer), torch.cat(b))
            if isinstance(self.W_Q, CastOnRead):  # kept, it would be a copy of every layer's
                W, b = _RECAST.register(fused[0], lambda: self._fused_weights(layer)), fused[1]
            else:
                self._fused[layer] = fused
        if layer in self._fused:
            W, b = self._fused[layer]
        H, K, E = self.n_heads, self.n_kv_heads, self.d_head
        q, k, v = F.linear(x, W, b).split([H * E, K * E, K * E], dim=-1)
        q, k = self._qk_norm(self.q_norm[layer], q, H), self._qk_norm(self.k_norm[layer], k, K)
        return q, k, v.unflatten(-1, (K, E))

    def _qk_norm(self, norm: Norm | None, x: torch.Tensor, heads: int) -> torch.Tensor:
        """Projections ``[..., heads * E]`` -> ``[..., heads, E]`` with the query/key norm (per
        head, or over every head's features)."""
        if norm is None:
            return x.unflatten(-1, (heads, -1))
        if self.qk_norm_per_head:
            return norm(x.unflatten(-1, (heads, -1)))
        return norm(x).unflatten(-1, (heads, -1))

    def rotate(self, layer: int, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Queries or keys ``[R, P, heads, E]`` at absolute ``positions`` ``[P]``."""
        rotary = self.rotary[layer]
        return x if rotary is None else rotary(x, positions)

    def _allowed(self, layer: int, q_pos: torch.Tensor, n_keys: int) -> torch.Tensor:
        """Causal (and sliding-window) mask ``[1, 1, Q, T]`` for ``q_pos`` ``[Q]``, or
        ``[R, 1, Q, T]`` for ``[R, Q]``: True where a query may read a key."""
        key_pos = torch.arange(n_keys, device=q_pos.device)
        qp = q_pos[..., :, None]
        allowed = key_pos <= qp
        if self.window[layer] is not None:
            allowed = allowed & (key_pos > qp - self.window[layer])
        return allowed[None, None] if q_pos.dim() == 1 else allowed[:, None]

    def attention_scores(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                         q_pos: torch.Tensor) -> torch.Tensor:
        """Masked attention scores ``[R, H, Q, T]`` (-inf where masked, soft-capped if the model
        caps them) of queries ``[R, H, Q, E]`` at ``q_pos`` over keys ``[R, H or K, T, E]``.
        Each key head is read by its group of query heads in one product, without a copy of the
        keys per query head."""
        R, H, Q, E = q.shape
        K, T = k.shape[1], k.shape[2]
        grouped = q.reshape(R, K, (H // K) * Q, E)  # query head h reads key head h // group
        scores = (grouped @ k.transpose(-1, -2)).view(R, H, Q, T)
        if self.attn_softcap is None:
            scores = scores * self.scale
        else:  # c tanh(s scale / c), the scale folded into one multiplication
            scores = torch.tanh(scores * (self.scale / self.attn_softcap)) * self.attn_softcap
        return scores.masked_fill(~self._allowed(layer, q_pos, T), float("-inf"))

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               q_pos: torch.Tensor) -> torch.Tensor:
        """Causal attention: ``q`` ``[R, H, Q, E]`` at absolute positions ``q_pos`` ``[Q]`` (or
        ``[R, Q]``), keys and values ``[R, K, T, E]`` at positions ``0..T-1`` -> z
        ``[R, Q, H, E]``. Applies the layer's sliding window and soft-capping (which SDPA
        cannot: those scores are computed per key head group, :meth:`attention_scores`)."""
        if self.attn_softcap is not None:
            pattern = torch.softmax(self.attention_scores(layer, q, k, q_pos), dim=-1)
            R, H, Q, T = pattern.shape
            K = v.shape[1]
            z = (pattern.view(R, K, (H // K) * Q, T) @ v).view(R, H, Q, v.shape[-1])
            return z.transpose(1, 2)
        if self.group > 1:
            k, v = k.repeat_interleave(self.group, dim=1), v.repeat_interleave(self.group, dim=1)
        allowed = self._allowed(layer, q_pos, k.shape[2])
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scale)
        return z.transpose(1, 2)

    def head_outputs(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """z ``[R, P, H, E]`` -> each head's write ``[R, P, H, d]`` (``z[h] @ W_O[h]``, before
        any post-norm)."""
        return torch.einsum("rphe,hed->rphd", z, self.W_O[layer])

    def attention_raw(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """z ``[..., H, E]`` -> the attention output ``[..., d]`` before any post-norm."""
        return torch.einsum("...he,hed->...d", z, self.W_O[layer]) + self.b_O[layer]

    # -- MLP ---------------------------------------------------------------------------------
    def mlp_hidden(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Normalised input ``[..., d]`` -> the neurons' activations ``[..., m]`` (what
        ``W_out`` reads: ``act(x W_gate) * (x W_in)`` for a gated MLP)."""
        # F.linear adds the bias inside the matrix product (one pass over the output fewer).
        up = F.linear(x, self.W_in[layer].T, self.b_in[layer])
        if self.W_gate is None:
            return self.act(up)
        return self.act(F.linear(x, self.W_gate[layer].T, self.b_gate[layer])) * up

    def mlp_raw(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Neuron activations ``[..., m]`` -> the MLP output ``[..., d]`` before any post-norm."""
        return F.linear(hidden, self.W_out[layer].T, self.b_out[layer])

    def branch_out(self, branch: str, layer: int, raw: torch.Tensor) -> torch.Tensor:
        """A branch's (``"attn"`` or ``"mlp"``) raw output ``[..., d]`` -> what it adds to the
        residual stream (after its post-norm, if any)."""
        norm = (self.post_attn if branch == "attn" else self.post_mlp)[layer]
        return raw if norm is None else norm(raw)

    def norm_in(self, branch: str, layer: int, x: torch.Tensor) -> torch.Tensor:
        norm = (self.ln_attn if branch == "attn" else self.ln_mlp)[layer]
        return x if norm is None else norm(x)

    # -- the end -----------------------------------------------------------------------------
    def final(self, resid: torch.Tensor, readout: Readout) -> torch.Tensor:
        """The final residual stream at the answer position ``[R, d]`` -> metric ``[R]``."""
        normed = self.ln_final(resid.to(self.W_U.device))
        return readout.from_final(normed, self.W_U, self.b_U, self.logit_softcap)

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        """Final residual stream ``[..., d]`` -> logits ``[..., V]`` (soft-capped if the model
        caps them)."""
        logits = self.ln_final(resid.to(self.W_U.device)) @ self.W_U + self.b_U
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits
