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

There is no block loop here: an edge pass is a run of the one forward
(:mod:`attrscope.arch.forward`) with edits that give destinations their own input copies
(:class:`AddToInputs`, whose additions may be gradient probes), replace some sources'
contributions (:class:`EdgeAblation`), freeze a sublayer (:class:`Freeze`) or record the sources'
outputs and the streams (:class:`Outputs`, :class:`Streams`). Everything architecture-specific
comes from the model's block adapter (:mod:`attrscope.arch`); :func:`check_supported` refuses
other models with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .. import arch
from ..arch.forward import Plan, Start, metric as forward_metric, pick_answer
from ..tasks.metrics import Readout
from .graph import Graph


def check_supported(model) -> None:
    """Raise a ValueError naming what is unsupported unless edge methods support ``model``."""
    arch.adapter_for(model, arch.model_dtype(model))


@dataclass
class Additions:
    """What to add to destination inputs (``R`` rows, ``P`` positions).

    attn[layer]: ``[R, P, n_attn_dests, d_model]`` (the layer's q, k, v inputs in destination
    order, i.e. by slot: :meth:`Graph.attn_slot`), a :class:`SlotAdditions` (the same, given as
    the few non-zero slots of each row) or None;
    mlp[layer]: ``[R, P, d_model]`` or None; logits: ``[R, P, d_model]`` or None.
    """

    attn: list["Tensor | SlotAdditions | None"]
    mlp: list[Tensor | None]
    logits: Tensor | None = None

    @classmethod
    def none(cls, n_layers: int) -> "Additions":
        return cls([None] * n_layers, [None] * n_layers, None)

    @classmethod
    def probes(cls, graph: Graph, like: Float[Tensor, "R P d"]) -> "Additions":
        """Zero additions to every destination input that require grad: their gradients are
        the inputs' gradients (:meth:`EdgeForward.dense_grads`)."""
        R, P, d = like.shape

        def zeros(*shape):
            return torch.zeros(*shape, dtype=like.dtype, device=like.device, requires_grad=True)

        L = graph.n_layers
        return cls([zeros(R, P, graph.n_attn_dests, d) for _ in range(L)],
                   [zeros(R, P, d) for _ in range(L)], zeros(R, P, d))


@dataclass
class SlotAdditions:
    """Additions to a few attention input slots of one layer: for each ``(slot, rows, values)``
    of ``groups``, rows ``rows`` ``[m]`` add ``values`` ``[m, P, d]`` to input slot ``slot``
    (:meth:`Graph.attn_slot`; each slot at most once); every other input reads the stream.

    It means the dense ``[R, P, n_attn_dests, d]`` addition that is zero elsewhere
    (:meth:`dense`), but the forward computes the layer's queries, keys and values once from
    the shared stream and recomputes only each patched slot's projection for its rows
    (:class:`AddToInputs`): an exact edge pass patches one slot per row, and one copy of the
    stream per slot cost it about half its time (zero-fill, additions, norms, projections)."""

    groups: list[tuple[int, Tensor, Tensor]]

    def dense(self, n_rows: int, n_slots: int) -> Float[Tensor, "R P S d"]:
        """The same addition with one input copy per slot (the every-slot path)."""
        _, _, like = self.groups[0]
        out = like.new_zeros(n_rows, like.shape[1], n_slots, like.shape[2])
        for slot, rows, values in self.groups:
            out[rows.to(out.device), :, slot] += values
        return out

    def recompute(self, adapter, layer: int, which: str, stream: Float[Tensor, "R P d"],
                  x: Float[Tensor, "R P heads E"]) -> Float[Tensor, "R P heads E"]:
        """``x``, the ``which`` (``"q"``, ``"k"``, ``"v"``) projections of ``stream``, with each
        patched slot of that kind recomputed from its rows' stream plus addition."""
        out = None
        for slot, rows, values in self.groups:
            kind, head = slot_input(adapter.group, slot)
            if kind != which:
                continue
            rows = rows.to(x.device)
            normed = adapter.norm_in("attn", layer, stream[rows] + values.to(stream))
            if out is None:  # out of place: x may be needed by autograd
                out = x.clone()
            out[rows, :, head] = _one_head(adapter, layer, kind, head, normed).to(x.dtype)
        return x if out is None else out


def slot_input(group: int, slot: int) -> tuple[str, int]:
    """``("q", query head)``, ``("k", key/value head)`` or ``("v", key/value head)`` of
    attention input ``slot`` (per key/value head: its ``group`` queries, its key, its value)."""
    kv_head, offset = divmod(slot, group + 2)
    if offset < group:
        return "q", kv_head * group + offset
    return ("k" if offset == group else "v"), kv_head


def _one_head(adapter, layer: int, kind: str, head: int, normed: Float[Tensor, "m P d"]
              ) -> Float[Tensor, "m P E"]:
    """One head's query, key or value (before rotary) from a normalised input: what
    :meth:`attrscope.arch.BlockAdapter.qkv` gives that head from its own input copy."""
    a = adapter
    W, b, norms, every = {"q": (a.W_Q, a.b_Q, a.q_norm, a.queries),
                          "k": (a.W_K, a.b_K, a.k_norm, a.keys),
                          "v": (a.W_V, a.b_V, None, a.values)}[kind]
    norm = None if norms is None else norms[layer]
    if norm is not None and not a.qk_norm_per_head:  # the norm spans every head's features
        return every(layer, normed)[:, :, head]
    out = normed @ W[layer][head] + b[layer][head]
    return out if norm is None else norm(out)


class AddToInputs:
    """An edit giving destinations their own input copies: ``add`` is added to the inputs it
    names (attention inputs per slot, MLP inputs, the logits' input); every other input reads
    the stream. A layer's :class:`SlotAdditions` need the model's ``adapter``; they see the
    stream entering the attention as this edit receives it (edits placed after it there do not
    reach the patched slots)."""

    def __init__(self, add: Additions, adapter=None):
        self.add, self.adapter = add, adapter
        self._stream: Tensor | None = None  # entering the current layer, for its SlotAdditions

    def at_answer(self, n_layers: int, at: Int[Tensor, " R"]) -> "AddToInputs":
        """This edit for a run whose last block computes each row's answer query only
        (:func:`attrscope.arch.forward.metric`): the last MLP's and the logits' additions at the
        answer (their other positions reach no metric; a probe there keeps a zero gradient).
        Attention additions stay whole: the answer's query reads every position's key."""
        add, last = self.add, n_layers - 1
        mlp = list(add.mlp)
        if mlp[last] is not None:
            mlp[last] = pick_answer(mlp[last], at)
        logits = None if add.logits is None else pick_answer(add.logits, at)
        return AddToInputs(Additions(add.attn, mlp, logits), self.adapter)

    def __call__(self, point: str, layer: int, x: Tensor) -> Tensor:
        extra = None
        if point in ("attn_in", "q", "k", "v"):
            extra = self.add.attn[layer]
            if isinstance(extra, SlotAdditions):
                return self._slots(point, layer, extra, x)
            if point != "attn_in":
                return x
            if extra is not None and x.dim() == 3:
                x = x[:, :, None, :]
        elif point == "mlp_in":
            extra = self.add.mlp[layer]
        elif point == "final":
            extra = self.add.logits
        return x if extra is None else x + extra

    def _slots(self, point: str, layer: int, slots: SlotAdditions, x: Tensor) -> Tensor:
        if self.adapter is None:
            raise ValueError("SlotAdditions need the model's block adapter: "
                             "AddToInputs(add, adapter).")
        if point == "attn_in":
            self._stream = x
            return x
        out = slots.recompute(self.adapter, layer, point, self._stream, x)
        if point == "v":  # the layer's last projection: the edit keeps no stream past it
            self._stream = None
        return out


class Outputs:
    """An edit recording every source's output in the current forward, in source order: the
    input node's (the stream entering layer 0), each head's (``z[h] @ W_O[h]``, times the
    post-norm's factor if any: :meth:`attrscope.arch.Norm.split`) and each MLP's (without
    ``b_out`` when it joins the stream directly). Needs a run from layer 0."""

    def __init__(self, adapter):
        self.w = adapter
        self.outputs: list[Tensor] = []

    def __call__(self, point: str, layer: int, x: Tensor) -> Tensor:
        w = self.w
        if point == "attn_in" and layer == 0 and not self.outputs:
            self.outputs.append(x)
        elif point == "z":
            heads = w.head_outputs(layer, x)
            post = w.post_attn[layer]
            if post is not None:
                heads = post.split(heads.sum(2) + w.b_O[layer], heads)
            self.outputs += [*heads.unbind(2)]
        elif point == "mlp_out":
            self.outputs.append(x if w.post_mlp[layer] is not None else x - w.b_out[layer])
        return x

    def stacked(self) -> Float[Tensor, "R P n_sources d"]:
        return torch.stack(self.outputs, dim=2)


class Streams:
    """An edit recording the residual stream read at every stage, before any addition: entering
    layer l's attention (stage 2l), entering its MLP (2l + 1; the block's input in parallel
    blocks) and the final one (2 n_layers)."""

    def __init__(self):
        self.streams: list[Tensor] = []

    def __call__(self, point: str, layer: int, x: Tensor) -> Tensor:
        if point in ("attn_in", "mlp_in", "final"):
            self.streams.append(x)
        return x


@dataclass
class Freeze:
    """An edit making ``branch``'s (``"attn"`` or ``"mlp"``) whole output at ``layer`` enter the
    stream as a constant: its value in this forward plus ``shift`` ``[R, P, d]``, with no
    gradient back through it (EAP-IG's interpolation of one sublayer)."""

    branch: str
    layer: int
    shift: Tensor

    def at_answer(self, n_layers: int, at: Int[Tensor, " R"]) -> "Freeze":
        """This edit for a run whose last block computes each row's answer query only."""
        if self.layer < n_layers - 1:
            return self
        return Freeze(self.branch, self.layer, pick_answer(self.shift, at))

    def __call__(self, point: str, layer: int, x: Tensor) -> Tensor:
        if point != f"{self.branch}_out" or layer != self.layer:
            return x
        return x.detach() + self.shift


@dataclass
class EdgeAblation:
    """Edges whose source's contribution to the destination input is replaced by a fixed value.

    mask: ``[R, P or 1, n_dests, n_sources]`` 1 where edge (dest, source) is ablated at a
    position (a size-1 position axis: at every position), 0 elsewhere (and for pairs that are no
    edge); values: ``[R or 1, P, n_sources, d]`` what an ablated source contributes instead of
    its output. At position p the destination's input is changed by the sources ablated at p
    only (a source's output at p into the destination's input at p). Unlike :class:`Additions` (fixed differences), the
    replacement reads the source's output *in the current forward*: destination v's input is the
    current residual stream + sum over ablated u of (values[u] - current output of u), so v sees
    exactly ``values[u]`` from u whatever happened upstream of u. As an edit it reads the
    outputs recorded by ``outputs`` (placed before it in the plan).
    """

    mask: Tensor
    values: Tensor
    graph: Graph | None = None
    outputs: Outputs | None = None

    def extra(self, dests: slice, outputs: list[Tensor]) -> Float[Tensor, "R P dests d"]:
        """``[R, P, dests, d]`` what to add to the inputs ``dests``, given the current outputs
        ``[R, P, d]`` of the first ``len(outputs)`` sources (all those the inputs read)."""
        n_up = len(outputs)
        diff = self.values[:, :, :n_up] - torch.stack(outputs, dim=2)  # [R, P, n_up, d]
        # [R, P or 1, dests, n_up] @ [R, P, n_up, d]: a size-1 position axis broadcasts
        return self.mask[:, :, dests, :n_up].to(diff.dtype) @ diff

    def __call__(self, point: str, layer: int, x: Tensor) -> Tensor:
        g, outputs = self.graph, self.outputs.outputs
        if point == "attn_in":
            first = layer * g.dests_per_layer
            return x[:, :, None, :] + self.extra(slice(first, first + g.n_attn_dests), outputs)
        if point == "mlp_in":
            dest = g.mlp_dest(layer)
        elif point == "final":
            dest = g.logits_dest
        else:
            return x
        return x + self.extra(slice(dest, dest + 1), outputs)[:, :, 0]


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

    def metric(self, resid: Float[Tensor, "R P d"], answer_pos: Tensor, readout: Readout,
               plan: Plan | None = None) -> Float[Tensor, " R"]:
        """The task metric ``[R]`` at ``answer_pos`` (absolute) of ``resid``, the stream at
        ``plan.start`` (default: the input node's output, layer 0), run with ``plan``'s edits."""
        return forward_metric(self.w, resid, plan or Plan(), answer_pos, readout)

    def outputs(self, embed: Float[Tensor, "R P d"], answer_pos: Tensor, readout: Readout
                ) -> tuple[Tensor, Float[Tensor, "R P n_sources d"]]:
        """(metric ``[R]``, every source's output ``[R, P, n_sources, d]``) of the unedited run."""
        recorder = Outputs(self.w)
        metric = self.metric(embed, answer_pos, readout, Plan(edits=[recorder]))
        return metric, recorder.stacked()

    def streams(self, embed: Float[Tensor, "R P d"], answer_pos: Tensor, readout: Readout
                ) -> tuple[list[Tensor], list[dict]]:
        """(the streams read at every stage (:class:`Streams`), each block's cache with its keys
        and values ``[R, K, P, E]``) of the unedited run."""
        recorder, caches = Streams(), []
        self.metric(embed, answer_pos, readout, Plan(edits=[recorder], caches=caches))
        return recorder.streams, caches

    def probed(self, resid: Float[Tensor, "R P d"], answer_pos: Tensor, readout: Readout,
               plan: Plan | None = None) -> tuple[Tensor, Additions]:
        """(metric ``[R]``, probes): the run of :meth:`metric` with zero probes added to every
        destination input, after its backward: the probes' ``.grad`` are the inputs' gradients
        (None for inputs the metric does not reach)."""
        plan = plan or Plan()
        probes = Additions.probes(self.graph, resid)
        with torch.enable_grad():
            metric = self.metric(resid, answer_pos, readout,
                                 Plan(plan.start, [*plan.edits, AddToInputs(probes)], plan.prefix))
            metric.sum().backward()
        return metric.detach(), probes

    def ablated(self, embed: Float[Tensor, "R P d"], answer_pos: Tensor, readout: Readout,
                ablation: EdgeAblation) -> Float[Tensor, " R"]:
        """The metric ``[R]`` with ``ablation``'s edges ablated (a run from layer 0)."""
        outputs = Outputs(self.w)
        ablation.graph, ablation.outputs = self.graph, outputs
        return self.metric(embed, answer_pos, readout, Plan(edits=[outputs, ablation]))

    def patched(self, resid: Float[Tensor, "R P d"], answer_pos: Tensor, readout: Readout,
                add: Additions, start: Start = Start(), prefix=None) -> Float[Tensor, " R"]:
        """The metric ``[R]`` with ``add`` added to destination inputs, from ``resid`` at
        ``start`` (positions before ``start.position`` read ``prefix(layer)``'s keys and values,
        which ``add`` must leave unchanged)."""
        return self.metric(resid, answer_pos, readout,
                           Plan(start, [AddToInputs(add, self.w)], prefix))

    def dense_grads(self, probes: Additions) -> Tensor:
        """Gradients of the probes -> ``[R, P, n_dests, d]`` in destination order."""
        per_layer = []
        for layer in range(self.n_layers):
            per_layer += [probes.attn[layer].grad, probes.mlp[layer].grad[:, :, None]]
        return torch.cat(per_layer + [probes.logits.grad[:, :, None]], dim=2)
