"""Throughput of ``attrscope sweep`` with 1 and 2 Ray workers, and Ray's overhead per job.

The sweep: ``--jobs`` jobs of ``ig`` (heads and neurons, ``--n`` prompt pairs of IOI, one seed
per job) on the embedded model, about 10 s each on one core. For each worker count it starts a
local Ray cluster of that many CPUs (one CPU per job), warms the workers up (each imports
attrscope and loads the model once, as every sweep's first job on a worker must), then times
the sweep into an empty store. Printed:

- wall time of the sweep with 1 and 2 workers and the throughput ratio (1-worker wall / 2-worker);
- the mean time inside a job (model from the worker's cache, task, method, saving the result),
  and the share of a core the job got (its process CPU time / its wall time): on a machine whose
  cores other processes use, a second worker may get no second core, and the ratio shows that;
- Ray overhead per job: (1-worker wall - sum of in-job times) / jobs, i.e. scheduling, passing
  the job and its record, and the driver's bookkeeping; and the round trip of an empty Ray task.
- the machine's load average before and after (the figures are only comparable at equal load).

Usage:
    python benchmarks/sweep_scaling.py                 # 6 jobs, n=16
    python benchmarks/sweep_scaling.py --jobs 4 --n 8
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import ray

from attrscope.sweep import cached_model, expand_grid, quiet_loading, run_sweep


def warm(_: int) -> int:
    """Import attrscope and load the embedded model in this worker (its cache keeps it)."""
    quiet_loading()
    cached_model(None, "cpu", "float32")
    time.sleep(1.0)  # so that each worker takes one warm-up task
    return os.getpid()


def empty() -> None:
    return None


def timed_sweep(workers: int, jobs, log) -> tuple[float, list[dict]]:
    ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False)
    try:
        remote = ray.remote(warm).options(num_cpus=1)
        pids = set(ray.get([remote.remote(i) for i in range(2 * workers)]))
        log(f"{workers} worker(s) warm: pids {sorted(pids)}")
        with tempfile.TemporaryDirectory() as store:
            started = time.perf_counter()
            outcome = run_sweep(jobs, store, show_progress=False, log=lambda s: None)
            wall = time.perf_counter() - started
        failed = [r["error"] for r in outcome.records.values() if r["status"] != "done"]
        if failed:
            raise RuntimeError(f"jobs failed: {failed}")
        return wall, list(outcome.records.values())
    finally:
        ray.shutdown()


def round_trip(samples: int = 50) -> float:
    """Mean seconds of one empty Ray task, submitted and fetched one at a time."""
    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False)
    try:
        remote = ray.remote(empty)
        ray.get(remote.remote())  # start the worker
        started = time.perf_counter()
        for _ in range(samples):
            ray.get(remote.remote())
        return (time.perf_counter() - started) / samples
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--method", default="ig")
    args = parser.parse_args()
    grid = {"tasks": ["ioi"], "methods": [args.method], "directions": ["denoising"],
            "components": ["heads", "neurons"], "n": args.n, "seeds": list(range(args.jobs))}
    jobs = expand_grid(grid)
    load_before = os.getloadavg()
    walls, inside = {}, {}
    for workers in (1, 2):
        walls[workers], inside[workers] = timed_sweep(workers, jobs, print)
    trip = round_trip()
    load_after = os.getloadavg()
    print(f"{len(jobs)} jobs of {args.method} (heads+neurons, IOI n={args.n}, embedded model), "
          f"one CPU each; {os.cpu_count()} CPUs")
    for workers, records in inside.items():
        wall = sum(r["seconds"] for r in records) / len(records)
        share = sum(r["cpu_seconds"] for r in records) / sum(r["seconds"] for r in records)
        print(f"{workers} worker(s): mean time inside a job {wall:.2f} s, {share:.0%} of a core "
              f"(torch threads {records[0]['torch_threads']})")
    print(f"wall 1 worker: {walls[1]:.1f} s   wall 2 workers: {walls[2]:.1f} s   "
          f"throughput ratio: {walls[1] / walls[2]:.2f}x")
    print(f"Ray overhead per job (1-worker wall - sum of in-job times) / jobs: "
          f"{(walls[1] - sum(r['seconds'] for r in inside[1])) / len(jobs):.3f} s; empty task "
          f"round trip: "
          f"{1000 * trip:.1f} ms")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
          "(1-minute; other processes share the CPUs)")


if __name__ == "__main__":
    main()
