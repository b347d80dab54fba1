"""``Scores``: the one result type every method returns and every analysis reads.

A ``Scores`` holds, per component kind, a tensor ``[n_samples, n_layers, n_units]`` of per-sample
scores (for the kind ``"edges"``: ``[n_samples, n_edges]``, in the edge order of
:class:`attrscope.edges.graph.Graph`, whose size is recorded in ``meta["graph"]``; position-resolved
scores have a trailing position axis: ``[n_samples, n_layers, n_units, n_pos]``,
``[n_samples, n_edges, n_pos]``), plus named extra tensors (e.g. the integrated-gradients
completeness residual) and the metadata that produced it (model, task, method, direction, settings, versions). It saves to one
safetensors file whose header carries the metadata as JSON and a SHA-256 checksum of the metadata
and every tensor (name, dtype, shape, bytes, in name order), written atomically (temporary file +
``os.replace``). :meth:`Scores.load` verifies the checksum: a corrupt or truncated file raises
:class:`ResultFileError` naming the file, never returns wrong numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from .components import KINDS
from .files import DiskFullError, write_bytes  # noqa: F401  (DiskFullError: re-exported)

_SCORE_PREFIX = "scores."
_EXTRA_PREFIX = "extra."
_META_KEY = "attrscope"
_CHECKSUM_KEY = "attrscope.sha256"
EDGES = "edges"  # edge scores [n, n_edges(, n_pos)]: the edges of meta["graph"], no layer axis

SIGN_CONVENTIONS = {
    "denoising": "run the corrupted prompt, patch in clean activations; positive = the component "
    "moves the metric towards its clean value (restores the behaviour)",
    "noising": "run the clean prompt, patch in corrupted activations; negative = the component "
    "is needed for the behaviour (corrupting it lowers the metric)",
}


class ResultFileError(ValueError):
    """A result file that cannot be used: missing, not a result, truncated or corrupt. The
    message names the file and says what is wrong."""


class UnverifiedResultWarning(UserWarning):
    """A result file without a checksum (written before attrscope recorded one)."""


def checksum(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """SHA-256 over ``meta_json`` and, in name order, each tensor's name, dtype, shape and bytes.

    tensors: ``{name: tensor}`` of any shapes and dtypes (moved to CPU, made contiguous)."""
    digest = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Scores:
    """Per-sample scores for each component kind.

    values[kind]: ``[n_samples, n_layers, n_units]`` for node kinds, ``[n_samples, n_edges]`` for
    ``"edges"`` (edge order of :attr:`graph`); position-resolved scores (``meta["positions"]``)
    add a trailing ``n_pos`` axis to either. extras[name]: any tensor; meta: JSON-able.
    Edge results saved by earlier versions as ``[n_samples, 1, n_edges(, n_pos)]`` load squeezed
    to this shape (:meth:`load`).
    """

    values: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.values, dict):
            raise TypeError(f"Scores values must be a dict {{kind: tensor}}, got "
                            f"{type(self.values).__name__}.")
        for kind, tensor in self.values.items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"scores[{kind!r}] must be a torch.Tensor [n_samples, n_layers, "
                                f"n_units], got {type(tensor).__name__}.")
            if kind not in KINDS and kind != EDGES:
                raise ValueError(f"Unknown component kind {kind!r}; known: {sorted(KINDS) + [EDGES]}.")
            positions = self.position_labels
            axes = "n_edges" if kind == EDGES else "n_layers, n_units"
            if tensor.dim() != _dims(kind) + (positions is not None):
                raise ValueError(
                    f"scores[{kind!r}] must be [n_samples, {axes}"
                    f"{'' if positions is None else ', n_positions'}], got {tuple(tensor.shape)}."
                )
            if positions is not None and tensor.shape[-1] != len(positions):
                raise ValueError(f"scores[{kind!r}] has {tensor.shape[-1]} positions but "
                                 f"meta['positions'] names {len(positions)}.")
            if kind == EDGES and tensor.shape[1] != self.graph.n_edges:
                raise ValueError(f"scores['edges'] must be [n_samples, {self.graph.n_edges}"
                                 f"{'' if positions is None else ', n_positions'}] for the graph "
                                 f"{self.graph.as_dict()}, got {tuple(tensor.shape)}.")

    @property
    def graph(self):
        """The :class:`~attrscope.edges.graph.Graph` of edge scores (from ``meta["graph"]``)."""
        from .edges.graph import Graph

        if "graph" not in self.meta:
            raise ValueError("Edge scores need meta['graph'] ({'n_layers': ..., 'n_heads': ...}).")
        return Graph(**self.meta["graph"])

    @property
    def position_labels(self) -> list | None:
        """The labels of the trailing position axis (position names or token indices) of
        position-resolved scores (``positions`` other than ``"all"``), else None."""
        positions = self.meta.get("positions")
        return None if positions is None else list(positions["labels"])

    def labels(self, kind: str) -> list[str]:
        """Component labels in the flattened (layer-major) order of ``self[kind]``: ``L.U``
        (``L`` for a site with one unit per layer), ``L.U@P`` for position-resolved scores, or
        edge labels such as ``5.5 -> 8.6 (q)`` for ``"edges"``."""
        if kind == EDGES:
            if self.position_labels is None:
                return self.graph.labels
            return [f"{label} @{p}" for label in self.graph.labels for p in self.position_labels]
        n_layers, n_units = self[kind].shape[1:3]
        kind_spec = KINDS[kind]
        positions = self.position_labels or [None]
        return [kind_spec.unit_label(layer, unit, position) for layer in range(n_layers)
                for unit in range(n_units) for position in positions]

    def __getitem__(self, kind: str) -> torch.Tensor:
        if kind not in self.values:
            raise KeyError(f"These scores have no {kind!r}; they have {sorted(self.values)}.")
        return self.values[kind]

    def __contains__(self, kind: str) -> bool:
        return kind in self.values

    @property
    def kinds(self) -> list[str]:
        return list(self.values)

    @property
    def method(self) -> str:
        return self.meta.get("method", "?")

    @property
    def direction(self) -> str:
        return self.meta.get("direction", "?")

    def mean(self, kind: str | None = None):
        """Mean over samples: ``[n_layers, n_units]`` for one ``kind`` (``[n_edges]`` for edges,
        with a trailing ``n_pos`` axis for position-resolved scores); without a kind, a pandas
        DataFrame of every component's mean (columns as :meth:`to_dataframe`, no ``sample``).
        Samples without a score (NaN, e.g. flagged by :meth:`normalized`) are left out; a
        component no sample scored stays NaN."""
        if kind is None:
            from .notebook import mean_frame

            return mean_frame(self)
        return self[kind].nanmean(dim=0)

    def to_dataframe(self, kinds: str | list[str] | None = None):
        """Long-form pandas DataFrame, one row per sample and component: ``sample, kind, layer,
        index, label, score, method, direction`` (needs ``attrscope[notebook]``)."""
        from .notebook import to_dataframe

        return to_dataframe(self, kinds)

    def _repr_html_(self) -> str:
        from .notebook import repr_html

        return repr_html(self)

    def normalized(self, mode: str = "gap", gap_floor: float | None = None,
                   small_gap: str = "refuse") -> "Scores":
        """Scores as fractions of the clean - corrupted metric gap, per sample (``"gap"``) or
        of the batch (``"gap-batch"``); samples whose gap is below the floor are refused or,
        with ``small_gap="flag"``, NaN. See :mod:`attrscope.normalize`."""
        from .normalize import GAP_FLOOR, normalized

        return normalized(self, mode, GAP_FLOOR if gap_floor is None else gap_floor, small_gap)

    def top(self, kind: str | int | None = None, k: int = 10, by: str = "abs"):
        """The k components with the largest mean score (``by="abs"``, ``"pos"`` or ``"neg"``),
        as ``(label, mean score)`` pairs (labels of :meth:`labels`). Components that were not
        scored (NaN, e.g. outside ``ap``'s ``units`` setting) are left out.

        Without a kind (``top()`` or ``top(5)``: the first argument is then ``k``), a pandas
        DataFrame of the top ``k`` of every kind, with a ``rank`` column."""
        if not isinstance(kind, str):
            from .notebook import top_frame

            return top_frame(self, k if kind is None else int(kind), by)
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be a whole number of components, got {k!r}.")
        mean = self.mean(kind)
        key = {"abs": mean.abs(), "pos": mean, "neg": -mean}.get(by)
        if key is None:
            raise ValueError(f"by must be 'abs', 'pos' or 'neg', got {by!r}.")
        scored = ~torch.isnan(key)
        key = torch.where(scored, key, torch.full_like(key, float("-inf")))
        k = min(k, int(scored.sum()))
        order = torch.topk(key.flatten(), k).indices
        labels = self.labels(kind)
        return [(labels[int(i)], float(mean.flatten()[i])) for i in order]

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (a ``.safetensors`` file) atomically; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {_SCORE_PREFIX + k: v.detach().cpu().contiguous() for k, v in self.values.items()}
        tensors.update(
            {_EXTRA_PREFIX + k: v.detach().cpu().contiguous() for k, v in self.extras.items()}
        )
        write_atomically(path, tensors, {_META_KEY: json.dumps(self.meta, sort_keys=True)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, require_checksum: bool = False) -> "Scores":
        """Read a result written by :meth:`save` and verify its checksum. Raises
        FileNotFoundError for a missing file and :class:`ResultFileError` (naming the file) for
        a truncated, corrupt or foreign one. A file without a checksum (older attrscope) loads
        with an :class:`UnverifiedResultWarning`, or is refused when ``require_checksum``."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or os.PathLike), got "
                            f"{type(path).__name__}.")
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such result file.")
        if not path.is_file():
            raise ResultFileError(f"{path} is not a file; give a .safetensors result written "
                                  "by attrscope.")
        tensors, header = _read_safetensors(path)
        if _META_KEY not in header:
            raise ResultFileError(f"{path} is a safetensors file but not an attrscope result.")
        if _CHECKSUM_KEY not in header:
            if require_checksum:
                raise ResultFileError(f"{path} has no checksum (written by an older attrscope), "
                                      "so it cannot be verified.")
            warnings.warn(f"{path} has no checksum (written by an older attrscope); it is "
                          "used unverified.", UnverifiedResultWarning, stacklevel=2)
        else:
            verify(path, tensors, header)
        try:
            meta = json.loads(header[_META_KEY])
            values = {k[len(_SCORE_PREFIX):]: v for k, v in tensors.items()
                      if k.startswith(_SCORE_PREFIX)}
            extras = {k[len(_EXTRA_PREFIX):]: v for k, v in tensors.items()
                      if k.startswith(_EXTRA_PREFIX)}
            return cls(values=_current_shapes(values, meta), meta=meta, extras=extras)
        except ValueError as e:  # bad JSON or shapes in a file without a checksum
            raise ResultFileError(f"{path} is not a valid attrscope result: {e}") from None

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.values.items())
        return f"Scores(method={self.method!r}, direction={self.direction!r}, {shapes})"


def _dims(kind: str) -> int:
    """Axes of ``kind``'s scores without positions: samples and edges, or samples, layers and
    units."""
    return 2 if kind == EDGES else 3


def _current_shapes(values: dict[str, torch.Tensor], meta: dict) -> dict[str, torch.Tensor]:
    """``values`` as read from a file, with edge scores written before they lost their
    pseudo-layer axis (``[n, 1, n_edges(, n_pos)]``) squeezed to ``[n, n_edges(, n_pos)]``."""
    edges = values.get(EDGES)
    old = _dims(EDGES) + 1 + (meta.get("positions") is not None)
    if edges is not None and edges.dim() == old and edges.shape[1] == 1:
        values = {**values, EDGES: edges.squeeze(1)}
    return values


def write_atomically(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> None:
    """Write ``tensors`` (CPU, contiguous) to the safetensors file ``path`` with the string
    ``header`` plus a checksum over it and the tensors, through a temporary file and
    ``os.replace`` (:func:`attrscope.files.write_bytes`): a reader (or a run killed mid-write)
    never sees a partial file."""
    header = {**header, _CHECKSUM_KEY: checksum(tensors, _header_json(header))}
    write_bytes(path, save(tensors, metadata=header))  # in memory first: its size is known


def _header_json(header: dict[str, str]) -> str:
    """What the checksum covers of a header: its one entry for a result (the meta JSON, as
    files written before chunk checkpoints have it), all entries in key order otherwise."""
    entries = {k: v for k, v in header.items() if k != _CHECKSUM_KEY}
    if set(entries) == {_META_KEY}:
        return entries[_META_KEY]
    return json.dumps(entries, sort_keys=True)


def verify(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> None:
    """Raise :class:`ResultFileError` naming ``path`` unless its tensors and header match the
    checksum recorded by :func:`write_atomically`."""
    recorded = header.get(_CHECKSUM_KEY)
    if recorded is None or checksum(tensors, _header_json(header)) != recorded:
        raise ResultFileError(f"{path} is corrupt: its tensors do not match the checksum "
                              "recorded when it was written. Delete it and recompute.")


def read_verified(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of a file written by :func:`write_atomically`, verified; raises
    :class:`ResultFileError` naming the file when it is truncated, corrupt or foreign."""
    tensors, header = _read_safetensors(path)
    verify(path, tensors, header)
    return tensors, header


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the header metadata of a safetensors file; ResultFileError naming the file
    if it is not one (a CSV, a truncated or overwritten file)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError and OSError subtypes
        raise ResultFileError(f"{path} is not a readable safetensors result (truncated, corrupt "
                              f"or another kind of file: {type(e).__name__}: {e}).") from None
    return tensors, header
