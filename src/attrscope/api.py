"""``attribute``: run any registered method on a model and task, in one direction."""

from __future__ import annotations

import os
import time
from typing import Iterable

import torch

from ._version import __version__
from .arch import config_of
from .arch.forward import ENGINE
from .checks import check_budget, check_finite_scores
from .checkpoint import NO_CHECKPOINT, Checkpoint, as_checkpoint
from .components import resolve_kinds, resolve_units
from .keys import attribution_key  # noqa: F401  (re-exported)
from .engine import Runner, check_direction, default_memory_budget, parse_memory
from .methods import get_method, methods_of
from .registry import check_method_settings
from .models import as_bridge
from .normalize import GAP_FLOOR, check_has_gap, check_normalize
from .scores import EDGES, SIGN_CONVENTIONS, Scores
from .sites import Positions, resolve_positions
from .tasks.positions import parse_setting
from .tasks.base import Task


def _versions() -> dict[str, str]:
    import transformer_lens
    import transformers

    return {"attrscope": __version__, "torch": torch.__version__,
            "transformer_lens": getattr(transformer_lens, "__version__", "?"),
            "transformers": transformers.__version__}


def normalise_settings(settings: dict, kinds, model) -> None:
    """Check the settings shared by several methods and put them in the form recorded in the
    result: ``units`` as ``{kind: sorted indices}``, ``max_memory`` in bytes (the machine-derived
    default when None), ``max_batch_rows`` as a positive integer or None."""
    if "units" in settings:
        settings["units"] = resolve_units(settings["units"], kinds, config_of(model))
    if "max_memory" in settings:
        if settings["max_memory"] is None:
            device = next(model.parameters()).device
            settings["max_memory"] = default_memory_budget(device)
        else:
            settings["max_memory"] = parse_memory(settings["max_memory"])
    rows = settings.get("max_batch_rows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ValueError(f"max_batch_rows must be a positive integer or None, got {rows!r}.")


def attribute(model, task: Task, method: str, direction: str = "denoising",
              components: str | Iterable[str] = ("heads", "neurons"), *,
              show_progress: bool = True, runner=None, normalize: str | None = None,
              gap_floor: float = GAP_FLOOR, small_gap: str = "refuse",
              checkpoint: Checkpoint | str | os.PathLike | None = None, **settings) -> Scores:
    """Score every component of the requested kinds with ``method`` in ``direction``.

    Node methods return a :class:`Scores` with ``scores["heads"]`` ``[n, n_layers, n_heads]``
    and/or ``scores["neurons"]`` ``[n, n_layers, d_mlp]``; edge methods (``eap``, ``eap-ig``,
    ``eap-ig-act``, ``exact``) score every edge, ``scores["edges"]`` ``[n, n_edges]``, whatever
    ``components`` says. ``components`` may also name the sites ``resid_pre`` (``[n, n_layers + 1,
    1]``: the final stream last), ``attn_out``, ``mlp_out`` (one unit per layer), ``q``, ``k``,
    ``v`` (:mod:`attrscope.components`). The setting ``positions`` (``ap``, ``atp``, ``ig`` and
    the edge methods): ``"all"`` (default), ``"each"`` or position names such as ``["S2",
    "END"]``; other than ``"all"`` the scores gain a trailing position axis and
    ``meta["positions"]`` says what it is (:mod:`attrscope.sites`). Settings not accepted by
    the method raise. A ``runner`` (a
    :class:`Runner` for node methods, an :class:`~attrscope.edges.methods.EdgeRun` for edge
    methods) built for the same model, task and direction may be passed to reuse its cached runs.
    ``normalize="gap"`` or ``"gap-batch"``: scores as fractions of the clean - corrupted metric
    gap (``gap_floor``, ``small_gap``: see :mod:`attrscope.normalize`).
    ``checkpoint``: a folder (or :class:`~attrscope.checkpoint.Checkpoint`) where the method keeps
    its finished chunks, so that the same call after an interruption resumes where it stopped
    (see :mod:`attrscope.checkpoint`); the caller removes it once the result is saved.
    """
    model = as_bridge(model)  # a model name, Hugging Face or nnsight model, or bridge
    check_normalize(normalize, gap_floor, small_gap)  # before any run
    spec = get_method(method)
    check_direction(direction)
    kinds = resolve_kinds(components) if spec.granularity == "node" else []
    resolved = check_method_settings(method, settings)
    normalise_settings(resolved, kinds, model)
    positions = None
    if "positions" in resolved:  # refused here, before any run, if the task cannot give them
        resolved["positions"] = parse_setting(resolved["positions"])
        positions = resolve_positions(task, resolved["positions"])
    check_budget(resolved, model, task, spec.granularity == "edge")
    run = prepared_run(spec, model, task, direction, kinds, runner)
    if normalize:  # a task without a gap is refused on its unpatched metrics, before the method
        check_has_gap(run.metric_run, run.metric_source, task.name)
    run.checkpoint = as_checkpoint(
        checkpoint, lambda: attribution_key(model, task, method, direction, kinds, resolved))
    started = time.perf_counter()
    try:
        values, extras = spec.fn(run, kinds, resolved, show_progress)
        try:
            # a method that scored only some units marks them in extras["exact.<kind>"]
            marked = {k.removeprefix("exact."): m > 0 for k, m in extras.items()
                      if k.startswith("exact.")}
            check_finite_scores(values, f"{method} {direction}",
                                {**(resolved.get("units") or {}), **marked} or None)
        except ValueError:
            run.checkpoint.discard()  # its chunks hold the same non-finite values
            raise
    finally:
        run.checkpoint = NO_CHECKPOINT
    elapsed = time.perf_counter() - started
    method_meta = extras.pop("meta", {})  # e.g. ap's screening summary (a dict, not a tensor)
    extras = {**extras, "metric.run": run.metric_run.float().cpu(),
              "metric.source": run.metric_source.float().cpu()}
    meta = result_meta(spec, model, task, direction, resolved, run, elapsed)
    meta["components"] = [EDGES] if spec.granularity == "edge" else [k.name for k in kinds]
    if positions is not None:
        meta["positions"] = position_meta(model, task, positions)
    meta.update(method_meta)
    scores = Scores(values=values, meta=meta, extras=extras)
    return scores.normalized(normalize, gap_floor, small_gap) if normalize else scores


def attribute_edges(model, task: Task, method: str = "eap", direction: str = "denoising", *,
                    show_progress: bool = True, **settings) -> Scores:
    """Score every edge of the model's graph with an edge method: :func:`attrscope.attribute`
    with ``components="edges"``; a :class:`Scores` with ``scores["edges"]`` ``[n, n_edges]``
    (edge order of :class:`Graph`, labels in ``scores.labels("edges")``)."""
    if method not in methods_of("edge"):
        raise ValueError(f"Unknown edge method {method!r}; available: {sorted(methods_of('edge'))}.")
    return attribute(model, task, method, direction, EDGES, show_progress=show_progress,
                     **settings)


def prepared_run(spec, model, task: Task, direction: str, kinds, runner=None):
    """The cached runs a method of ``spec``'s granularity needs: ``runner`` when it was built
    for the same model, task, direction (and kinds), else a new one."""
    if spec.granularity == "edge":
        from .edges.methods import EdgeRun

        if (isinstance(runner, EdgeRun) and runner.forward.model is model and runner.task is task
                and runner.direction == direction):
            return runner
        return EdgeRun.prepare(model, task, direction)
    reusable = (isinstance(runner, Runner) and runner.model is model and runner.task is task
                and runner.direction == direction
                and {k.name for k in kinds} <= {k.name for k in runner.kinds})
    return runner if reusable else Runner(model, task, direction, kinds)


def position_meta(model, task: Task, positions: Positions) -> dict:
    """What the trailing position axis of the scores is: the setting, each entry's label (a
    name or a token index) and, for the reports, the token each entry is in the first prompt
    (clean)."""
    tokens = task.clean_tokens[0]
    index = positions.index[0].tolist()
    tokenizer = getattr(model, "tokenizer", None)
    shown = [tokenizer.decode([int(tokens[i])]) if tokenizer is not None else str(int(tokens[i]))
             for i in index]
    return {"setting": positions.setting, "labels": list(positions.labels), "sample_tokens": shown}


def result_meta(spec, model, task: Task, direction: str, settings: dict, run, seconds: float
                ) -> dict:
    """What produced a result, for every method and granularity."""
    sizes = config_of(model)
    meta = {
        "method": spec.name,
        "granularity": spec.granularity,
        "direction": direction,
        "sign_convention": SIGN_CONVENTIONS[direction],
        "method_sign": spec.sign,
        "metric": f"{task.metric_description}, at each sample's last real token",
        "metric_name": task.metric_name,
        "model": str(model.cfg.model_name),
        "model_config": {k: getattr(sizes, k, None) for k in
                         ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab", "n_ctx")},
        "task": task.describe(),
        "settings": settings,
        "device": str(task.clean_tokens.device),
        "dtype": str(next(model.parameters()).dtype),
        "compute_dtype": str(getattr(run, "compute_dtype", next(model.parameters()).dtype)),
        "versions": _versions(),
        "seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if spec.granularity == "edge":
        meta["graph"] = run.graph.as_dict()
        meta["engine"], meta["adapter"] = ENGINE, run.forward.w.family
    else:
        meta["engine"] = run.engine_used
        if run.engine_used == ENGINE:
            meta["adapter"] = run.fast.adapter.family
        if run.fast_unavailable:
            meta["fast_path_unavailable"] = run.fast_unavailable
    return meta
