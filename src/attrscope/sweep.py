"""``attrscope sweep``: a grid of models x tasks x methods x directions x seeds, each job a Ray
task, results in a keyed store that a rerun, ``compare`` and :func:`load_sweep` read.

The store (a local folder or any ``fsspec`` URL, e.g. ``s3://bucket/sweep``) holds::

    results/<method>-<direction>-<key[:16]>.safetensors   one Scores per result (compare's layout)
    jobs/<job key>.json                                   one record per finished or failed job
    sweep.json                                            the manifest of the last sweep

A result's key is :func:`attrscope.analysis.compare.result_key`: the model's weights, the task's
tokens and answers, method, direction, components, settings (batching left out), dtype, device
and attrscope version, so ``attrscope compare --from-sweep STORE`` reuses it. A job's key is a
cheap one computed without loading anything (the job's spec, the model folder's and task file's
sizes and times, attrscope's version): a rerun skips every job whose record says ``done``.

Ray is optional (``pip install attrscope[ray]``); reading a store (:func:`load_sweep`) needs only
``fsspec``. The one place that calls attrscope's methods is :func:`run_method` (an adapter, so
that sweeps survive changes of the engine behind ``attribute`` and ``attribute_edges``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import tomllib
import traceback
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable

from ._version import __version__
from .keys import model_fingerprint, result_key, result_name, task_fingerprint  # noqa: F401
from .registry import current_names
from .scores import Scores

GRID_KEYS = {"models", "tasks", "methods", "directions", "components", "n", "seeds", "settings",
             "device", "dtype", "metric", "ray"}
RAY_KEYS = {"address", "num_cpus", "num_gpus", "store"}


def node_methods() -> dict:
    from .methods import methods_of

    return methods_of("node")


def edge_methods() -> dict:
    from .methods import methods_of

    return methods_of("edge")


def method_defaults(method: str) -> dict:
    """Every setting ``method`` accepts, with its default (the method registry's)."""
    from .methods import METHODS

    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose from {sorted(METHODS)}.")
    return dict(METHODS[method].defaults)


# -- jobs and the grid -----------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One result: ``model`` ("default": the embedded model that performs the task), ``task`` (a
    name or a .csv/.jsonl file), ``method``, ``direction``, ``components`` (node methods; edge
    methods score ``("edges",)``), ``n``, ``seed``, and the method's ``settings`` as sorted JSON."""

    model: str
    task: str
    method: str
    direction: str
    components: tuple[str, ...]
    n: int | None
    seed: int
    settings_json: str = "{}"
    device: str = "cpu"
    dtype: str = "float32"
    metric: str | None = None

    @property
    def settings(self) -> dict:
        return json.loads(self.settings_json)

    @property
    def is_edge(self) -> bool:
        return self.method in edge_methods()

    @property
    def label(self) -> str:
        extra = f" {self.settings_json}" if self.settings else ""
        return (f"{self.model} {self.task} n={self.n} seed={self.seed} {self.method} "
                f"{self.direction} {'+'.join(self.components)}{extra}")

    def spec(self) -> dict:
        return {**asdict(self), "components": list(self.components), "settings": self.settings}

    @classmethod
    def from_spec(cls, spec: dict) -> "Job":
        fields = {k: v for k, v in spec.items() if k != "settings"}
        return cls(**{**fields, "components": tuple(fields["components"])})

    @cached_property
    def key(self) -> str:
        """Cheap key of everything that makes the result, computed without loading anything."""
        payload = {**self.spec(), "attrscope": __version__,
                   "model_files": _files_stamp(model_folder(self.model, self.task)),
                   "task_file": _files_stamp(Path(self.task)) if _is_file(self.task) else None}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _is_file(name: str) -> bool:
    return Path(name).suffix.lower() in (".csv", ".jsonl")


def model_folder(model: str, task: str) -> Path | None:
    """The local folder ``model`` loads from (None for a hub name)."""
    from .models import DEFAULT_MODEL_DIR, TASK_MODEL_DIR, TASK_MODEL_NAME

    name = resolve_model(model, task)
    if name is None:
        return DEFAULT_MODEL_DIR
    if name == TASK_MODEL_NAME:
        return TASK_MODEL_DIR
    return Path(name).expanduser() if Path(name).expanduser().is_dir() else None


def resolve_model(model: str, task: str) -> str | None:
    """``model`` as :func:`attrscope.models.load_model` takes it; "default" is the embedded model
    that performs ``task`` (as the CLI's default)."""
    from .tasks import GENERATED_TASKS

    if model != "default":
        return model
    return GENERATED_TASKS[task].model if task in GENERATED_TASKS else None


def _files_stamp(path: Path | None) -> list | None:
    """(name, size, mtime) of the files of a folder or of one file: changes when they change."""
    if path is None or not path.exists():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _as_list(value, name: str, where: str) -> list:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"{where}: '{name}' is empty.")
    return items


def expand_grid(grid: dict, where: str = "grid") -> list[Job]:
    """The jobs of a grid (the TOML file's keys, see :func:`load_grid`), validated. Names of
    models and tasks are checked only when a job runs, so that one bad one fails alone."""
    from .components import KINDS
    from .engine import DIRECTIONS

    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(GRID_KEYS)}.")
    methods = _as_list(grid.get("methods", ["ap", "atp", "ig"]), "methods", where)
    for m in methods:
        method_defaults(m)
    directions = _as_list(grid.get("directions", list(DIRECTIONS)), "directions", where)
    bad = [d for d in directions if d not in DIRECTIONS]
    components = _as_list(grid.get("components", ["heads", "neurons"]), "components", where)
    bad += [c for c in components if c not in KINDS]
    if bad:
        raise ValueError(f"{where}: unknown direction(s)/component(s) {bad}; choose from "
                         f"{list(DIRECTIONS)} and {sorted(KINDS)}.")
    settings = grid.get("settings", {})
    _check_settings(settings, methods, where)
    n = grid.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"{where}: n must be a positive integer, got {n!r}.")
    seeds = _as_list(grid.get("seeds", [0]), "seeds", where)
    if grid.get("metric") is not None:  # a bad name or import path fails here, not in each job
        from .tasks.metrics import MetricError, check_metric

        try:
            check_metric(grid["metric"])
        except MetricError as e:
            raise ValueError(f"{where}: {e}") from None
    common = {"n": n, "device": grid.get("device", "cpu"), "dtype": grid.get("dtype", "float32"),
              "metric": grid.get("metric")}
    return [Job(model, task, m, d, ("edges",) if m in edge_methods() else tuple(components),
                seed=seed, settings_json=json.dumps(settings.get(m, {}), sort_keys=True),
                **common)
            for model in _as_list(grid.get("models", ["default"]), "models", where)
            for task in _as_list(grid.get("tasks", ["ioi"]), "tasks", where)
            for seed in seeds for m in methods for d in directions]


def _check_settings(settings: dict, methods: list[str], where: str) -> None:
    """Every ``[settings.METHOD]`` names a method of the grid and settings it takes."""
    for m, given in settings.items():
        if m not in methods:
            raise ValueError(f"{where}: [settings.{m}] names a method that is not in the grid.")
        settings[m] = given = current_names(given, method_defaults(m))
        extra = sorted(set(given) - set(method_defaults(m)))
        if extra:
            raise ValueError(f"{where}: [settings.{m}] has unknown setting(s) {extra}; "
                             f"{m} takes {sorted(method_defaults(m))}.")


def load_grid(path: str | Path) -> dict:
    """A grid from a TOML file: lists ``models`` (default ``["default"]``), ``tasks``,
    ``methods``, ``directions``, ``components``, ``seeds``; ``n``, ``device``, ``dtype``,
    ``metric``; tables ``[settings.METHOD]`` and ``[ray]`` (``address``, ``num_cpus``,
    ``num_gpus``, ``store``)."""
    path = Path(path)
    try:
        grid = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"grid file {path}: {e}") from None
    extra = sorted(set(grid.get("ray", {})) - RAY_KEYS)
    if extra:
        raise ValueError(f"grid file {path}: [ray] has unknown key(s) {extra}; allowed: "
                         f"{sorted(RAY_KEYS)}.")
    expand_grid(grid, f"grid file {path}")
    return grid


def parse_setting(text: str) -> tuple[str, str, Any]:
    """``METHOD.NAME=VALUE`` (VALUE in TOML syntax, else a string) -> (method, name, value)."""
    target, sep, raw = text.partition("=")
    method, dot, name = target.strip().partition(".")
    if not sep or not dot or not name:
        raise ValueError(f"--set {text!r}: write METHOD.SETTING=VALUE, e.g. ig.n_steps=20.")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return method, name.strip(), value


# -- the store -------------------------------------------------------------------------------

class ResultStore:
    """A folder or fsspec URL of results (see the module docstring). Every write is whole: a
    reader never sees half a file (local files are renamed into place; object stores put whole
    objects)."""

    def __init__(self, url: str | os.PathLike):
        import fsspec

        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = "file" in _protocols(self.fs)

    def path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_json(self, rel: str) -> dict | None:
        if not self.exists(rel):
            return None
        with self.fs.open(self.path(rel), "r") as f:
            return json.load(f)

    def write_json(self, rel: str, obj: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "x.json"
            local.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
            self._put(local, rel)

    def save_scores(self, rel: str, scores: Scores) -> None:
        if self.local:
            scores.save(self.path(rel))  # atomic already
            return
        with tempfile.TemporaryDirectory() as tmp:
            self._put(scores.save(Path(tmp) / "x.safetensors"), rel)

    def load_scores(self, rel: str) -> Scores:
        if self.local:
            return Scores.load(self.path(rel))
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "x.safetensors"
            self.fs.get_file(self.path(rel), str(local))
            return Scores.load(local)

    def list(self, folder: str) -> list[str]:
        if not self.exists(folder):
            return []
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self.path(folder), detail=False))

    def _put(self, local: Path, rel: str) -> None:
        target = self.path(rel)
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        if self.local:  # copy next to the target, then rename: atomic on one file system
            tmp = f"{target}.{os.getpid()}.tmp"
            self.fs.put_file(str(local), tmp)
            os.replace(tmp, target)
        else:
            self.fs.put_file(str(local), target)


def _protocols(fs) -> tuple:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def record_path(job: Job) -> str:
    return f"jobs/{job.key}.json"


# -- running one job (the adapter to attrscope's methods) -------------------------------------

def run_method(model, task, method: str, direction: str, components: Iterable[str],
               settings: dict) -> Scores:
    """The one call into attrscope's methods, node and edge alike: :func:`attrscope.attribute`."""
    from .api import attribute

    return attribute(model, task, method, direction, list(components), show_progress=False,
                     **settings)


def result_key_for(model, task, job: Job, fingerprints: tuple[str, str]) -> str:
    """compare's key of this job's result (resolved settings, as compare resolves them)."""

    settings = {**method_defaults(job.method), **job.settings}
    return result_key(*fingerprints, job.method, job.direction, list(job.components), settings,
                      str(next(model.parameters()).dtype), str(task.clean_tokens.device))


_MODEL_CACHE: dict[tuple, tuple] = {}  # one model per worker process, reused by its next jobs


def cached_model(name: str | None, device: str, dtype: str):
    """(model, weight fingerprint), loaded once per worker process for consecutive jobs."""
    from .models import load_model

    key = (name, device, dtype)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # one replica per worker: free the last model first
        model = load_model(name, device=device, dtype=dtype)
        _MODEL_CACHE[key] = (model, model_fingerprint(model))
    return _MODEL_CACHE[key]


def quiet_loading() -> None:
    """No download/weight-loading progress bars from worker processes."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def execute_job(spec: dict, store_url: str, job_key: str | None = None) -> dict:
    """Run one job (a Ray task's body; also callable in-process), save its result and record.
    Returns the record: status ``done`` (with ``result``, ``key``, ``seconds``) or ``failed``
    (with ``error``). Never raises for the job's own errors, so the sweep goes on. ``job_key``:
    the driver's :attr:`Job.key` (a worker on another machine may see other file times)."""
    from .tasks import load_task

    quiet_loading()
    import torch

    job, store = Job.from_spec(spec), ResultStore(store_url)
    started, cpu_started = time.perf_counter(), time.process_time()
    record = {"job": job.spec(), "label": job.label, "host": os.uname().nodename,
              "pid": os.getpid(), "torch_threads": torch.get_num_threads()}
    try:
        model, model_fp = cached_model(resolve_model(job.model, job.task), job.device, job.dtype)
        task = load_task(job.task, model, n=job.n, seed=job.seed, metric=job.metric)
        key = result_key_for(model, task, job, (model_fp, task_fingerprint(task)))
        name = f"results/{result_name(job.method, job.direction, key)}"
        if store.exists(name):
            record["reused"] = True  # made by another job with the same inputs
        else:
            scores = run_method(model, task, job.method, job.direction, job.components,
                                job.settings)
            scores.meta["cache_key"] = key
            scores.meta["sweep_job"] = job.spec()
            store.save_scores(name, scores)
        record.update(status="done", key=key, result=name)
    except Exception as e:  # noqa: BLE001 - any failure of a job is reported, the sweep goes on
        record.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0],
                      traceback=traceback.format_exc(limit=8))
    record["seconds"] = round(time.perf_counter() - started, 3)
    record["cpu_seconds"] = round(time.process_time() - cpu_started, 3)  # < seconds: CPU-starved
    store.write_json(f"jobs/{job_key or job.key}.json", record)
    return record


# -- the driver ------------------------------------------------------------------------------

def require_ray():
    """The ray module, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("Sweeps and sharding run on Ray, which is not installed: "
                          "pip install 'attrscope[ray]'.") from None
    return ray


def connect(address: str | None = "local", num_cpus: int | None = None,
            num_gpus: int | None = None) -> bool:
    """Start or join Ray: ``local`` (an in-process cluster of ``num_cpus``/``num_gpus``), ``auto``
    (the cluster this machine belongs to) or ``ray://host:port``. Returns True when it started
    the connection (so the caller shuts it down), False when Ray was already initialised."""
    ray = require_ray()

    if ray.is_initialized():
        return False
    if address in (None, "", "local"):
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 log_to_driver=True, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=True)
    return True


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did: ``records[job key]`` for every job of the grid."""

    jobs: list[Job]
    records: dict[str, dict]
    skipped: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.records.values() if r.get("status") == status)


def run_sweep(jobs: list[Job], store_url: str, *, address: str | None = "local",
              num_cpus: float = 1, num_gpus: float = 0, show_progress: bool = True,
              log: Callable[[str], None] = print, grid: dict | None = None) -> SweepOutcome:
    """Run every job not already done in the store as a Ray task with ``num_cpus``/``num_gpus``
    each; show one progress line; report failures as they come; write ``sweep.json``. Failed
    jobs run again; ``address="local"`` starts a cluster of all this machine's CPUs."""
    ray = require_ray()
    store = ResultStore(store_url)
    started = time.perf_counter()
    records, todo, skipped = {}, [], []
    recorded = set(store.list("jobs"))  # one listing, then only the records that exist are read
    for job in dict.fromkeys(jobs):  # a job listed twice runs once
        old = store.read_json(record_path(job)) if f"{job.key}.json" in recorded else None
        if old and old["status"] == "done":
            records[job.key] = old
            skipped.append(job.key)
        else:
            todo.append(job)
    log(f"sweep: {len(records) + len(todo)} jobs, {len(skipped)} already in {store.url}, "
        f"{len(todo)} to run")
    if todo:  # nothing to run: no need to start or join Ray
        own = connect(address)
        try:
            records.update(_run_remote(todo, store.url, num_cpus, num_gpus, show_progress, log))
        finally:
            if own:
                ray.shutdown()
    outcome = SweepOutcome(list(dict.fromkeys(jobs)), records, skipped,
                           round(time.perf_counter() - started, 3))
    write_manifest(store, outcome, grid, address)
    return outcome


def _run_remote(todo: list[Job], store_url: str, num_cpus: float, num_gpus: float,
                show_progress: bool, log: Callable[[str], None]) -> dict[str, dict]:
    """Submit ``todo`` and collect records as they finish, with the progress line."""
    import ray
    from tqdm import tqdm

    remote = ray.remote(execute_job).options(num_cpus=num_cpus, num_gpus=num_gpus,
                                            max_retries=2)
    pending = {remote.remote(job.spec(), store_url, job.key): job for job in todo}
    slots = _slots(num_cpus, num_gpus)
    records: dict[str, dict] = {}
    failed = 0
    with tqdm(total=len(todo), desc="sweep", unit="job", disable=not show_progress,
              dynamic_ncols=True) as bar:
        bar.set_postfix(running=min(len(pending), slots), failed=0)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                record = ray.get(ready[0])
            except ray.exceptions.RayError as e:  # the worker died, retries exhausted
                record = {"job": job.spec(), "label": job.label, "status": "failed",
                          "error": f"{type(e).__name__}: {e}".splitlines()[0]}
                ResultStore(store_url).write_json(record_path(job), record)
            records[job.key] = record
            if record["status"] == "failed":
                failed += 1
                (bar.write if show_progress else log)(f"FAILED {job.label}: {record['error']}")
            bar.update(1)
            bar.set_postfix(running=min(len(pending), slots), failed=failed)
    return records


def _slots(num_cpus: float, num_gpus: float) -> int:
    """How many jobs the cluster runs at once (the progress line's 'running')."""
    import ray

    resources = ray.cluster_resources()
    fits = [resources.get("CPU", 0) / num_cpus] if num_cpus else []
    fits += [resources.get("GPU", 0) / num_gpus] if num_gpus else []
    return max(1, int(min(fits))) if fits else 1


def write_manifest(store: ResultStore, outcome: SweepOutcome, grid: dict | None,
                   address: str | None) -> None:
    jobs = []
    for job in outcome.jobs:
        record = outcome.records.get(job.key, {})
        jobs.append({"label": job.label, "job": job.spec(), "job_key": job.key,
                     "status": record.get("status", "missing"), "result": record.get("result"),
                     "key": record.get("key"), "seconds": record.get("seconds"),
                     "error": record.get("error"),
                     "skipped": job.key in outcome.skipped})
    store.write_json("sweep.json", {
        "attrscope": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "store": store.url, "ray_address": address, "grid": grid,
        "wall_seconds": outcome.wall_seconds,
        "totals": {"jobs": len(jobs), "done": outcome.count("done"),
                   "failed": outcome.count("failed"), "skipped": len(outcome.skipped)},
        "jobs": jobs})


def summary_table(outcome: SweepOutcome) -> list[str]:
    """One line per job: status, seconds, model, task, method, direction, result or error."""
    lines = [f"{'status':<8} {'seconds':>8}  job -> result"]
    for job in outcome.jobs:
        r = outcome.records.get(job.key, {})
        status = "skipped" if job.key in outcome.skipped else r.get("status", "missing")
        where = r.get("result") if r.get("status") == "done" else r.get("error")
        seconds = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-"
        lines.append(f"{status:<8} {seconds:>8}  {job.label} -> {where}")
    lines.append(f"{len(outcome.jobs)} jobs: {outcome.count('done')} done "
                 f"({len(outcome.skipped)} skipped as already done), {outcome.count('failed')} "
                 f"failed; {outcome.wall_seconds:.1f}s")
    return lines


# -- reading a sweep -------------------------------------------------------------------------

def load_sweep(url: str | os.PathLike, **match) -> dict[Job, Scores]:
    """The finished results of the store at ``url`` (folder or fsspec URL), as ``{Job: Scores}``;
    ``match`` keeps jobs whose fields equal the given values, e.g. ``method="ap"``."""
    store = ResultStore(url)
    out = {}
    for name in store.list("jobs"):
        record = store.read_json(f"jobs/{name}")
        if not record or record.get("status") != "done":
            continue
        job = Job.from_spec(record["job"])
        if all(getattr(job, k) == v for k, v in match.items()):
            out[job] = store.load_scores(record["result"])
    return out


__all__ = ["Job", "ResultStore", "expand_grid", "load_grid", "run_sweep", "load_sweep",
           "summary_table", "connect", "run_method"]
