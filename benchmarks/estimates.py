"""Pre-run time estimates against measured times, per command, in one process.

For the embedded model or a real shape (random weights, :mod:`real_shapes`), each row runs what
a command runs, after printing what the command would estimate first:

- ``attribute --method M`` (heads and neurons, denoising): :func:`attrscope.estimate.estimate_seconds`
  against :func:`attrscope.attribute` (``attribute-heads``: heads only; ``ap`` at a real shape
  is screened, ``--screen-top-k`` + ``--screen-audit`` per kind, 100 + 100 by default);
- ``edges --method M``: the same for the edge methods;
- ``compare``: :func:`attrscope.analysis.budget.job_seconds` of the plan ``compare`` chooses
  against :func:`attrscope.analysis.compare.compare` (``--n-boot``, ``--n-random`` as given);
- ``verify:N``: the verification's ablated passes alone: :func:`attrscope.estimate.ablation_seconds`
  against an :class:`attrscope.analysis.ablation.Ablator` (``how="other"``, heads and neurons)
  evaluating N random sets of 10 units of each kind plus three large sets per kind (all but the
  first 10, 100, 1000 units), as ``compare``'s verification draws them.

The estimate's timed forward is measured once per model (as each command does it once).
``old_estimate_s`` is the estimate commands printed before (counted passes times one cold
forward's time per prompt), for comparison.

Memory: ``estimate_gib`` is :func:`attrscope.estimate.estimate_bytes` (caches, scores, the
largest pass as the method sizes it, and the adapter's q/k/v matrices side by side where the
process has not made them yet; for ``compare`` each direction's runs' caches, every
result's scores and the largest pass), against ``peak_gib``; ``plan_gib`` is what the memory plan allows the call beyond the weights, before it
starts: :func:`attrscope.engine.memory_plan` (caches, the unbatched forward, the scores) plus
the batched passes' budget (the default ``max_memory``: at most 2 GiB on the CPU), against
``peak_gib``, the resident set's peak above its level before the call.

Usage (each under ~3 minutes on a shared 2-core CPU):
    python benchmarks/estimates.py --shape embedded --n 20
    python benchmarks/estimates.py --shape gpt2-small --n 4 --rows "attribute:atp,attribute:ap,edges:eap"
    python benchmarks/estimates.py --shape llama-3.2-1b --dtype bfloat16 --n 1 --cache /tmp/rs4 \
        --rows "edges:eap,verify:150"
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attrscope  # noqa: E402
from attrscope.arch import forget_adapters  # noqa: E402
from attrscope.analysis.budget import budgeted, job_seconds  # noqa: E402
from attrscope.analysis.compare import CompareSettings, compare  # noqa: E402
from attrscope.estimate import (estimate_bytes, estimate_seconds, node_passes,  # noqa: E402
                                seconds_per_sample_pass, timed_forward)
from attrscope.components import KINDS  # noqa: E402
from attrscope.engine import default_memory_budget, memory_plan  # noqa: E402
from attrscope.registry import get_method  # noqa: E402
from compare_references import timed  # noqa: E402
from real_shapes import save_shape  # noqa: E402

ROWS = ("attribute:ap,attribute:atp,attribute:ig,attribute:atpstar,edges:eap,edges:eap-ig,"
        "compare:default")
# small settings where a method's default would take minutes at real shapes
SETTINGS = {"ig": {"n_steps": 5}, "eap-ig": {"n_steps": 5}, "eap-ig-act": {"n_steps": 3}}
# ap on every neuron of a real shape takes hours here: screened (``attribute-heads:ap`` is exact)
SCREENED = {"screen": "atp", "screen_top_k": 100, "screen_audit": 100}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="embedded", help="embedded, or a real_shapes.py shape")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rows", default=ROWS, help="comma-separated COMMAND:METHOD")
    parser.add_argument("--n-boot", type=int, default=200, help="compare's bootstrap resamples")
    parser.add_argument("--n-random", type=int, default=20, help="compare's random sets per size")
    parser.add_argument("--budget", type=float, default=900.0, help="compare's budget, seconds")
    parser.add_argument("--n-steps", type=int, default=5, help="compare's ig steps")
    parser.add_argument("--screen-top-k", type=int, default=100, help="screened ap's top K")
    parser.add_argument("--screen-audit", type=int, default=100, help="screened ap's audit")
    parser.add_argument("--exact-every", type=int, default=1,
                        help="exact edges: time every K-th of its passes and scale (K > 1)")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = None if args.shape == "embedded" else str(save_shape(
            args.shape, (args.cache or Path(tmp)) / f"{args.shape}-{args.dtype}", args.dtype))
        model = attrscope.load_model(path, dtype=args.dtype)
        task = attrscope.load_task("ioi", model, n=args.n)
        # the estimate before issue 26: counted passes x one cold forward's time per prompt
        old_per_pass = seconds_per_sample_pass(model, task.clean_tokens)
        per_pass = timed_forward(model, task.clean_tokens)
        print(json.dumps({"timed_forward_s_per_prompt": round(per_pass, 4),
                          "fixed_s_per_pass": round(per_pass.fixed, 3),
                          "own_forward_s_per_prompt": round(per_pass.own, 4)}), flush=True)
        rows = []
        budget = default_memory_budget(task.clean_tokens.device)
        for item in args.rows.split(","):
            command, _, method = item.partition(":")
            # each row as a process's first call: the adapter's working copies (a half-precision
            # model's float32 unembedding, the q/k/v matrices side by side) are forgotten before
            # its memory is estimated and again before the call, which makes them again
            if command == "verify":
                rows.append(verification_row(model, task, int(method), per_pass, args))
                continue
            if command == "compare":
                given = {"n_steps": args.n_steps}
                plan = CompareSettings(n_boot=args.n_boot, n_random=args.n_random,
                                       budget=args.budget, method_settings=given)
                chosen, line, info = budgeted(model, task, plan)
                estimate = job_seconds(model, task, chosen, per_pass)
                print(line, json.dumps(info.get("parts_s")), flush=True)
                # memory estimated before the call: a first call makes what later ones reuse
                what = f"compare ({line.split(';')[0].split(',')[0].removeprefix('plan: ')})"
                kinds, results = ["heads", "neurons"], 2 * len(chosen.methods)
                # one run per direction and granularity stays; one method's passes at a time
                NODE = [m for m in chosen.methods if get_method(m).granularity == "node"]
                forget_adapters(model)  # as not made yet (planning makes them)
                each = [estimate_bytes(model, task, m, chosen.settings_of(m),
                                       kinds if m in NODE else [], budget)
                        for m in chosen.methods]
                expected = len(chosen.directions) * sum(
                    max((e["caches"] for e, m in zip(each, chosen.methods)
                         if (m in NODE) == node), default=0)
                    for node in (True, False)) + sum(e["scores"] for e in each) * 2 \
                    + max(e["passes"] + e.get("cast", 0) for e in each) \
                    + max(e.get("working_copy", 0) for e in each) \
                    + max(e.get("fused", 0) for e in each)
                forget_adapters(model)
                _, seconds = timed(lambda: compare(
                    model, task, n_boot=args.n_boot, n_random=args.n_random,
                    budget=args.budget, method_settings=given, show_progress=False,
                    log=lambda _: None))
                old = 2 * sum(node_passes(m, given, model.cfg, task.n, ["heads", "neurons"])
                              for m in plan.methods) * old_per_pass
            else:
                kinds = {"edges": [], "attribute-heads": ["heads"]}.get(command,
                                                                         ["heads", "neurons"])
                results = 1
                settings = SETTINGS.get(method, {})
                if method == "ap" and command == "attribute" and args.shape != "embedded":
                    settings = {**SCREENED, "screen_top_k": args.screen_top_k,
                                "screen_audit": args.screen_audit}
                estimate = estimate_seconds(model, task, method, settings, kinds, per_pass=per_pass)
                forget_adapters(model)  # as not made yet (estimating the time makes them)
                expected = sum(estimate_bytes(model, task, method, settings, kinds,
                                              budget).values())
                forget_adapters(model)
                if method == "exact" and args.exact_every > 1:
                    seconds = sampled_exact_seconds(model, task, args.exact_every)
                else:
                    _, seconds = timed(lambda: attrscope.attribute(
                        model, task, method, "denoising", kinds or "heads", show_progress=False,
                        **settings))
                old = node_passes(method, settings, model.cfg, task.n, kinds) * old_per_pass
                what = f"{command} --method {method}" + "".join(
                    f" --{k.replace('_', '-')} {v}" for k, v in settings.items())
            planned = sum(memory_plan(model, task.n, int(task.clean_tokens.shape[1]),
                                      [KINDS[k] for k in kinds], results).values())
            planned += budget
            row = {"shape": args.shape, "dtype": args.dtype, "n": task.n, "command": what,
                   "estimate_s": round(estimate, 1),
                   "actual_s": round(seconds, 1), "ratio": round(estimate / seconds, 2),
                   "old_estimate_s": round(old, 1), "old_ratio": round(old / seconds, 2),
                   "peak_gib": round(timed.peak / 2**30, 2), "plan_gib": round(planned / 2**30, 2),
                   "plan_over_peak": round(planned / max(timed.peak, 1), 2),
                   "estimate_gib": round(expected / 2**30, 2),
                   "estimate_over_peak": round(expected / max(timed.peak, 1), 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


def sampled_exact_seconds(model, task, every: int) -> float:
    """Seconds of ``edges --method exact`` from every ``every``-th of its passes (the same
    passes, in the same chunks, as :func:`attrscope.edges.methods.exact_scores` makes them),
    scaled by the passes left out, plus its setup (the run, the source and their streams) in
    full. ``timed.peak`` is left at the largest of the parts' peaks."""
    from attrscope.edges.methods import EdgeRun, _exact_pass, edge_rows_per_pass
    from attrscope.engine import copies_per_pass
    from attrscope.estimate import exact_pass_ranges
    from attrscope.registry import get_method

    def setup():
        run = EdgeRun.prepare(model, task, "denoising")
        run.stream("run", 0)
        return run

    er, seconds = timed(setup)
    peak = timed.peak
    budget = default_memory_budget(task.clean_tokens.device)
    rows = edge_rows_per_pass(er, {"max_memory": budget, "max_batch_rows": None}, backward=False)
    copies, n_edges = copies_per_pass(rows, task.n), er.graph.n_edges
    passes = exact_pass_ranges(n_edges, copies)
    chosen = passes[every // 2::every]
    with torch.no_grad():
        _, sampled = timed(lambda: [_exact_pass(er, [[e] for e in edges]) for edges in chosen])
    timed.peak = max(peak, timed.peak)
    print(json.dumps({"exact_passes": len(passes), "timed": len(chosen), "setup_s": round(seconds, 2),
                      "sampled_s": round(sampled, 2)}), flush=True)
    return seconds + sampled * len(passes) / len(chosen)


def verification_row(model, task, n_sets: int, per_pass: float, args) -> dict:
    """``ablation_seconds`` against an Ablator's passes on ``n_sets`` random sets of 10 units of
    each kind and three large ones per kind (the sets compare's verification draws)."""
    from attrscope.analysis.ablation import Ablator, all_components
    from attrscope.analysis.verify import null_sets
    from attrscope.estimate import ablation_seconds

    ablator = Ablator(model, task, how="other", run="clean", kinds=["heads", "neurons"])
    sets = []
    for kind in ("heads", "neurons"):
        sets += null_sets(kind, model.cfg, 10, n_sets, 0)[0]
        pool = all_components(kind, model.cfg)
        sets += [pool[k:] for k in (10, 100, 1000) if k < len(pool)]
    ablator.base  # noqa: B018 - the unablated run, made before the timed passes
    estimate = ablation_seconds(model, task, len(sets), "other", per_pass)
    _, seconds = timed(lambda: ablator.metrics(sets))
    row = {"shape": args.shape, "dtype": args.dtype, "n": task.n,
           "command": f"verification: {len(sets)} ablated sets", "estimate_s": round(estimate, 1),
           "actual_s": round(seconds, 1), "ratio": round(estimate / seconds, 2),
           "peak_gib": round(timed.peak / 2**30, 2)}
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - started:.0f} s")
