"""Checks of a run's inputs and outputs made before the work (or before its results are used):
an output folder that can be written, a model whose outputs are finite.

Each raises a ValueError subclass whose message names the input and says what to do; the
command line turns it into one line ``error: ...`` and a non-zero exit code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from jaxtyping import Float


class OutputDirError(ValueError):
    """An output location that is a file, cannot be created or cannot be written."""


class NonFiniteOutputError(ValueError):
    """A model whose unpatched metric is NaN or infinite: every score would be meaningless."""


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Check that ``path`` is a writable folder, or can be created as one (it is not created
    here). Writability is probed with a temporary file, since permission bits do not show a
    read-only file system. Returns the path; raises OutputDirError."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{option} {path} is an existing file; give a folder (it is created "
                             "if missing).")
    existing = path
    while not existing.exists():  # the nearest ancestor that exists
        existing = existing.parent
    if not existing.is_dir():
        raise OutputDirError(f"{option} {path} cannot be created: {existing} is a file.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise OutputDirError(f"{option} {path} is not writable ({e.strerror or e} in "
                             f"{existing}); choose another folder.") from None
    return path


def check_finite_metrics(runner, task) -> None:
    """Refuse a model whose metric on the task's unpatched prompts is NaN or infinite.

    runner.metric_run, runner.metric_source: ``[n]`` metrics of the run and source prompts."""
    for which, metric in (("run", runner.metric_run), ("source", runner.metric_source)):
        bad = ~torch.isfinite(metric)
        if bad.any():
            rows = [int(i) + 1 for i in bad.nonzero().flatten()[:5]]
            raise NonFiniteOutputError(
                f"the model's {task.metric_name} is NaN or infinite on {int(bad.sum())} of "
                f"{task.n} {which} prompts of task {task.name} (samples {rows}): its outputs are "
                "not finite (NaN/Inf weights, or an overflow in this dtype); check the model's "
                "weights or use --dtype float32.")


class BudgetError(ValueError):
    """A memory budget (max_memory) smaller than one row of the run's largest pass."""


def smallest_budget(model, seq: int, edge: bool) -> int:
    """Bytes of one row of the largest pass a method can make on prompts of ``seq`` tokens: the
    whole prompt through every layer with gradients and full-vocabulary logits
    (the one memory model, :mod:`attrscope.arch.memory`), with, for an edge method, the edge
    forward's per-destination input copies (kept for the backward) and source outputs. A budget
    of at least this holds one row in every pass of every method; a gradient-free method
    (``ap``, ``exact``) may run with less, and ``max_batch_rows=1`` always runs one row per
    pass."""
    from dataclasses import replace

    from .arch import compute_dtype, config_of
    from .arch.memory import PassShape, Widths, bytes_per_row
    from .edges.graph import Graph

    cfg = config_of(model)
    itemsize = torch.empty((), dtype=compute_dtype(model)).element_size()
    widths = Widths.of_config(cfg)
    if edge:
        graph = Graph(int(cfg.n_layers), int(cfg.n_heads),
                      getattr(cfg, "n_key_value_heads", None) or int(cfg.n_heads))
        widths = replace(widths, input_copies=graph.n_attn_dests + 2, sources=graph.n_sources)
    shape = PassShape(seq, seq, int(cfg.n_layers), backward=True, logits=True)
    return bytes_per_row(widths, shape, itemsize)


def check_budget(settings: dict, model, task, edge: bool) -> None:
    """Refuse, before any work, a ``max_memory`` (bytes, as the settings record it) below
    :func:`smallest_budget`, naming the budget that works; nothing to check when
    ``max_batch_rows`` sets the rows or the method has no memory budget."""
    budget = settings.get("max_memory")
    if budget is None or settings.get("max_batch_rows") is not None:
        return
    seq = int(task.clean_tokens.shape[1])
    needed = smallest_budget(model, seq, edge)
    if budget < needed:
        raise BudgetError(
            f"max_memory {_size(budget)} is less than one row of this run's largest pass, "
            f"{_size(needed)} (the {seq}-token prompts through all {model.cfg.n_layers} layers "
            f"with gradients): give max_memory '{-(-needed // 10**6)}MB' (--max-memory "
            f"{-(-needed // 10**6)}MB) or more, or max_batch_rows 1 (--max-batch-rows 1) to "
            "make every pass one row whatever it needs.")


def _size(size: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} bytes"


def scored_mask(units, shape: torch.Size) -> torch.Tensor:
    """``[n_layers, n_units]`` bool: the units a ``units`` setting scores, given as indices (the
    same in every layer), ``{layer: indices}``, or already as a mask."""
    if isinstance(units, torch.Tensor):
        return units.bool().cpu()
    mask = torch.zeros(shape, dtype=torch.bool)
    for layer, indices in (units.items() if isinstance(units, dict)
                           else ((layer, units) for layer in range(shape[0]))):
        mask[layer, list(indices)] = True
    return mask


def check_finite_scores(values: dict[str, Float[torch.Tensor, "n ..."]], what: str,
                        units: dict[str, list[int]] | None = None) -> None:
    """Refuse scores with a NaN or infinite entry (a model whose outputs stop being finite in a
    patched or interpolated run, mid-way): ``values[kind]`` ``[n, layers, units]`` (edges
    ``[n, edges]``), with a trailing position axis for position-resolved scores; ``what`` names the computation ("ap denoising"); ``units``: the units
    scored per kind where only some were (the others are NaN by design), in any form
    :func:`scored_mask` takes."""
    for kind, v in values.items():
        bad = ~torch.isfinite(v)
        if units and kind in units:
            bad &= scored_mask(units[kind], v.shape[1:]).to(v.device)
        if bad.any():
            index = bad.nonzero()[0].tolist()  # [sample, layer, unit] or [sample, edge]
            sample = index[0]
            first = f"edge {index[1]}" if kind == "edges" else f"{index[1]}.{index[2]}"
            raise NonFiniteOutputError(
                f"{what} produced {int(bad.sum())} NaN or infinite {kind} score(s) of "
                f"{v.numel()} (first: {first} of sample {sample + 1}): the model's outputs were "
                "not finite in a patched or interpolated run; nothing was saved. Check the "
                "model's weights or use --dtype float32.")
