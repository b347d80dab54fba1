"""Edge methods with the last block at the answer position only, against every position.

The edge passes (``eap``, ``eap-ig``, ``eap-ig-act``, ``exact``) read the metric at each row's
answer position, so the forward computes the last block's queries, attention output and MLP
there only (the keys and values of every position, which the answer's query reads, are still
computed: :mod:`attrscope.arch.forward`). This benchmark times each method both ways in one
process, alternately (``--repeats`` pairs, CPU clock: one thread, the time this process runs),
on the random GPT-2-shaped medium model of ``benchmarks/families_speed.py`` (8 layers,
d_model 512, 8 heads, d_mlp 2048) and ``--n`` IOI prompts, denoising; "every position" is the
same code with the forward's answer-only decision refused. It prints the median ratio (every
position / answer only) with its range, and the largest difference between the two ways' scores.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/edges_last_block.py --n 8 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import attrscope  # noqa: E402
from attrscope.arch import forward  # noqa: E402
from attrscope.edges.methods import (EdgeRun, eap_ig_activations_scores, eap_scores,  # noqa: E402
                                     exact_scores)
from families import build  # noqa: E402


def every_position(run):
    """``run()`` with the forward computing every position of the last block."""
    answer_only = forward._answer_only
    forward._answer_only = lambda edits, n_layers, at: None
    try:
        return run()
    finally:
        forward._answer_only = answer_only


def timed(run):
    t0 = time.process_time()
    out = run()
    return out, time.process_time() - t0


def side_by_side(new_run, old_run, repeats: int, labels: tuple[str, str]) -> str:
    """Times ``new_run()`` and ``old_run()`` alternately ``repeats`` times (CPU clock): the
    median times, the median ratio old / new with its range, and the largest difference of
    their results relative to the old one's largest value (at least 1)."""
    pairs, worst = [], 0.0
    for _ in range(repeats):
        new, t_new = timed(new_run)
        old, t_old = timed(old_run)
        pairs.append((t_new, t_old))
        scale = max(1.0, float(old.abs().max()))
        worst = max(worst, float((new - old).abs().max()) / scale)
    ratios = sorted(o / n for n, o in pairs)
    t_new, t_old = (statistics.median(t) for t in zip(*pairs))
    return (f"{labels[0]} {t_new:7.2f}s  {labels[1]} {t_old:7.2f}s  "
            f"x{statistics.median(ratios):.2f} (range {ratios[0]:.2f}-{ratios[-1]:.2f})  "
            f"max |diff| / scale {worst:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8, help="prompt pairs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="eap-ig / eap-ig-act steps")
    parser.add_argument("--stride", type=int, default=8, help="exact on every stride-th edge")
    parser.add_argument("--methods", default="eap,eap-ig,eap-ig-act,exact")
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, cpu clock, load average {os.getloadavg()}",
          flush=True)
    torch.manual_seed(0)
    folder = tempfile.mkdtemp()
    build("gpt2", folder, size="medium")
    model = attrscope.load_model(folder, dtype="float32")
    task = attrscope.load_task("ioi", model, n=args.n, seed=0)
    er = EdgeRun.prepare(model, task, "denoising")
    sets = [[e] for e in range(0, er.graph.n_edges, args.stride)]
    runs = {"eap": lambda: eap_scores(er, 64),
            "eap-ig": lambda: eap_scores(er, 64, steps=args.steps),
            "eap-ig-act": lambda: eap_ig_activations_scores(er, args.steps, 64),
            "exact": lambda: exact_scores(er, sets, 64)}
    print(f"{er.graph.n_edges} edges, {args.n} prompts of {task.clean_tokens.shape[1]} tokens; "
          f"exact on {len(sets)} edges (every {args.stride}th)")
    runs["eap"]()  # warm-up (allocator, kernels)
    for name in args.methods.split(","):
        run = runs[name]
        line = side_by_side(run, lambda: every_position(run), args.repeats,
                            ("answer only", "every position"))
        print(f"{name:11s} {line}", flush=True)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
