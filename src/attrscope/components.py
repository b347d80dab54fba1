"""Component kinds: which activation a score is about, where it is hooked, how it is named.

Every kind hooks one TransformerLens activation whose axis 2 indexes the kind's units, so the
same code patches, differentiates and reduces heads and neurons:

- ``heads``: ``blocks.{layer}.attn.hook_z``, shape ``[batch, pos, n_heads, d_head]``. Patching a
  head's ``z`` is patching its output, because the head's output is ``z @ W_O[head]``, a linear
  map; gradient x difference and integrated gradients are unchanged by that map too.
- ``neurons``: ``blocks.{layer}.mlp.hook_post`` (post-activation), shape ``[batch, pos, d_mlp]``.

Sites (issue 23) besides them, each a point of the one forward (:mod:`attrscope.arch.forward`)
whose change enters the stream there:

- ``resid_pre``: the residual stream entering block ``layer`` (one unit per layer); layer
  ``n_layers`` is the final stream (before the final norm), so it has ``n_layers + 1`` layers;
- ``attn_out`` / ``mlp_out``: a layer's whole attention / MLP output before any post-norm joins
  the stream (one unit per layer; the output projection's bias included);
- ``q``: each query head's query vector; ``k`` / ``v``: each key/value head's key / value vector
  (``kv_head`` units: under grouped-query attention one key/value head serves several query
  heads) - after any query/key norm, before any rotary embedding (TransformerLens ``hook_q``,
  ``hook_k``, ``hook_v``).

Heads and neurons run through the model's TransformerLens hooks when it has no block adapter;
the sites need the adapter (:attr:`ComponentKind.hooked`).

Users see heads as ``L.H`` and neurons as ``L.N`` (layer, then index), as in the IOI literature;
a score at one token position adds ``@P``, the position's name or index (``3.1@S2``, ``5@END``
for a site with one unit per layer, ``3.1@7``): :func:`format_label`, :func:`parse_label`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import torch

UNIT_AXIS = 2


@dataclass(frozen=True)
class ComponentKind:
    """A kind of component. ``branch`` says, once for every caller, how a patch of it enters
    the residual stream: through the attention output (``z @ W_O``, heads) or the MLP output
    (``post @ W_out``, neurons), before that branch's post-norm if the model has one."""

    name: str
    hook_template: str
    unit: str
    config_size_field: str
    branch: str
    # The point of the one forward the kind's activation is (arch.forward.POINTS).
    point: str = ""
    # resid_pre: one more layer, the final stream (layer n_layers, point "final").
    final_layer: bool = False

    @property
    def hooked(self) -> bool:
        """True for the kinds a model without a block adapter can score (through its
        TransformerLens hooks): heads and neurons."""
        return self.point in ("z", "hidden")

    @property
    def per_layer(self) -> bool:
        """One unit per layer (resid_pre, attn_out, mlp_out): labels ``L`` / ``L@P``."""
        return not self.config_size_field

    def n_layers(self, n_layers: int) -> int:
        """Layers of the kind's scores in a model of ``n_layers`` blocks."""
        return n_layers + 1 if self.final_layer else n_layers

    def point_at(self, layer: int, n_layers: int) -> tuple[str, int]:
        """The ``(point, layer)`` of the forward where layer ``layer`` of the kind is."""
        return ("final", n_layers) if self.final_layer and layer == n_layers else (self.point, layer)

    def hook_name(self, layer: int) -> str:
        return self.hook_template.format(layer=layer)

    def n_units(self, cfg) -> int:
        if not self.config_size_field:
            return 1
        if self.config_size_field == "n_key_value_heads":
            return int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
        return int(getattr(cfg, self.config_size_field))

    @staticmethod
    def label(layer: int, unit: int, position: str | int | None = None) -> str:
        return format_label(layer, unit, position)

    def unit_label(self, layer: int, unit: int, position: str | int | None = None) -> str:
        """The label of one of this kind's units: ``L`` / ``L@P`` for a per-layer site."""
        return format_label(layer, None if self.per_layer else unit, position)

    def _write_weights(self, adapter, layer: int) -> torch.Tensor:
        """``[units, features, d_model]``: how each unit's activation is written."""
        if self.branch == "attn":
            return adapter.W_O[layer]
        return adapter.W_out[layer].unsqueeze(1)

    def write(self, adapter, layer: int, delta: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """The change of the branch output (before any post-norm) when unit ``units[c]`` alone
        changes by ``delta[..., c, *features]``: delta ``[g, S, c, *features]`` -> ``[c, g, S, d]``."""
        weights = self._write_weights(adapter, layer).index_select(0, units)
        delta = delta if self.branch == "attn" else delta.unsqueeze(-1)
        return torch.einsum("gscf,cfd->cgsd", delta, weights)

    def raw_output(self, adapter, layer: int, activation: torch.Tensor) -> torch.Tensor:
        """The branch output before any post-norm from the kind's whole activation ``[R, S,
        units, *features]`` -> ``[R, S, d]``."""
        if self.branch == "attn":
            return adapter.attention_raw(layer, activation)
        return adapter.mlp_raw(layer, activation)


_LABEL = re.compile(r"^(\d+)(?:\.(\d+))?(?:@([A-Za-z][A-Za-z0-9_+\-]*|\d+))?$")


class Label(NamedTuple):
    """A parsed label: ``unit`` None for a site with one unit per layer, ``position`` None for
    a score over all positions, else a position name (``"S2"``) or index (``7``)."""

    layer: int
    unit: int | None
    position: str | int | None


def format_label(layer: int, unit: int | None = None, position: str | int | None = None) -> str:
    """``L.U``, ``L.U@P`` or, for a site with one unit per layer (``unit=None``), ``L`` /
    ``L@P``; P is a named position (``S2``, ``END``) or a token index."""
    text = str(int(layer)) if unit is None else f"{int(layer)}.{int(unit)}"
    return text if position is None else f"{text}@{position}"


def parse_label(text: str) -> Label:
    """The inverse of :func:`format_label`; a ValueError naming ``text`` if it is not a label."""
    match = _LABEL.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a component label: write LAYER.UNIT (3.1), "
                         "LAYER.UNIT@POSITION (3.1@S2, 3.1@7) or LAYER@POSITION (5@END).")
    layer, unit, position = match.groups()
    if position is not None and position.isdigit():
        position = int(position)
    return Label(int(layer), None if unit is None else int(unit), position)


HEADS = ComponentKind("heads", "blocks.{layer}.attn.hook_z", "head", "n_heads", "attn", "z")
NEURONS = ComponentKind("neurons", "blocks.{layer}.mlp.hook_post", "neuron", "d_mlp", "mlp", "hidden")
RESID_PRE = ComponentKind("resid_pre", "blocks.{layer}.hook_resid_pre", "stream", "", "resid",
                          "resid_pre", final_layer=True)
ATTN_OUT = ComponentKind("attn_out", "blocks.{layer}.attn_raw", "attention output", "", "attn",
                         "attn_raw")
MLP_OUT = ComponentKind("mlp_out", "blocks.{layer}.mlp_raw", "MLP output", "", "mlp", "mlp_raw")
Q = ComponentKind("q", "blocks.{layer}.attn.hook_q", "head", "n_heads", "attn", "q")
K = ComponentKind("k", "blocks.{layer}.attn.hook_k", "kv_head", "n_key_value_heads", "attn", "k")
V = ComponentKind("v", "blocks.{layer}.attn.hook_v", "kv_head", "n_key_value_heads", "attn", "v")
KINDS: dict[str, ComponentKind] = {kind.name: kind for kind in
                                   (HEADS, NEURONS, RESID_PRE, ATTN_OUT, MLP_OUT, Q, K, V)}
# Heads and neurons: the kinds a method without sites (atpstar) scores, over all positions.
CIRCUIT_KINDS: dict[str, ComponentKind] = {kind.name: kind for kind in (HEADS, NEURONS)}


@dataclass(frozen=True, order=True)
class Component:
    """One unit of a kind: ``kind`` (the kind's name, e.g. "heads"; a :class:`ComponentKind` is
    taken too), ``layer``, ``unit``; printed ``L.U``. The one component type of every analysis
    (ablation, verification, paths, counterfactual search). ``position`` (None: every position)
    makes it a (unit, position) cell of a position-resolved result, printed ``L.U@P``: a
    position name (``"S2"``) or a token index."""

    kind: str
    layer: int
    unit: int
    position: str | int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.kind, ComponentKind):
            object.__setattr__(self, "kind", self.kind.name)

    @property
    def spec(self) -> ComponentKind:
        """The kind itself (its hook, unit name and branch)."""
        return KINDS[self.kind]

    @property
    def label(self) -> str:
        """``L.U`` (``L`` for a site with one unit per layer), with ``@P`` at a position."""
        return self.spec.unit_label(self.layer, self.unit, self.position)

    def __str__(self) -> str:
        return f"{self.spec.unit} {self.label}"


def parse_component(label: str, kind: str | ComponentKind, cfg) -> Component:
    """``"1.2"`` -> head 2 of layer 1 (or neuron, ... with another ``kind``), checked against
    the model config ``cfg``; a bad label raises ``ValueError`` naming the valid range."""
    name = kind.name if isinstance(kind, ComponentKind) else kind
    if name not in KINDS:
        raise ValueError(f"Unknown component kind {name!r}; choose from {sorted(KINDS)}.")
    spec = KINDS[name]
    text = str(label).strip()
    parts = text.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"Component {label!r} is not of the form LAYER.{spec.unit.upper()} "
                         f"(e.g. 1.2 for {spec.unit} 2 of layer 1).")
    layer, unit = int(parts[0]), int(parts[1])
    n_layers, n_units = int(cfg.n_layers), spec.n_units(cfg)
    if layer >= n_layers:
        raise ValueError(f"Component {text}: layer {layer} does not exist; the model has "
                         f"{n_layers} layers (0-{n_layers - 1}).")
    if unit >= n_units:
        raise ValueError(f"Component {text}: {spec.unit} {unit} does not exist; the model has "
                         f"{n_units} {spec.name} per layer (0-{n_units - 1}).")
    return Component(name, layer, unit)


def resolve_kinds(components: str | Iterable[str]) -> list[ComponentKind]:
    """Turn ``"heads,neurons"`` or ``("heads",)`` into kinds, refusing unknown names."""
    if isinstance(components, str):
        components = [c for c in components.split(",") if c.strip()]
    components = list(components) if isinstance(components, Iterable) else components
    if not isinstance(components, list) or not all(isinstance(c, str) for c in components):
        raise TypeError(f"components must be names such as 'heads,neurons' or ['heads'], got "
                        f"{components!r}.")
    names = [c.strip() for c in components]
    if not names:
        raise ValueError(f"No components given; choose from {sorted(KINDS)}.")
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        raise ValueError(f"Unknown component kind(s) {unknown}; choose from {sorted(KINDS)}.")
    return [KINDS[n] for n in dict.fromkeys(names)]


def sum_per_unit(x: torch.Tensor) -> torch.Tensor:
    """Sum over positions and features, keeping units.

    x: ``[batch, pos, units, *features]`` -> ``[batch, units]``.
    """
    return x.sum(dim=1).flatten(start_dim=2).sum(dim=-1) if x.dim() > 3 else x.sum(dim=1)



def resolve_units(units, kinds: Iterable[ComponentKind], cfg) -> dict[str, list[int]] | None:
    """Validate a ``units`` setting: which units of each kind to score (the same indices in every
    layer). ``None`` means every unit of every kind; otherwise a mapping ``{kind name: unit
    indices}``, and kinds it does not name get all their units. A kind's indices may also be
    given per layer, ``{layer: unit indices}`` (layers not named get none; resolved as
    ``{layer: sorted distinct indices}``).

    Returns ``{kind name: sorted distinct indices}`` for every requested kind, or None. Raises a
    ValueError naming the kind and the index at fault.
    """
    if units is None:
        return None
    if not isinstance(units, dict):
        raise ValueError(
            f"units must be a mapping {{kind: unit indices}}, e.g. {{'neurons': range(0, 64)}}; "
            f"got {type(units).__name__}."
        )
    kinds = list(kinds)
    names = [kind.name for kind in kinds]
    extra = sorted(set(units) - set(names))
    if extra:
        raise ValueError(f"units names kind(s) {extra} that are not being scored; scored: {names}.")
    resolved = {}
    for kind in kinds:
        size = kind.n_units(cfg)
        if kind.name not in units:
            resolved[kind.name] = list(range(size))
            continue
        given = units[kind.name]
        if isinstance(given, dict):  # per layer: {layer: indices}
            by_layer = {}
            for layer, indices in given.items():
                if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < cfg.n_layers:
                    raise ValueError(f"units[{kind.name!r}]: {layer!r} is not a layer of this model "
                                     f"(0..{cfg.n_layers - 1}).")
                by_layer[layer] = _unit_indices(indices, kind, size, f"units[{kind.name!r}][{layer}]")
            if not any(by_layer.values()):
                raise ValueError(f"units[{kind.name!r}] names no unit; leave the kind out to score "
                                 f"all its {kind.unit}s.")
            resolved[kind.name] = dict(sorted(by_layer.items()))
            continue
        indices = _unit_indices(given, kind, size, f"units[{kind.name!r}]")
        if not indices:
            raise ValueError(f"units[{kind.name!r}] is empty; leave the kind out to score all its {kind.unit}s.")
        resolved[kind.name] = indices
    return resolved


def _unit_indices(given, kind: ComponentKind, size: int, where: str) -> list[int]:
    """``given`` (indices, a tensor or one index) as sorted distinct unit indices of ``kind``."""
    if isinstance(given, torch.Tensor):
        given = given.tolist()
    if isinstance(given, (int, str)):
        given = [given]
    indices = []
    for value in given:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: {value!r} is not an integer {kind.unit} index.")
        if not 0 <= value < size:
            raise ValueError(
                f"{where}: {kind.unit} index {value} is out of range; this model "
                f"has {size} {kind.unit}s per layer (indices 0..{size - 1})."
            )
        indices.append(int(value))
    return sorted(set(indices))


MAX_UNITS_PER_SPEC = 1 << 20  # more units than any layer has: a typo such as 0:30720000


def parse_unit_spec(spec: str) -> dict[str, list[int]]:
    """Parse the command line's ``--units``: ``KIND=ITEMS[;KIND=ITEMS]``, ITEMS comma-separated
    indices or Python-style ranges ``start:stop[:step]`` (stop excluded), e.g.
    ``neurons=0:3072:48`` or ``heads=0,3;neurons=5,7,100:110``."""
    out: dict[str, list[int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        kind, sep, items = part.partition("=")
        kind = kind.strip()
        if not sep or not kind:
            raise ValueError(f"{part!r}: write KIND=INDICES, e.g. neurons=0:3072:48.")
        indices = out.setdefault(kind, [])
        for item in filter(None, (i.strip() for i in items.split(","))):
            try:
                bounds = [int(b) for b in item.split(":")]
            except ValueError:
                raise ValueError(f"{kind}={items}: {item!r} is neither an index nor start:stop[:step].") from None
            if len(bounds) == 1:
                indices.append(bounds[0])
            elif len(bounds) in (2, 3) and (len(bounds) == 2 or bounds[2] > 0):
                if len(range(*bounds)) > MAX_UNITS_PER_SPEC:  # refuse before building the list
                    raise ValueError(f"{kind}={items}: {item!r} spans {len(range(*bounds))} "
                                     f"units; a layer has far fewer (at most {MAX_UNITS_PER_SPEC}).")
                indices.extend(range(*bounds))
            else:
                raise ValueError(f"{kind}={items}: {item!r} is not start:stop[:step] with step > 0.")
    if not out:
        raise ValueError(f"{spec!r}: no units given; write KIND=INDICES, e.g. neurons=0:3072:48.")
    return out
