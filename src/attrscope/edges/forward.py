"""A forward pass in which every destination input of the graph is a separate tensor.

In the model, every node input reads the same residual stream: the sum of the outputs of all
upstream sources plus constant biases (attention ``b_O``, MLP ``b_out``). This forward keeps that
sum but gives each destination its own copy of it, so that

- the gradient of the metric with respect to a destination's input is that input's own gradient
  (for queries, keys and values: the gradient with respect to the residual-stream copy *before*
  the attention's pre-norm, per head - per key/value head for keys and values under
  grouped-query attention; for an MLP: before its pre-norm; for the logits: before the final
  norm);
- an edge ``u -> v`` is patched by adding ``delta_u`` (u's output in the source prompt minus in
  the current run) to ``v``'s input copy only. Every other input keeps reading the current sum of
  upstream outputs, so the change propagates downstream through unpatched edges as usual (the
  convention of exact edge patching in EAP-IG and auto-circuit).

Head ``l.h``'s output is ``z[h] @ W_O[l, h]`` (without ``b_O``); in models whose attention output
passes a post-norm before joining the stream (Gemma-2/3, OLMo-2) it is that term times the factor
the RMSNorm applies to the whole attention output in the current forward, so the heads' outputs
still sum to what the attention adds (:meth:`attrscope.arch.Norm.split`). The input node's output
is what enters the first block (embeddings, learned positions, any embedding scale). In parallel
blocks (GPT-NeoX, GPT-J) the MLP reads the stream entering its block, so it reads no head of its
own layer. Biases are the same in both prompts and never patched.

Everything architecture-specific comes from the model's block adapter
(:mod:`attrscope.arch`); :func:`check_supported` refuses other models with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import arch
from ..tasks.metrics import Readout
from .graph import Graph


def check_supported(model) -> None:
    """Raise a ValueError naming what is unsupported unless edge methods support ``model``."""
    arch.adapter_for(model, arch.model_dtype(model))


@dataclass
class Additions:
    """What to add to destination inputs (``R`` rows, ``P`` positions).

    attn[layer]: ``[R, P, n_attn_dests, d_model]`` (the layer's q, k, v inputs in destination
    order, i.e. by slot: :meth:`Graph.attn_slot`) or None;
    mlp[layer]: ``[R, P, d_model]`` or None; logits: ``[R, P, d_model]`` or None.
    """

    attn: list[torch.Tensor | None]
    mlp: list[torch.Tensor | None]
    logits: torch.Tensor | None = None

    @classmethod
    def none(cls, n_layers: int) -> "Additions":
        return cls([None] * n_layers, [None] * n_layers, None)


@dataclass
class EdgeAblation:
    """Edges whose source's contribution to the destination input is replaced by a fixed value.

    mask: ``[R, n_dests, n_sources]`` 1 where edge (dest, source) is ablated, 0 elsewhere (and
    for pairs that are no edge); values: ``[R or 1, P, n_sources, d]`` what an ablated source
    contributes instead of its output. Unlike :class:`Additions` (fixed differences), the
    replacement reads the source's output *in the current forward*: destination v's input is the
    current residual stream + sum over ablated u of (values[u] - current output of u), so v sees
    exactly ``values[u]`` from u whatever happened upstream of u.
    """

    mask: torch.Tensor
    values: torch.Tensor

    def extra(self, dests: slice, outputs: list[torch.Tensor]) -> torch.Tensor:
        """``[R, P, dests, d]`` what to add to the inputs ``dests``, given the current outputs
        ``[R, P, d]`` of the first ``len(outputs)`` sources (all those the inputs read)."""
        n_up = len(outputs)
        diff = self.values[:, :, :n_up] - torch.stack(outputs, dim=2)  # [R, P, n_up, d]
        return torch.einsum("rvs,rpsd->rpvd", self.mask[:, dests, :n_up].to(diff.dtype), diff)


def _freeze(output: torch.Tensor, frozen, branch: str, layer: int) -> torch.Tensor:
    """``output`` ``[R, P, d]`` of ``branch`` at ``layer``; if ``frozen`` names it, that
    value detached plus the shift (see :meth:`EdgeForward.run`)."""
    if frozen is None or frozen[:2] != (branch, layer):
        return output
    return output.detach() + frozen[2]


class EdgeForward:
    """The model as tensor functions with one input copy per destination.

    Shapes: ``R`` rows (stacked copies x samples), ``P`` positions, ``d`` = d_model. It computes
    in the model's compute dtype (:func:`attrscope.arch.compute_dtype`: float32 for a
    half-precision model), on the adapter's float32 copy of the weights.
    """

    def __init__(self, model):
        self.model = model
        self.w = arch.adapter_for(model)
        w = self.w
        self.graph = Graph(w.n_layers, w.n_heads, w.n_kv_heads, parallel=w.parallel)
        self.n_layers, self.n_heads, self.d_head = w.n_layers, w.n_heads, w.d_head
        self.n_kv_heads = w.n_kv_heads

    def run(self, embed: torch.Tensor, answer_pos: torch.Tensor, readout: Readout,
            add: Additions | None = None,
            grad_probes: bool = False, keep_outputs: bool = False, start_layer: int = 0,
            keep_resid: bool = False, start_pos: int = 0,
            prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
            kv_out: list | None = None, ablate: EdgeAblation | None = None,
            frozen: tuple[str, int, torch.Tensor] | None = None):
        """The task metric ``[R]`` (as ``readout`` says) at ``answer_pos`` ``[R]``.

        embed: ``[R, P, d]`` the input node's output, or with ``start_layer`` > 0 the residual
        stream entering that layer (``n_layers``: the final one); additions to earlier layers are
        then ignored. Returns ``(metric, outputs, probes)``: outputs ``[R, P, n_sources, d]`` (if
        ``keep_outputs``, only from ``start_layer`` 0) in source order, or with ``keep_resid``
        the residual streams ``[R, P, d]`` read at each stage from ``start_layer`` on: entering
        layer l's attention (stage 2l), entering its MLP (2l + 1), and the final one (2L);
        probes: zero tensors added to every destination input, requiring grad (if
        ``grad_probes``), as an :class:`Additions` whose gradients are the input gradients.

        With ``start_pos`` > 0 only positions ``start_pos..`` are computed (``P`` counts them;
        ``answer_pos`` stays absolute): queries there attend to ``prefix_kv[layer]`` = (keys,
        values) ``[R, n_kv_heads, start_pos, d_head]`` (keys after any rotary embedding) of the
        earlier positions, which must be unchanged by whatever is added. ``kv_out``: a list to
        which (keys, values) ``[R, n_kv_heads, P, d_head]`` of each computed layer are
        appended. ``ablate``: edges whose source contribution is replaced (see
        :class:`EdgeAblation`); needs layer and position 0. ``frozen``: ``(branch, layer,
        shift)`` with branch ``"attn"`` or ``"mlp"``: that branch's whole output enters the
        stream as a constant, its value in this forward plus ``shift`` ``[R, P, d]``; the
        gradient does not flow back through it (EAP-IG's interpolation of one sublayer).
        """
        if keep_outputs and start_layer:
            raise ValueError("keep_outputs needs the forward to start at layer 0.")
        if ablate is not None and (start_layer or start_pos):
            raise ValueError("Edge ablation needs the forward to start at layer 0, position 0.")
        w, A = self.w, self.graph.n_attn_dests
        R, P, d = embed.shape
        add = add or Additions.none(self.n_layers)
        probes = Additions.none(self.n_layers)
        if grad_probes:
            zeros = lambda *shape: torch.zeros(*shape, dtype=embed.dtype, device=embed.device,
                                               requires_grad=True)
            probes = Additions([zeros(R, P, A, d) for _ in range(self.n_layers)],
                               [zeros(R, P, d) for _ in range(self.n_layers)], zeros(R, P, d))
        track = keep_outputs or ablate is not None
        outputs = [embed] if track else []
        per = self.graph.dests_per_layer
        resid = embed
        streams = []
        positions = start_pos + torch.arange(P, device=embed.device)
        for layer in range(start_layer, self.n_layers):
            streams.append(resid)
            extras = [e for e in (add.attn[layer], probes.attn[layer]) if e is not None]
            if ablate is not None:
                extras.append(ablate.extra(slice(layer * per, layer * per + A), outputs))
            q, k, v = self._qkv(layer, resid, extras)
            q, k = w.rotate(layer, q, positions), w.rotate(layer, k, positions)  # [R, P, heads, E]
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [R, heads, P, E]
            if kv_out is not None:
                kv_out.append((k, v))
            if start_pos:
                k = torch.cat([prefix_kv[layer][0], k], dim=2)
                v = torch.cat([prefix_kv[layer][1], v], dim=2)
            z = w.attend(layer, q, k, v, positions)
            heads, attn_rest = self._head_outputs(layer, z)  # [R, P, H, d], [.., d]
            attn_total = _freeze(heads.sum(2) + attn_rest, frozen, "attn", layer)
            if track:
                outputs += [*heads.unbind(2)]
            m = resid if w.parallel else resid + attn_total
            streams.append(m)
            if ablate is not None:
                m = m + ablate.extra(slice(layer * per + A, layer * per + A + 1), outputs)[:, :, 0]
            for extra in (add.mlp[layer], probes.mlp[layer]):
                if extra is not None:
                    m = m + extra
            mlp, mlp_rest = self._mlp_output(layer, m)
            if frozen is not None and frozen[:2] == ("mlp", layer):
                mlp, mlp_rest = _freeze(mlp + mlp_rest, frozen, "mlp", layer), 0
            resid = resid + attn_total + mlp + mlp_rest
            if track:
                outputs.append(mlp)
        streams.append(resid)
        final = resid
        if ablate is not None:
            final = final + ablate.extra(slice(self.graph.logits_dest, self.graph.logits_dest + 1),
                                         outputs)[:, :, 0]
        for extra in (add.logits, probes.logits):
            if extra is not None:
                final = final + extra
        at_answer = final[torch.arange(R, device=final.device), answer_pos - start_pos]
        metric = w.final(at_answer, readout)
        if keep_resid:
            return metric, streams, probes
        stacked = torch.stack(outputs, dim=2) if keep_outputs else None
        return metric, stacked, probes

    def _qkv(self, layer: int, resid: torch.Tensor, extras: list[torch.Tensor]):
        """Queries ``[R, P, H, E]``, keys and values ``[R, P, K, E]`` (before rotary) from the
        stream ``[R, P, d]`` plus ``extras`` ``[R, P, n_attn_dests, d]`` (one input copy per
        attention destination, in slot order; with none, every input reads the stream)."""
        w = self.w
        if not extras:  # every input reads the same stream: normalise it once
            x = w.norm_in("attn", layer, resid)
            return w.queries(layer, x), w.keys(layer, x), w.values(layer, x)
        x = resid[:, :, None, :]
        for extra in extras:
            x = x + extra
        R, P, _, d = x.shape
        group = self.n_heads // self.n_kv_heads
        # slots per key/value head g: its group's queries, then its key and value
        x = w.norm_in("attn", layer, x).reshape(R, P, self.n_kv_heads, group + 2, d)
        xq = x[:, :, :, :group].flatten(2, 3)  # [R, P, H, d]
        xk, xv = x[:, :, :, group], x[:, :, :, group + 1]  # [R, P, K, d] each
        return w.queries(layer, xq), w.keys(layer, xk), w.values(layer, xv)

    def _head_outputs(self, layer: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z ``[R, P, H, E]`` -> (each head's output ``[R, P, H, d]``, the rest of what the
        attention adds ``[R, P, d]`` or ``[d]``: its bias, after any post-norm)."""
        w = self.w
        heads = w.head_outputs(layer, z)
        post = w.post_attn[layer]
        if post is None:
            return heads, w.b_O[layer]
        raw = heads.sum(2) + w.b_O[layer]
        shares = post.split(raw, heads)
        return shares, post(raw) - shares.sum(2)

    def _mlp_output(self, layer: int, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLP's output ``[R, P, d]`` (its source node's output) from its input stream
        ``m``, and the rest it adds (``b_out``, or zero after a post-norm)."""
        w = self.w
        hidden = w.mlp_hidden(layer, w.norm_in("mlp", layer, m))
        if w.post_mlp[layer] is None:
            return hidden @ w.W_out[layer], w.b_out[layer]
        return w.branch_out("mlp", layer, w.mlp_raw(layer, hidden)), w.b_out[layer].new_zeros(())

    def dense_grads(self, probes: Additions) -> torch.Tensor:
        """Gradients of the probes -> ``[R, P, n_dests, d]`` in destination order."""
        per_layer = []
        for layer in range(self.n_layers):
            per_layer += [probes.attn[layer].grad, probes.mlp[layer].grad[:, :, None]]
        return torch.cat(per_layer + [probes.logits.grad[:, :, None]], dim=2)
