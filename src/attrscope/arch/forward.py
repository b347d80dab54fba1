"""The one forward: every fast computation in attrscope is a run through a block adapter's blocks,
described by data rather than by a function per use.

A run is a :class:`Plan` applied to a residual stream:

- **where it starts** (:class:`Start`): a layer, a stage in it (``"pre"``: entering the block,
  ``"mid"``: after its attention, in sequential blocks; ``"post"``: leaving it) and the absolute
  position of the stream's first row; the keys and values of earlier positions come from
  ``Plan.prefix`` (the unchanged run's cache), so a change that starts at position p recomputes
  only positions ``>= p`` of the layers after it;
- **what it edits** (``Plan.edits``): functions ``edit(point, layer, x) -> x`` called at every
  point of every computed block, in order (:class:`Replace`: some units of one site in some rows
  take given values; :class:`Hold`: keep the tensors at some sites, to read their values or
  gradients; the edge forward's per-destination input copies, :mod:`attrscope.edges.forward`);
- **what it reads**: ``Plan.caches`` receives each computed block's intermediates, ``Hold`` the
  tensors at chosen sites;
- **what it returns**: the final residual stream (:func:`final_stream`) or the task metric per
  row at each row's answer position (:func:`metric`).

The points of a block, in order (``R`` rows, ``P`` positions computed, ``d`` = d_model, ``H``
query heads, ``E`` = d_head, ``m`` = d_mlp):

- ``"resid_pre"`` ``[R, P, d]``: the stream entering the block (what flows on past it, too);
- ``"attn_in"`` ``[R, P, d]``: the stream entering the block, before the attention's pre-norm. An
  edit may return ``[R, P, S, d]``: one input copy per attention input slot (per key/value head
  its group's query inputs, then its key and value input; :meth:`BlockAdapter.qkv`);
- ``"q"`` ``[R, P, H, E]``, ``"k"``, ``"v"`` ``[R, P, K, E]``: queries, keys and values (after
  any query/key norm, before any rotary embedding; TransformerLens ``hook_q/k/v``);
- ``"z"`` ``[R, P, H, E]``: every head's output before ``W_O`` (TransformerLens ``hook_z``);
- ``"attn_raw"`` ``[R, P, d]``: the attention's output before any post-norm;
- ``"attn_out"`` ``[R, P, d]``: what the attention adds to the stream (after any post-norm);
- ``"mlp_in"`` ``[R, P, d]``: the stream the MLP reads, before its pre-norm;
- ``"hidden"`` ``[R, P, m]``: the neurons' activations (``mlp.hook_post``);
- ``"mlp_raw"`` ``[R, P, d]``: the MLP's output before any post-norm;
- ``"mlp_out"`` ``[R, P, d]``: what the MLP adds to the stream;
- ``"final"`` ``[R, P, d]`` (layer ``n_layers``): the final residual stream, before the final norm.

A :func:`metric` run computes only each row's answer query in the last block (its other
positions reach no metric; their keys and values, computed from ``"attn_in"``, are still read
by the answer's query), when every edit allows it: an edit with ``spares_last_block(n_layers)``
True edits only earlier blocks (:class:`attrscope.sites.Patch`); an edit with
``at_answer(n_layers, at)`` gives an equivalent edit for such a run (``at`` ``[R]``: each row's
answer index among the computed positions), whose last-block points from ``"z"`` on (and
``"final"``) see ``[R, 1, ...]`` (the edge forward's input copies and probes:
:mod:`attrscope.edges.forward`). Any other edit gets every position computed, so that it sees
whole tensors.

A model without an adapter runs through TransformerLens hooks instead (:func:`as_hooks` turns
the edits of a plan into hooks); :class:`attrscope.engine.Runner` decides which, once per run.

Positions and sub-layer sites (issue 23) fit the same data: a patch at some positions is a
:class:`Replace` whose mask also spans positions; a patch at position p of a layer-l site is a
run that starts at ``Start(l, stage, p)`` with the run's keys and values of positions ``< p`` as
``prefix`` (one start per plan: rows whose named positions differ start at the earliest); a
sub-layer site (q, k, v inputs, ``attn_out``, ``mlp_out``, the stream) is one of the points
above.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .core import BlockAdapter

if TYPE_CHECKING:  # the forward sits below the tasks: it only calls what a readout offers
    from ..tasks.metrics import Readout

STAGES = ("pre", "mid", "post")
POINTS = ("resid_pre", "attn_in", "q", "k", "v", "z", "attn_raw", "attn_out", "mlp_in", "hidden",
          "mlp_raw", "mlp_out", "final")
# TransformerLens hook point of each point a fallback run can edit (layer l).
HOOK_NAMES = {"z": "blocks.{layer}.attn.hook_z", "hidden": "blocks.{layer}.mlp.hook_post",
              "attn_out": "blocks.{layer}.hook_attn_out", "mlp_out": "blocks.{layer}.hook_mlp_out"}
# The point of a component kind's activation, by the branch it belongs to.
BRANCH_POINT = {"attn": "z", "mlp": "hidden"}
# The name every result records for a computation on the block adapter, and for the fallback.
ENGINE = "suffix_forward"
FALLBACK_ENGINE = "transformer_lens_hooks"


@dataclass(frozen=True)
class Start:
    """Where a run starts: the stream is at ``stage`` of ``layer`` (``layer == n_layers`` with
    ``"pre"``: the final stream), and its first row is absolute position ``position``."""

    layer: int = 0
    stage: str = "pre"
    position: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")


class Edit(Protocol):
    """``edit(point, layer, x) -> x``: called at every point of every computed block; the tensor
    it returns is used from there on (return ``x`` to leave the point alone). ``hook_sites``:
    the ``(point, layer)`` pairs it may change, for a run through TransformerLens hooks."""

    def __call__(self, point: str, layer: int, x: Tensor) -> Tensor: ...

    def hook_sites(self, n_layers: int) -> set[tuple[str, int]]: ...


@dataclass
class Plan:
    """A run: where it starts, what it edits, what it records.

    prefix: ``prefix(layer) -> (keys, values)`` ``[R, K, start.position, E]`` (keys after any
    rotary embedding) of the positions before the start; needed when ``start.position > 0``.
    caches: a list that receives one dict per computed block: ``pre`` (the stream entering it),
    ``q`` ``[R, P, H, E]``, ``k``, ``v`` ``[R, K, P, E]`` (rotated, computed positions only),
    ``z``, ``attn_raw`` / ``mlp_raw`` (branch outputs before any post-norm), ``mid``, ``hidden``.
    """

    start: Start = field(default_factory=Start)
    edits: Sequence[Edit] = ()
    prefix: Callable[[int], tuple[Tensor, Tensor]] | None = None
    caches: list[dict] | None = None


def final_stream(adapter: BlockAdapter, resid: Float[Tensor, "R P d"], plan: Plan
                 ) -> Float[Tensor, "R P d"]:
    """The final residual stream (after the ``"final"`` edits) of ``resid`` run from
    ``plan.start`` through the remaining blocks."""
    return _walk(adapter, resid, plan, None)[0]


def metric(adapter: BlockAdapter, resid: Float[Tensor, "R P d"], plan: Plan,
           answer_pos: Int[Tensor, " R"], readout: Readout) -> Float[Tensor, " R"]:
    """The task metric per row at ``answer_pos`` (absolute positions) of ``resid`` run from
    ``plan.start``."""
    final, at = _walk(adapter, resid, plan, answer_pos)
    picked = final[torch.arange(final.shape[0], device=final.device), at.to(final.device)]
    return adapter.final(picked, readout)


def _walk(adapter: BlockAdapter, resid: Tensor, plan: Plan, answer_pos: Tensor | None
          ) -> tuple[Tensor, Tensor | None]:
    """(final stream ``[R, P', d]``, each row's answer index into its P' positions or None)."""
    with adapter.recasting():
        return _walk_blocks(adapter, resid, plan, answer_pos)


def _walk_blocks(adapter: BlockAdapter, resid: Tensor, plan: Plan, answer_pos: Tensor | None
                 ) -> tuple[Tensor, Tensor | None]:
    L, start = adapter.n_layers, plan.start
    positions = torch.arange(start.position, start.position + resid.shape[1], device=resid.device)
    at = None if answer_pos is None else (answer_pos - start.position).to(resid.device)
    first = start.layer if start.stage == "pre" else start.layer + 1
    # only the answer queries reach the metric, if every edit allows computing only them
    computes_last = first < L or (start.stage == "mid" and start.layer == L - 1)
    edits = _answer_only(plan.edits, L, at) if at is not None and computes_last else None
    narrow = edits is not None
    if narrow:
        plan = replace(plan, edits=edits)
    if start.stage == "mid":
        if narrow and start.layer == L - 1:
            resid, at = pick_answer(resid, at), torch.zeros_like(at)
        resid = _mlp_half(adapter, start.layer, resid, resid, plan)
    for layer in range(first, L):
        query_at = at if narrow and layer == L - 1 else None
        resid = _block(adapter, layer, resid, positions, query_at, plan)
        if query_at is not None:
            at = torch.zeros_like(at)
    return _edited(plan.edits, "final", L, resid), at


def _answer_only(edits: Sequence[Edit], n_layers: int, at: Tensor) -> list[Edit] | None:
    """The edits of a run whose last block computes each row's answer query only (``at``
    ``[R]``), or None if one of them needs every position there."""
    out = []
    for edit in edits:
        if getattr(edit, "spares_last_block", lambda n: False)(n_layers):
            out.append(edit)
        elif hasattr(edit, "at_answer"):
            out.append(edit.at_answer(n_layers, at))
        else:
            return None
    return out


def pick_answer(x: Float[Tensor, "R P *f"], at: Int[Tensor, " R"]) -> Float[Tensor, "R 1 *f"]:
    """Each row's answer position of ``x`` (``at``: its index), keeping a position axis: what
    an answer-only run's last block computes (:func:`metric`)."""
    return _pick(x, at)[:, None]


def _pick(x: Tensor, at: Tensor) -> Tensor:
    return x[torch.arange(x.shape[0], device=x.device), at.to(x.device)]


def _edited(edits: Sequence[Edit], point: str, layer: int, x: Tensor) -> Tensor:
    for edit in edits:
        x = edit(point, layer, x)
    return x


def _block(a: BlockAdapter, layer: int, resid: Tensor, positions: Tensor,
           query_at: Tensor | None, plan: Plan) -> Tensor:
    """The stream ``[R, P, d]`` through block ``layer`` (``[R, 1, d]`` with ``query_at`` ``[R]``:
    only those queries). Runs on the device of the layer's weights."""
    device = a.device_of(layer)
    resid, positions = resid.to(device), positions.to(device)
    resid = _edited(plan.edits, "resid_pre", layer, resid)
    cache = None
    if plan.caches is not None:
        cache = {"pre": resid}
        plan.caches.append(cache)
    q, k, v = a.qkv(layer, _edited(plan.edits, "attn_in", layer, resid))
    if plan.edits:
        q, k, v = (_edited(plan.edits, point, layer, x) for point, x in zip("qkv", (q, k, v)))
    q, k = a.rotate(layer, q, positions), a.rotate(layer, k, positions)
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    if cache is not None:
        cache.update(q=q, k=k, v=v)
    if plan.start.position:
        prefix_k, prefix_v = plan.prefix(layer)
        k, v = torch.cat([prefix_k.to(device), k], dim=2), torch.cat([prefix_v.to(device), v], dim=2)
    q_pos = positions
    if query_at is not None:
        q, resid = _pick(q, query_at)[:, None], _pick(resid, query_at)[:, None]
        q_pos = positions[query_at.to(device)][:, None]
    z = _edited(plan.edits, "z", layer, a.attend(layer, q.transpose(1, 2), k, v, q_pos))
    attn_raw = _edited(plan.edits, "attn_raw", layer, a.attention_raw(layer, z))
    mid = resid + _edited(plan.edits, "attn_out", layer, a.branch_out("attn", layer, attn_raw))
    if cache is not None:
        cache.update(z=z, attn_raw=attn_raw, mid=None if a.parallel else mid)
    return _mlp_half(a, layer, resid, mid, plan, cache)


def _mlp_half(a: BlockAdapter, layer: int, resid: Tensor, mid: Tensor, plan: Plan,
              cache: dict | None = None) -> Tensor:
    """The block's end from ``mid`` (the stream with the attention's output added): the MLP
    reads ``mid`` (``resid``, the stream entering the block, in parallel blocks)."""
    x = _edited(plan.edits, "mlp_in", layer, resid if a.parallel else mid)
    hidden = _edited(plan.edits, "hidden", layer, a.mlp_hidden(layer, a.norm_in("mlp", layer, x)))
    mlp_raw = _edited(plan.edits, "mlp_raw", layer, a.mlp_raw(layer, hidden))
    if cache is not None:
        cache.update(hidden=hidden, mlp_raw=mlp_raw)
    return mid + _edited(plan.edits, "mlp_out", layer, a.branch_out("mlp", layer, mlp_raw))


def finish_block(adapter: BlockAdapter, layer: int, mid: Float[Tensor, "R P d"]
                 ) -> Float[Tensor, "R P d"]:
    """The stream leaving sequential block ``layer`` from ``mid`` (the stream with its
    attention's output added), without edits: the MLP half alone, for positions whose change
    starts mid-block (a per-position patch of a head or attention output)."""
    return _mlp_half(adapter, layer, mid, mid, Plan())


def full_forward(adapter: BlockAdapter, embed: Float[Tensor, "n seq d"],
                 caches: list[dict] | None = None, edits: Sequence[Edit] = ()
                 ) -> Float[Tensor, "n seq d"]:
    """The final residual stream from the embedding through every block; ``caches`` receives
    each block's cache (see :class:`Plan`)."""
    return final_stream(adapter, embed, Plan(edits=edits, caches=caches))


# -- edits as data -----------------------------------------------------------------------------
class Hold:
    """Keeps the tensor at each ``(point, layer)`` of ``sites`` in ``held`` as the run computes
    on it, so that its value and its gradient (of anything computed from the run) can be read."""

    def __init__(self, sites: Iterable[tuple[str, int]]):
        self.sites = set(sites)
        self.held: dict[tuple[str, int], Tensor] = {}

    def hook_sites(self, n_layers: int) -> set[tuple[str, int]]:
        return self.sites

    def __call__(self, point: str, layer: int, x: Tensor) -> Tensor:
        if (point, layer) in self.sites:
            self.held[(point, layer)] = x
        return x


@dataclass
class Replace:
    """A patch: at ``site`` ``(point, layer)``, in row r, the units where ``mask[r]`` is True
    take ``values`` (every position; ``values`` ``[R or 1, pos >= P, units, *features]``)."""

    site: tuple[str, int]
    mask: Bool[Tensor, "R units"]
    values: Tensor

    def hook_sites(self, n_layers: int) -> set[tuple[str, int]]:
        return {self.site}

    def __call__(self, point: str, layer: int, x: Tensor) -> Tensor:
        if (point, layer) != self.site:
            return x
        m = self.mask.reshape(self.mask.shape[0], 1, self.mask.shape[1], *([1] * (x.dim() - 3)))
        return torch.where(m.to(x.device), self.values[:, :x.shape[1]].to(x), x)


def as_hooks(edits: Sequence[Edit], n_layers: int) -> list[tuple[str, Callable]]:
    """The edits of a plan as TransformerLens forward hooks (the fallback for a model without an
    adapter): every point they may edit that the model has a hook for (``HOOK_NAMES``)."""
    hooks = []
    for edit in edits:
        for point, layer in sorted(edit.hook_sites(n_layers)):
            hooks.append((HOOK_NAMES[point].format(layer=layer), _hook(edit, point, layer)))
    return hooks


def _hook(edit: Edit, point: str, layer: int):
    def hook(act: Tensor, hook=None) -> Tensor:
        return edit(point, layer, act)

    return hook
