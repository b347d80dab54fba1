"""``Scores``: the one result type every method returns and every analysis reads.

A ``Scores`` holds, per component kind, a tensor ``[n_samples, n_layers, n_units]`` of per-sample
scores (for the kind ``"edges"``: ``[n_samples, 1, n_edges]``, in the edge order of
:class:`attrscope.edges.graph.Graph`, whose size is recorded in ``meta["graph"]``), plus named extra tensors (e.g. the integrated-gradients completeness residual) and the
metadata that produced it (model, task, method, direction, settings, versions). It saves to one
safetensors file whose header carries the metadata as JSON, written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .components import KINDS

_SCORE_PREFIX = "scores."
_EXTRA_PREFIX = "extra."
_META_KEY = "attrscope"
EDGES = "edges"  # edge scores: one pseudo-layer, units = the edges of meta["graph"]

SIGN_CONVENTIONS = {
    "denoising": "run the corrupted prompt, patch in clean activations; positive = the component "
    "moves the metric towards its clean value (restores the behaviour)",
    "noising": "run the clean prompt, patch in corrupted activations; negative = the component "
    "is needed for the behaviour (corrupting it lowers the metric)",
}


@dataclass
class Scores:
    """Per-sample scores for each component kind.

    values[kind]: ``[n_samples, n_layers, n_units]``; extras[name]: any tensor; meta: JSON-able.
    """

    values: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, tensor in self.values.items():
            if kind not in KINDS and kind != EDGES:
                raise ValueError(f"Unknown component kind {kind!r}; known: {sorted(KINDS) + [EDGES]}.")
            if tensor.dim() != 3:
                raise ValueError(
                    f"scores[{kind!r}] must be [n_samples, n_layers, n_units], got {tuple(tensor.shape)}."
                )
            if kind == EDGES:
                graph = self.graph
                if tensor.shape[1] != 1 or tensor.shape[2] != graph.n_edges:
                    raise ValueError(f"scores['edges'] must be [n_samples, 1, {graph.n_edges}] for "
                                     f"the graph {graph.as_dict()}, got {tuple(tensor.shape)}.")

    @property
    def graph(self):
        """The :class:`~attrscope.edges.graph.Graph` of edge scores (from ``meta["graph"]``)."""
        from .edges.graph import Graph

        if "graph" not in self.meta:
            raise ValueError("Edge scores need meta['graph'] ({'n_layers': ..., 'n_heads': ...}).")
        return Graph(**self.meta["graph"])

    def labels(self, kind: str) -> list[str]:
        """Component labels in the flattened (layer-major) order of ``self[kind]``: ``L.U``,
        or edge labels such as ``5.5 -> 8.6 (q)`` for ``"edges"``."""
        if kind == EDGES:
            return self.graph.labels
        _, n_layers, n_units = self[kind].shape
        return [f"{layer}.{unit}" for layer in range(n_layers) for unit in range(n_units)]

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
        """Mean over samples: ``[n_layers, n_units]`` for one ``kind``; without a kind, a pandas
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
        header = {_META_KEY: json.dumps(self.meta, sort_keys=True)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=header)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scores":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"No scores file at {path}.")
        values, extras = {}, {}
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if _META_KEY not in header:
                raise ValueError(f"{path} is a safetensors file but not an attrscope result.")
            for key in f.keys():
                if key.startswith(_SCORE_PREFIX):
                    values[key[len(_SCORE_PREFIX):]] = f.get_tensor(key)
                elif key.startswith(_EXTRA_PREFIX):
                    extras[key[len(_EXTRA_PREFIX):]] = f.get_tensor(key)
        return cls(values=values, meta=json.loads(header[_META_KEY]), extras=extras)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.values.items())
        return f"Scores(method={self.method!r}, direction={self.direction!r}, {shapes})"
