"""Exact edge passes with only the patched attention slot recomputed, against every slot's copy.

An ``exact`` pass patches one attention input slot per row (one edge per stacked copy of the
batch). It now computes the layer's queries, keys and values once from the shared stream and
recomputes only each row's patched slot (:class:`attrscope.edges.forward.SlotAdditions`); the
every-slot path it replaces gave every slot of the layer its own copy of the stream (zero-fill,
addition, norm and projection of ``n_heads + 2 n_kv_heads`` copies per row). This benchmark
times ``exact_scores`` both ways in one process, alternately (``--repeats`` pairs, CPU clock of
this process: run it with one thread), on the random medium models of
``benchmarks/families_speed.py`` (8 layers, d_model 512, 8 heads, d_mlp 2048; ``llama``: grouped-query,
8 query heads on 2 key/value heads, rotary, RMSNorm, gated MLP) with ``--n``
IOI prompts, denoising. "Every slot" is the same code with each pass's slot additions turned
into the dense per-slot copies before the forward. It prints the median ratio (every slot /
patched slot) with its range, and the largest difference between the two ways' scores.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/edges_slots.py --n 8 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import attrscope  # noqa: E402
from attrscope.edges.forward import EdgeForward, SlotAdditions  # noqa: E402
from attrscope.edges.methods import EdgeRun, exact_scores  # noqa: E402
from edges_last_block import side_by_side  # noqa: E402
from families import build  # noqa: E402


def every_slot(run, n_slots: int):
    """``run()`` with every pass's slot additions given to the forward as dense per-slot copies
    (the path before :class:`SlotAdditions`)."""
    patched = EdgeForward.patched

    def dense(self, resid, answer_pos, readout, add, *args, **kwargs):
        attn = [a.dense(resid.shape[0], n_slots) if isinstance(a, SlotAdditions) else a
                for a in add.attn]
        return patched(self, resid, answer_pos, readout, replace(add, attn=attn), *args, **kwargs)

    EdgeForward.patched = dense
    try:
        return run()
    finally:
        EdgeForward.patched = patched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8, help="prompt pairs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stride", type=int, default=8, help="exact on every stride-th edge")
    parser.add_argument("--families", default="gpt2,llama")
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, cpu clock, load average {os.getloadavg()}, "
          f"{os.cpu_count()} cores", flush=True)
    for family in args.families.split(","):
        torch.manual_seed(0)
        folder = tempfile.mkdtemp()
        build(family, folder, size="medium")
        model = attrscope.load_model(folder, dtype="float32")
        task = attrscope.load_task("ioi", model, n=args.n, seed=0)
        er = EdgeRun.prepare(model, task, "denoising")
        g = er.graph
        sets = [[e] for e in range(0, g.n_edges, args.stride)]
        print(f"{family}: {g.n_layers} layers, {g.n_heads} heads on {g.n_kv_heads} key/value "
              f"heads, {g.n_edges} edges, {args.n} prompts of {task.clean_tokens.shape[1]} "
              f"tokens; exact on {len(sets)} edges (every {args.stride}th)", flush=True)

        def run():
            return exact_scores(er, sets, 64)

        run()  # warm-up (allocator, fused weights)
        line = side_by_side(run, lambda: every_slot(run, g.n_attn_dests), args.repeats,
                            ("exact patched slot", "every slot"))
        print(f"  {line}", flush=True)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
