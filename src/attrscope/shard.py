"""Exact work split across Ray actors, each holding one model replica: ``ap`` by units of a kind,
``exact`` edge patching by edge ranges; the shards merged into one :class:`Scores`.

Bit-identical to one process: a shard's boundaries fall on the boundaries of the single-process
passes (the units or edges patched together in one forward), so every pass of every shard is
exactly a pass of the single-process run with the same ``max_batch_rows``: ``ap`` with
``attrscope.attribute(..., "ap", max_batch_rows=R)``, ``exact`` with
``attribute_edges(..., "exact", max_batch_rows=R)``, ``R`` recorded in the result's settings.
``R`` is derived from the memory budget (``max_memory``) unless given; a shard is a whole number
of passes, about ``shards_per_actor`` shards per actor so that a lost worker costs little.

Fault tolerance: actors are created with ``max_restarts`` and ``max_task_retries``; a killed
actor is restarted (it reloads its replica) and its unfinished shards are rerun. Each shard has
an index; the merge refuses a shard seen twice or missing, so nothing is lost or counted twice.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .arch import config_of
from .keys import attribution_key
from .registry import METHODS
from .scores import EDGES, SIGN_CONVENTIONS, Scores
from .sweep import Job, cached_model, connect, quiet_loading, resolve_model, run_method

MAX_RESTARTS = 3


# -- the adapter: the calls into attrscope's engine (keep them here, and few) ----------------

def ap_units(model, task, direction: str, kind: str, units: Sequence[int],
             max_batch_rows: int) -> Scores:
    """``ap`` of ``units`` of ``kind`` only (``attribute``'s ``units`` setting)."""
    return run_method(model, task, "ap", direction, [kind],
                      {"units": {kind: list(units)}, "max_batch_rows": max_batch_rows})


def prepare_edges(model, task, direction: str):
    from .edges.methods import EdgeRun

    return EdgeRun.prepare(model, task, direction)


def exact_edges(edge_run, start: int, stop: int, max_batch_rows: int) -> torch.Tensor:
    """``[n, stop - start]`` exact scores of edges ``start .. stop - 1``, each on its own."""
    from .edges.methods import exact_scores

    return exact_scores(edge_run, [[e] for e in range(start, stop)], max_batch_rows)


def ap_pass_quantum(group_sizes: Sequence[int], rows: int) -> int:
    """Units per shard must be a multiple of this for shards to fall on ``ap``'s passes: ``ap``
    splits the samples into groups (:func:`attrscope.engine.task_groups`, the one rule; their
    sizes ``group_sizes``) and patches the same number of units in every pass, as many copies
    of the largest group as fit in ``rows``."""
    return max(1, rows // max(group_sizes))


def exact_pass_quantum(n: int, rows: int) -> int:
    """Edges per pass of ``exact_scores``: ``rows // n`` copies of the batch, at least one."""
    return max(1, rows // max(1, n))


# -- the actor -------------------------------------------------------------------------------

class ShardWorker:
    """One model replica and its task (the model, task, n, seed, device, dtype, metric of a
    :class:`~attrscope.sweep.Job`), scoring shards of any direction."""

    def __init__(self, spec: dict):
        from .tasks import load_task

        quiet_loading()
        job = Job.from_spec(spec)
        self.model, _ = cached_model(resolve_model(job.model, job.task), job.device, job.dtype)
        self.task = load_task(job.task, self.model, n=job.n, seed=job.seed, metric=job.metric)
        self.edge_runs: dict[str, object] = {}  # per direction, prepared once

    def pid(self) -> int:
        return os.getpid()

    def ap(self, index: int, direction: str, kind: str, units: list[int], rows: int):
        scores = ap_units(self.model, self.task, direction, kind, units, rows)
        return index, scores[kind][:, :, units], scores.meta, scores.extras

    def exact(self, index: int, direction: str, start: int, stop: int, rows: int):
        if direction not in self.edge_runs:
            self.edge_runs[direction] = prepare_edges(self.model, self.task, direction)
        return index, exact_edges(self.edge_runs[direction], start, stop, rows), None, None


# -- the driver ------------------------------------------------------------------------------

@dataclass
class Plan:
    """The shards: ``(actor method, args)`` each, and the rows per pass they were cut for."""

    shards: list[tuple[str, tuple]]
    rows: int
    quantum: int


def _ranges(total: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, total)) for a in range(0, total, size)]


def _shard_size(total: int, quantum: int, n_actors: int, shards_per_actor: int,
                shard_size: int | None) -> int:
    """Items per shard: a multiple of ``quantum``, about ``shards_per_actor`` shards per actor."""
    if shard_size is not None:
        if shard_size < 1 or shard_size % quantum:
            raise ValueError(f"shard_size {shard_size} must be a positive multiple of "
                             f"{quantum} (the items patched in one pass).")
        return shard_size
    passes = math.ceil(total / quantum)
    return quantum * max(1, math.ceil(passes / (n_actors * shards_per_actor)))


def pass_rows(model, method: str, task, budget: int) -> int:
    """Rows per pass within ``budget`` bytes by the one memory model
    (:mod:`attrscope.arch.memory`): an ``ap`` pass over the whole prompt and every layer, or an
    ``exact`` edge pass from the prompts' first difference on, as exact sizes its own."""
    from .arch import adapter_for
    from .arch.memory import EDGE_PATCH_MAX_ROWS, PassShape, Widths, rows_for_budget
    from .engine import first_difference

    itemsize = next(model.parameters()).element_size()
    seq = int(task.clean_tokens.shape[1])
    if method == "exact":
        from .edges.graph import Graph

        widths = Widths.of_adapter(adapter_for(model), Graph.of_model(model))
        shape = PassShape(seq - first_difference(task), seq, int(model.cfg.n_layers))
        return min(rows_for_budget(widths, shape, budget, itemsize), EDGE_PATCH_MAX_ROWS)
    return rows_for_budget(Widths.of_config(config_of(model)),
                           PassShape(seq, seq, int(model.cfg.n_layers)), budget, itemsize)


@dataclass(frozen=True)
class ShardSizing:
    """How work is cut: ``max_batch_rows`` rows per pass (or as many as ``max_memory`` allows,
    default 1GB), about ``shards_per_actor`` shards per actor, or shards of ``shard_size``
    units (a multiple of the pass quantum)."""

    max_batch_rows: int | None = None
    max_memory: str | int | None = None
    shards_per_actor: int = 4
    shard_size: int | None = None


def plan_shards(model, task, method: str, kinds: Sequence[str], n_actors: int,
                sizing: ShardSizing = ShardSizing()) -> Plan:
    """Cut ``ap`` (units of each kind) or ``exact`` (edge ranges) into shards on pass bounds."""
    from .engine import parse_memory  # a size parser; the budget itself is ours

    rows, per_actor, shard_size = sizing.max_batch_rows, sizing.shards_per_actor, sizing.shard_size
    if rows is None:
        budget = parse_memory(sizing.max_memory if sizing.max_memory is not None else "1GB")
        rows = pass_rows(model, method, task, budget)
    if method == "ap":
        from .arch.memory import Widths
        from .engine import task_groups

        groups = task_groups(task, Widths.of_config(config_of(model)))
        quantum = ap_pass_quantum([len(g) for g in groups], rows)
        shards = []
        for kind in kinds:
            size = {"heads": model.cfg.n_heads, "neurons": config_of(model).d_mlp}[kind]
            step = _shard_size(size, quantum, n_actors, per_actor, shard_size)
            shards += [("ap", (kind, list(range(a, b)), rows)) for a, b in _ranges(size, step)]
        return Plan(shards, rows, quantum)
    if method == "exact":
        from .edges.graph import Graph

        n_edges = Graph.of_model(model).n_edges
        quantum = exact_pass_quantum(task.n, rows)
        step = _shard_size(n_edges, quantum, n_actors, per_actor, shard_size)
        return Plan([("exact", (a, b, rows)) for a, b in _ranges(n_edges, step)], rows, quantum)
    raise ValueError(f"Only ap and exact can be sharded, not {method!r}.")


class ShardPool:
    """``n_actors`` Ray actors with ``num_cpus``/``num_gpus`` each, every one holding a replica
    of ``source``'s model and task; :meth:`run` scores one sharded job on them. Reuse a pool for
    several jobs of one model and task (actors load the model once); close it (or use ``with``)
    to free them. Joins Ray (``address``) if it is not initialised yet."""

    def __init__(self, source: Job, n_actors: int = 2, *, num_cpus: float = 1,
                 num_gpus: float = 0, address: str | None = "local"):
        import ray

        from .tasks import load_task

        self.source, self.n_actors = source, n_actors
        self.model, _ = cached_model(resolve_model(source.model, source.task), source.device,
                                     source.dtype)
        self.task = load_task(source.task, self.model, n=source.n, seed=source.seed,
                              metric=source.metric)
        self.own_ray = connect(address)
        cls = ray.remote(ShardWorker).options(num_cpus=num_cpus, num_gpus=num_gpus,
                                              max_restarts=MAX_RESTARTS,
                                              max_task_retries=MAX_RESTARTS)
        self.actors = [cls.remote(source.spec()) for _ in range(n_actors)]

    def pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def run(self, method: str, direction: str, components: Sequence[str] = ("heads", "neurons"),
            *, on_result: Callable[[int, list[int]], None] | None = None,
            log: Callable[[str], None] = print, **sizing) -> Scores:
        """``ap`` of ``components`` or ``exact`` edges in ``direction``, merged; ``sizing``: the
        fields of :class:`ShardSizing`. ``on_result(done, pids)`` is called after each shard
        arrives (tests use it to kill a worker)."""
        from .engine import check_direction

        check_direction(direction)
        started = time.perf_counter()
        kinds = ["edges"] if method == "exact" else list(components)
        plan = plan_shards(self.model, self.task, method, kinds, self.n_actors,
                           ShardSizing(**sizing))
        log(f"{method} {direction}: {len(plan.shards)} shards over {self.n_actors} actors "
            f"({plan.rows} rows per pass, shards on multiples of {plan.quantum})")
        pids = self.pids()
        results = self._collect(plan, direction, pids, on_result)
        sharding = {"actors": self.n_actors, "shards": len(plan.shards),
                    "max_batch_rows": plan.rows,
                    "restarted_actors": sum(p != q for p, q in zip(pids, self.pids())),
                    "seconds": round(time.perf_counter() - started, 3)}
        merge = merge_ap if method == "ap" else merge_exact
        scores = merge(self.model, self.task, direction, plan, results, sharding)
        # the key attribute, compare and sweep give the same result (batching is not in it)
        scores.meta["cache_key"] = attribution_key(
            self.model, self.task, method, direction, [] if method == "exact" else kinds,
            dict(METHODS[method].defaults))
        return scores

    def _collect(self, plan: Plan, direction: str, pids: list[int], on_result
                 ) -> dict[int, tuple]:
        """Each actor gets two shards in flight (so it never waits for the driver); a finished
        shard's actor gets the next. Returns {shard index: result}, each shard exactly once."""
        import ray

        queue = list(enumerate(plan.shards))
        in_flight = {}

        def submit(actor):
            if queue:
                index, (method, args) = queue.pop(0)
                in_flight[getattr(actor, method).remote(index, direction, *args)] = actor

        for actor in self.actors * 2:
            submit(actor)
        results: dict[int, tuple] = {}
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(ready[0])
            index, *rest = ray.get(ready[0])
            if index in results:
                raise RuntimeError(f"Shard {index} came back twice.")
            results[index] = tuple(rest)
            submit(actor)
            if on_result is not None:
                on_result(len(results), pids)
        return results

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.own_ray:
            ray.shutdown()

    def __enter__(self) -> "ShardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sharded(job: Job, n_actors: int = 2, *, num_cpus: float = 1, num_gpus: float = 0,
            address: str | None = "local", **options) -> Scores:
    """Run ``job`` (method ``ap`` or ``exact``) on a fresh :class:`ShardPool` of ``n_actors``;
    ``options`` as :meth:`ShardPool.run`."""
    if job.method not in ("ap", "exact"):
        raise ValueError(f"Only ap and exact can be sharded, not {job.method!r}.")
    with ShardPool(job, n_actors, num_cpus=num_cpus, num_gpus=num_gpus, address=address) as pool:
        return pool.run(job.method, job.direction, job.components, **options)


def _check_complete(plan: Plan, results: dict) -> None:
    missing = sorted(set(range(len(plan.shards))) - set(results))
    if missing:
        raise RuntimeError(f"Shards {missing} are missing from the results.")


def merge_ap(model, task, direction: str, plan: Plan, results: dict, sharding: dict
             ) -> Scores:
    """One ``[n, n_layers, n_units]`` tensor per kind from the unit shards; every unit once."""
    _check_complete(plan, results)
    values, counts = {}, {}
    meta = extras = None
    for index, (_, (kind, units, _rows)) in enumerate(plan.shards):
        part, meta, extras = results[index]
        if kind not in values:
            n_units = {"heads": model.cfg.n_heads, "neurons": config_of(model).d_mlp}[kind]
            values[kind] = torch.full((task.n, model.cfg.n_layers, n_units), float("nan"))
            counts[kind] = torch.zeros(n_units, dtype=torch.long)
        values[kind][:, :, units] = part
        counts[kind][units] += 1
    for kind, count in counts.items():
        if not bool((count == 1).all()):
            raise RuntimeError(f"{kind}: units scored {count.tolist()} times; each must be once.")
    settings = {**meta["settings"], "units": None, "max_batch_rows": plan.rows}
    meta = {**meta, "components": list(values), "settings": settings, "sharding": sharding,
            "seconds": sharding["seconds"]}
    return Scores(values=values, meta=meta, extras=extras)


def merge_exact(model, task, direction: str, plan: Plan, results: dict, sharding: dict
                ) -> Scores:
    """``[n, n_edges]`` from the edge-range shards; every edge once."""
    from .edges.graph import Graph

    _check_complete(plan, results)
    graph = Graph.of_model(model)
    out = torch.full((task.n, graph.n_edges), float("nan"))
    count = torch.zeros(graph.n_edges, dtype=torch.long)
    for index, (_, (start, stop, _rows)) in enumerate(plan.shards):
        out[:, start:stop] = results[index][0]
        count[start:stop] += 1
    if not bool((count == 1).all()):
        raise RuntimeError("Edges were not each scored exactly once.")
    meta = {"method": "exact", "direction": direction,
            "sign_convention": SIGN_CONVENTIONS[direction],
            "method_sign": "metric(run with the edge patched) - metric(run)",
            "metric": f"{task.metric_description}, at each sample's last real token",
            "metric_name": task.metric_name,
            "model": str(model.cfg.model_name), "task": task.describe(), "components": [EDGES],
            "graph": graph.as_dict(), "settings": {"max_batch_rows": plan.rows},
            "sharding": sharding, "seconds": sharding["seconds"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return Scores(values={EDGES: out}, meta=meta)
