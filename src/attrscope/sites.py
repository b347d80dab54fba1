"""Any site at any positions, on the one forward (issue 23): the part of ``ap``, ``atp`` and
``ig`` that patches, differentiates and integrates a site (:mod:`attrscope.components`) at
chosen token positions.

A site's activation is a point of :mod:`attrscope.arch.forward`; here it is always seen in *unit
form* ``[R, P, units, *features]`` (a per-layer site, ``[R, P, d]``, gains a unit axis of 1).

Positions (the ``positions`` setting, :func:`attrscope.tasks.positions.select`):

- ``"all"``: one patch covers every position (today's scores, ``[n, layers, units]``);
- ``"each"``: every position on its own, ``[n, layers, units, seq]`` (prompts of one length);
- names (``["S2", "END"]``): each prompt patched at its own token of each name,
  ``[n, layers, units, len(names)]``.

Exact patching at one position ``p`` runs at the FLOP limit of a patch: a change at ``p`` changes
nothing at earlier positions or layers, so the patched run starts at ``Start(layer, "pre", p)``
from the run's cached stream, with the run's keys and values of positions ``< p`` as its prefix
(:class:`attrscope.arch.forward.Plan`), and computes only positions ``p .. answer``. Rows whose
named position is the same share a pass; a position whose source and run activations are equal
(before the first clean/corrupted difference) scores exactly 0 without a forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import arch
from .arch import forward
from .arch.forward import Hold
from .components import HEADS, ComponentKind
from .engine import Runner, chunks, copies_per_pass
from .quadrature import path_gradient_sum
from .tasks import positions as named_positions


def to_units(kind: ComponentKind, x: Tensor) -> Tensor:
    """A site's tensor ``[R, P, ...]`` in unit form ``[R, P, units, *features]``."""
    return x.unsqueeze(2) if kind.per_layer else x


def from_units(kind: ComponentKind, x: Tensor) -> Tensor:
    return x.squeeze(2) if kind.per_layer else x


def per_position(x: Float[Tensor, "R P units *f"]) -> Float[Tensor, "R P units"]:
    """Sum over the feature axes, keeping rows, positions and units."""
    return x.flatten(3).sum(-1) if x.dim() > 3 else x


class Patch:
    """An edit: at ``site`` ``(point, layer)``, the units where ``mask`` ``[R, P, units]`` is True
    take ``values`` ``[R, P, units, *features]`` (unit form, the computed positions); with
    ``mask`` None the whole tensor is ``values`` (differentiable in them)."""

    def __init__(self, kind: ComponentKind, site: tuple[str, int], mask: Tensor | None,
                 values: Tensor):
        self.kind, self.site, self.mask, self.values = kind, site, mask, values

    def hook_sites(self, n_layers: int) -> set[tuple[str, int]]:
        return {self.site}

    def spares_last_block(self, n_layers: int) -> bool:
        """True when the patch is before the last block: the forward may then compute only the
        answer's query there (:func:`attrscope.arch.forward.metric`)."""
        return self.site[1] < n_layers - 1

    def __call__(self, point: str, layer: int, x: Tensor) -> Tensor:
        if (point, layer) != self.site:
            return x
        values = self.values.to(device=x.device, dtype=x.dtype)
        if self.mask is None:
            return from_units(self.kind, values)
        units = to_units(self.kind, x)
        mask = self.mask.reshape(*self.mask.shape, *([1] * (units.dim() - 3))).to(x.device)
        return from_units(self.kind, torch.where(mask, values, units))


@dataclass
class Positions:
    """A resolved positions setting other than ``"all"``: ``index`` ``[n, n_pos]`` the absolute
    token of each prompt at each entry of the position axis, ``labels`` the axis' names (token
    indices for ``"each"``)."""

    setting: str | list[str]
    labels: list
    index: Tensor

    @property
    def n_pos(self) -> int:
        return len(self.labels)

    def take(self, x: Float[Tensor, "b P units"], rows: Tensor) -> Float[Tensor, "b units n_pos"]:
        """Each row's values at its own positions (``rows``: the rows' samples)."""
        index = self.index[rows.cpu()].to(x.device)
        return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2])).transpose(1, 2)


def resolve_positions(task, setting) -> Positions | None:
    """None for ``"all"``, else the :class:`Positions` of ``setting`` on ``task``; a
    PositionError (one line, naming the position or the lengths) before any computation."""
    chosen = named_positions.select(task, setting)
    if chosen == "all":
        return None
    if "each" in chosen:
        length = chosen["each"]
        return Positions("each", list(range(length)),
                         torch.arange(length).repeat(task.n, 1))
    names = list(chosen)
    index = torch.stack([chosen[name].cpu().long() for name in names], dim=1)
    return Positions(names, names, index)


def needs_sites_path(kind: ComponentKind, positions: Positions | None) -> bool:
    """Whether ``kind`` at ``positions`` is scored here (else by a method's own heads/neurons
    code, which gives today's scores bit for bit)."""
    return positions is not None or not kind.hooked


def require_adapter(runner: Runner, kinds: Sequence[ComponentKind]):
    """The verified suffix forward, or a ValueError naming the sites and why there is none."""
    if runner.fast is None:
        names = ", ".join(kind.name for kind in kinds)
        raise ValueError(f"{names} (or positions other than 'all') need the model's block "
                         f"adapter, which is unavailable: {runner.fast_unavailable}")
    return runner.fast


# -- activations ---------------------------------------------------------------------------------
# Points whose run values the suffix forward's block caches already hold (cache key; "v" is
# stored [R, K, P, E]); queries and keys are cached after the rotary embedding, so not these.
CACHED_POINTS = {"resid_pre": "pre", "z": "z", "attn_raw": "attn_raw", "hidden": "hidden",
                 "mlp_raw": "mlp_raw", "v": "v"}


def site_activations(runner: Runner, kinds: Sequence[ComponentKind], which: str
                     ) -> dict[tuple[str, int], Tensor]:
    """``{(kind name, layer): [n, seq, units, *features]}`` of the run or source prompts
    (``which``): the run's from the suffix forward's caches where they hold the site, else from
    one forward on the adapter (kept on the runner for its other methods)."""
    fast = require_adapter(runner, kinds)
    store = runner.site_cache.setdefault(which, {})
    missing = [k for k in kinds if (k.name, 0) not in store]
    L = runner.n_layers
    if which == "run" and runner.cache_device is None:
        for kind in [k for k in missing if k.point in CACHED_POINTS]:
            for layer in range(kind.n_layers(L)):
                if layer == L:
                    value = fast.final_resid
                else:
                    value = fast.caches[layer][CACHED_POINTS[kind.point]]
                    value = value.transpose(1, 2) if kind.point == "v" else value
                store[(kind.name, layer)] = to_units(kind, value)
            missing.remove(kind)
    if missing:
        tokens = runner.run_tokens if which == "run" else runner.source_tokens
        store.update(held_activations(runner, missing, tokens))
    return store


def held_activations(runner: Runner, kinds: Sequence[ComponentKind], tokens: Int[Tensor, "m seq"]
                     ) -> dict[tuple[str, int], Tensor]:
    """``{(kind name, layer): [m, seq, units, *features]}`` of any prompts ``tokens`` ``[m,
    seq]``, unpatched: one forward on the adapter holding every layer of ``kinds``."""
    fast, L = require_adapter(runner, kinds), runner.n_layers
    sites = {(k.name, layer): k.point_at(layer, L) for k in kinds for layer in range(k.n_layers(L))}
    hold = Hold(sites.values())
    with torch.no_grad():
        adapter = fast.adapter
        arch.full_forward(adapter, arch.embedding(runner.model, tokens, adapter), edits=[hold])
    by_name = {k.name: k for k in kinds}
    return {(name, layer): to_units(by_name[name], hold.held[site])
            for (name, layer), site in sites.items()}


def stream(runner: Runner, layer: int, rows: Tensor, start: int, end: int) -> Tensor:
    """The run's residual stream entering ``layer`` (the final stream for ``n_layers``) at
    ``rows`` and positions ``start..end-1``."""
    fast = runner.fast
    if layer < runner.n_layers:
        return fast.cached(layer, "pre", rows, start, end)
    return fast.final_resid[rows.to(fast.final_resid.device), start:end]


def patched_metric(runner: Runner, kind: ComponentKind, layer: int, rows: Tensor, start: int,
                   end: int, edit: Patch) -> Float[Tensor, " R"]:
    """The metric of ``rows`` run from ``Start(layer, "pre", start)`` over positions
    ``start..end-1`` with ``edit``, earlier positions' keys and values from the run's cache."""
    fast = runner.fast
    plan = forward.Plan(forward.Start(layer, "pre", start), edits=[edit],
                        prefix=fast.prefix(rows, start) if start else None)
    return forward.metric(fast.adapter, stream(runner, layer, rows, start, end), plan,
                          runner.task.answer_pos[rows], runner.task.readout(rows))


# -- ap ------------------------------------------------------------------------------------------
# Sites whose change is a change of the stream itself or of a branch output before any post-norm:
# a patched run of them starts from the patched stream where the change joins it, without edits.
ENTERS_STREAM = ("resid_pre", "final", "z", "hidden", "attn_raw", "mlp_raw")


def entered_metric(runner: Runner, kind: ComponentKind, layer: int, samples: Tensor,
                   chunk: Tensor, span: tuple[int, int], at: int | None,
                   acts: tuple[Tensor, Tensor]) -> Float[Tensor, " R"]:
    """The metric ``[len(chunk) * g]`` of ``samples`` with unit ``chunk[c]`` of copy c patched
    (at relative position ``at``, or over the whole ``span``): the run's stream plus the
    patch's change, from where it joins the stream (:meth:`SuffixForward.enter`; the stream
    entering ``layer`` for ``resid_pre``), run on without edits."""
    fast, (start, end) = runner.fast, span
    run, source = acts
    delta = (source[samples, start:end] - run[samples, start:end]).index_select(
        2, chunk.to(run.device))
    if at is not None:  # only position ``at`` changes
        keep = torch.zeros(end - start, dtype=delta.dtype, device=delta.device)
        keep[at] = 1
        delta = delta * keep.view(1, -1, *([1] * (delta.dim() - 2)))
    rows = samples.repeat(len(chunk))
    if kind.per_layer:  # one unit: the change itself, [g, S, d]
        change = delta[:, :, 0]
    else:  # heads, neurons: through the output weights, [c * g, S, d]
        change = kind.write(fast.adapter, layer, delta, chunk.to(delta.device)).flatten(0, 1)
    if kind.final_layer:
        resid, stage = stream(runner, layer, rows, start, end) + change.to(fast.adapter.device_of(
            min(layer, runner.n_layers - 1))), "pre"
        return fast.run(layer, stage, resid, rows, start, runner.task.answer_pos[rows],
                        runner.task.readout(rows))
    return metric_after_change(runner, kind, layer, rows, (start, end), change, at)


def metric_after_change(runner: Runner, kind: ComponentKind, layer: int, rows: Tensor,
                        span: tuple[int, int], change: Tensor, at: int | None
                        ) -> Float[Tensor, " R"]:
    """The metric of ``rows`` with ``kind``'s branch output of ``layer`` (before any
    post-norm) changed by ``change`` ``[R, S, d]`` at positions ``span``, only at relative
    position ``at`` when given."""
    fast, (start, end) = runner.fast, span
    resid, stage = fast.enter(kind, layer, change, rows, start)
    if stage == "mid" and at is not None:
        # Only position ``at`` changed, and the MLP works position by position: finish the
        # block there alone; the stream entering the next block is the run's elsewhere.
        left = forward.finish_block(fast.adapter, layer, resid[:, at:at + 1])
        resid = stream(runner, layer + 1, rows, start, end).clone()
        resid[:, at] = left[:, 0].to(resid)
        layer, stage = layer + 1, "pre"
    return fast.run(layer, stage, resid, rows, start, runner.task.answer_pos[rows],
                    runner.task.readout(rows))


def attention_metric(runner: Runner, kind: ComponentKind, layer: int, samples: Tensor,
                     chunk: Tensor, end: int, p: int, source: Tensor) -> Float[Tensor, " R"]:
    """The metric ``[len(chunk) * g]`` of ``samples`` with query head ``chunk[c]`` (``q``) or
    key/value head (``k``, ``v``) of copy c patched at position ``p`` alone, at the FLOP limit:
    the layer's attention is recomputed only where the patch reaches it - the query at p for a
    query, every query from p on of the key/value head's group for a key or value - from the
    run's cached (rotated) queries, keys and values; the change of the heads' outputs then
    enters the stream as a head patch does (:func:`metric_after_change`). ``source``: the
    site's source activations ``[n, seq, units, E]`` (before any rotary embedding)."""
    fast = runner.fast
    a = fast.adapter
    g, c = len(samples), len(chunk)
    rows = samples.repeat(c)
    which = chunk.to(rows.device).repeat_interleave(g)  # the patched unit of each row
    R, ar = len(rows), torch.arange(len(rows), device=rows.device)
    device = a.device_of(layer)
    position = torch.tensor([p], device=device)
    new = source[rows, p:p + 1].to(device)  # [R, 1, units, E]
    if kind.point in ("q", "k"):
        new = a.rotate(layer, new, position)
    last = p + 1 if kind.point == "q" else end  # the queries the patch reaches: p .. last - 1
    q = fast.cached(layer, "q", rows, p, last)  # [R, S, H, E], rotated
    k, v = fast.cached(layer, "k", rows, 0, last), fast.cached(layer, "v", rows, 0, last)
    if kind.point == "q":
        q = q.clone()
        q[ar, 0, which] = new[ar, 0, which]
        heads = torch.nn.functional.one_hot(which, a.n_heads).bool()  # [R, H]
    else:
        target = (k if kind.point == "k" else v).clone()
        target[ar, which, p] = new[ar, 0, which]
        k, v = (target, v) if kind.point == "k" else (k, target)
        heads = (torch.arange(a.n_heads, device=which.device)[None] // a.group) == which[:, None]
    z = a.attend(layer, q.transpose(1, 2), k, v, torch.arange(p, last, device=device))
    dz = (z - fast.cached(layer, "z", rows, p, last)) * heads[:, None, :, None].to(z)
    change = torch.zeros(R, end - p, a.d_model, dtype=z.dtype, device=z.device)
    change[:, :last - p] = torch.einsum("rphe,hed->rpd", dz, a.W_O[layer])
    return metric_after_change(runner, HEADS, layer, rows, (p, end), change,
                               0 if kind.point == "q" else None)


def ap_layer(runner: Runner, kind: ComponentKind, layer: int, units: Tensor,
             positions: Positions | None, settings: dict, tick: Callable[[], None]) -> Tensor:
    """Exact patching of ``units`` of one layer of ``kind``, one unit (at one position, or at
    every position for ``positions`` None) per patch: ``[n, n_units(, n_pos)]``, NaN for units
    not scored."""
    run = site_activations(runner, [kind], "run")[(kind.name, layer)]
    source = site_activations(runner, [kind], "source")[(kind.name, layer)]
    n, n_units = runner.n, run.shape[2]
    site = kind.point_at(layer, runner.n_layers)
    shape = (n, n_units) if positions is None else (n, n_units, positions.n_pos)
    scores = torch.full(shape, float("nan"))
    if not len(units):  # a per-layer ``units`` setting that names none of this layer
        return scores
    scores[:, units.cpu()] = 0.0
    answer = runner.task.answer_pos

    def patch(samples: Tensor, start: int, end: int, at: int | None) -> Tensor:
        """``[units, g]`` metric change, one unit per copy, at relative position ``at`` (None:
        every position ``start..end-1``)."""
        copies = copies_per_pass(runner.rows_per_pass(settings, layer, (start, end)), len(samples))
        out = []
        for chunk in chunks(units, copies):
            g, c = len(samples), len(chunk)
            rows = samples.repeat(c)
            if kind.point in ENTERS_STREAM or (at is not None and kind.point in ("q", "k", "v")):
                metric = (entered_metric(runner, kind, layer, samples, chunk, (start, end), at,
                                         (run, source)) if kind.point in ENTERS_STREAM else
                          attention_metric(runner, kind, layer, samples, chunk, end, start, source))
                out.append(metric.view(c, g) - runner.metric_run[samples].to(metric))
                tick()
                continue
            mask = torch.zeros(c * g, end - start, n_units, dtype=torch.bool, device=run.device)
            which = chunk.to(run.device).repeat_interleave(g)
            if at is None:
                mask[torch.arange(c * g, device=run.device), :, which] = True
            else:
                mask[torch.arange(c * g, device=run.device), at, which] = True
            edit = Patch(kind, site, mask, source[rows, start:end])
            metric = patched_metric(runner, kind, layer, rows, start, end, edit)
            out.append(metric.view(c, g) - runner.metric_run[samples].to(metric))
            tick()
        return torch.cat(out)

    with torch.no_grad():
        if positions is None:
            for samples in runner.sample_groups():
                start, end = runner.span(samples)
                scores[samples.cpu()[:, None], units.cpu()[None, :]] = \
                    patch(samples, start, end, None).T.float().cpu()
            return scores
        for j in range(positions.n_pos):
            at = positions.index[:, j]
            for p in torch.unique(at).tolist():
                # a patch after the answer cannot reach it; in the final stream (no block
                # after it) only the answer position itself reaches the metric
                reach = answer.cpu() == p if layer == runner.n_layers else answer.cpu() >= p
                samples = torch.nonzero((at == p) & reach).flatten()
                samples = samples.to(run.device)
                if not len(samples):
                    continue
                delta = (source[samples, p] - run[samples, p]).index_select(1, units)
                if not bool(delta.ne(0).any()):  # nothing changes at p: exactly 0
                    continue
                end = int(answer[samples].max()) + 1
                scores[samples.cpu()[:, None], units.cpu()[None, :], j] = \
                    patch(samples, p, end, 0).T.float().cpu()
    return scores


def ap_passes(runner: Runner, units: int, positions: Positions | None) -> int:
    """An upper bound on the passes of :func:`ap_layer` for one layer (for the progress bar)."""
    groups = len(runner.sample_groups()) if positions is None else positions.n_pos * runner.n
    return groups * units


# -- atp -----------------------------------------------------------------------------------------
def atp_sites(runner: Runner, kinds: Sequence[ComponentKind], positions: Positions | None,
              settings: dict, show_progress: bool) -> dict[str, Tensor]:
    """Gradient at the run x (source - run) at every site of ``kinds``, summed over features
    and over positions (``positions`` None) or taken at each position: ``{kind: [n, layers,
    units(, n_pos)]}``."""
    require_adapter(runner, kinds)
    L, n = runner.n_layers, runner.n
    source = site_activations(runner, kinds, "source")
    entries = [(kind, layer) for kind in kinds for layer in range(kind.n_layers(L))]
    values = {}
    for kind in kinds:
        shape = (n, kind.n_layers(L), source[(kind.name, 0)].shape[2])
        values[kind.name] = torch.empty(shape + (() if positions is None else (positions.n_pos,)))
    metric_run = torch.empty(n)
    for rows in runner.gradient_chunks(settings, f"atp {runner.direction}", show_progress):
        hold = Hold({kind.point_at(layer, L) for kind, layer in entries})
        with torch.enable_grad():
            metric = runner.metric_of(runner.run_tokens[rows], [hold], rows)
            sites = [kind.point_at(layer, L) for kind, layer in entries]
            grads = torch.autograd.grad(metric.sum(), [hold.held[s] for s in sites])
        metric_run[rows.cpu()] = metric.detach().float().cpu()
        for (kind, layer), site, grad in zip(entries, sites, grads):
            held = to_units(kind, hold.held[site].detach())
            delta = source[(kind.name, layer)][rows].to(grad) - held
            contribution = per_position(to_units(kind, grad) * delta)  # [b, P, units]
            reduced = (contribution.sum(1) if positions is None
                       else positions.take(contribution, rows))
            values[kind.name][rows.cpu(), layer] = reduced.float().cpu()
    runner.note_metric_run(metric_run.to(runner.run_tokens.device))
    return values


# -- ig ------------------------------------------------------------------------------------------
def ig_groups(runner: Runner, layer: int, baseline: str, settings: dict
              ) -> list[tuple[tuple[Tensor, tuple[int, int]], int]]:
    """``((samples, (start, end)), steps)`` per sample group of an ig layer: the positions its
    passes compute (from the group's first clean/corrupted difference, or 0 for the zero
    baseline, to its last answer; to the end of the prompts through hooks, whose forward
    replaces the whole activation) and the path steps per forward+backward pass from ``layer``
    on that the memory budget allows."""
    matched = baseline == "matched"
    if runner.fast is None:
        groups = [(torch.arange(runner.n, device=runner.run_tokens.device),
                   (runner.start if matched else 0, int(runner.run_tokens.shape[1])))]
    else:
        groups = [(g, (runner.span(g)[0] if matched else 0, runner.span(g)[1]))
                  for g in runner.sample_groups(from_start=matched)]
    return [((samples, span), copies_per_pass(
        runner.rows_per_pass(settings, layer, span, backward=True), len(samples)))
        for samples, span in groups]


def whole_span(groups: list[tuple[tuple[Tensor, tuple[int, int]], int]]
               ) -> tuple[Tensor, tuple[int, int]]:
    """Every sample of :func:`ig_groups`' groups (in order) and the positions that cover all of
    their spans."""
    samples = torch.sort(torch.cat([g for (g, _), _ in groups])).values
    return samples, (min(a for (_, (a, _)), _ in groups), max(b for (_, (_, b)), _ in groups))


def ig_layer(runner: Runner, kind: ComponentKind, layer: int, baseline: str,
             grid: tuple[Tensor, Tensor], positions: Positions | None, groups: list,
             tick) -> dict:
    """Integrated gradients of one layer of ``kind`` moved as a whole (see
    :mod:`attrscope.methods.integrated_gradients`), attributions per unit summed over positions
    or taken at each: ``{"attribution": [n, units(, n_pos)], "change": [n], "residual": [n]}``.
    ``grid``: the quadrature's ``(alphas, weights)``; ``groups``: the layer's
    :func:`ig_groups`."""
    alphas, weights = grid
    run = site_activations(runner, [kind], "run")[(kind.name, layer)]
    source = (site_activations(runner, [kind], "source")[(kind.name, layer)]
              if baseline == "matched" else None)
    seq, n = run.shape[1], runner.n
    site = kind.point_at(layer, runner.n_layers)
    contribution = torch.zeros(n, seq, run.shape[2], dtype=run.dtype, device=run.device)

    def metric(values: Tensor, samples: Tensor, span: tuple[int, int]) -> Tensor:
        rows = samples.repeat(values.shape[0] // len(samples))
        return patched_metric(runner, kind, layer, rows, *span, Patch(kind, site, None, values))

    def endpoints(samples: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
        part = run[samples, start:end]
        return ((part, source[samples, start:end]) if source is not None
                else (torch.zeros_like(part), part))

    for (samples, (start, end)), steps in groups:
        base, inp = endpoints(samples, start, end)
        delta = inp - base
        grad_sum = path_gradient_sum(base, delta, alphas, weights, steps,
                                     lambda values: metric(values, samples, (start, end)), tick)
        contribution[samples, start:end] = per_position(grad_sum * delta)
    # the other end of the path, for every group at once (see layer_attribution)
    samples, span = whole_span(groups)
    base, inp = endpoints(samples, *span)
    with torch.no_grad():
        run_metric = runner.metric_run[samples].to(run.device)
        change = ((metric(inp, samples, span) - run_metric) if source is not None
                  else (run_metric - metric(base, samples, span)))
    tick()
    samples = torch.arange(n, device=runner.run_tokens.device)
    attribution = (contribution.sum(1) if positions is None
                   else positions.take(contribution, samples))
    total = attribution.sum(-1) if positions is None else attribution.sum((1, 2))
    return {"attribution": attribution.float().cpu(), "change": change.float().cpu(),
            "residual": (total - change).float().cpu() if positions is None or
            positions.setting == "each" else torch.full((n,), float("nan"))}


__all__ = ["Patch", "Positions", "resolve_positions", "needs_sites_path", "site_activations",
           "held_activations", "ap_layer", "atp_sites", "ig_groups", "ig_layer", "whole_span", "to_units", "from_units"]
