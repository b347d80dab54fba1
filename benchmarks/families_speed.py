"""Exact activation patching (``ap``) on every model family, against what users write by hand.

For each family a random medium-size model (8 layers, d_model 512, 8 heads, d_mlp 2048; see
tests/families.py) and ``--n`` IOI prompt pairs, denoising. Every side runs in this process:

- **attrscope**: ``attribute(model, task, "ap", ...)`` (heads, and ``--neurons`` neurons per
  layer through the ``units`` setting);
- **plain loop**: Hugging Face forward pre-hooks on the attention / MLP output projections, one
  patch per forward, the batch of samples at once, the full model, ``inference_mode``;
- **TL batched**: ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` on the whole
  batch with the mean metric, as users call it for mean scores (heads only: TL has no per-neuron
  patcher);
- **TL per sample**: the same, one sample at a time (what per-sample scores need; the old
  benchmark's reference).

For each family it prints the time ratios and the **FLOP ratio**: the plain loop's FLOPs over
the FLOPs exact patching cannot avoid (for each patch, the blocks downstream of it at the
positions from the first clean/corrupted difference on, with the last block at the answer
position only and two unembedding columns), and the fraction of that limit attrscope reaches
(time ratio / FLOP ratio).

On a shared machine one timing is noisy, so ``--repeats R`` times attrscope and the plain loop
R times each, alternately (each attrscope run beside a plain-loop run, under the same load):
the ratio printed is the median of the R paired ratios, with their range; the load average is
printed before and after. ``--clock cpu`` times the CPU time this process uses instead of wall
time: with one thread (``OMP_NUM_THREADS=1``) it leaves out the time the process waits for a
core that other work holds, which wall time on an oversubscribed machine counts.

Usage:
    python benchmarks/families_speed.py                       # every family
    python benchmarks/families_speed.py --families gpt2,llama --n 8 --neurons 32
    python benchmarks/families_speed.py --n 4 --heads 2 --neurons 4 --skip-tl   # a quick pass
    OMP_NUM_THREADS=1 python benchmarks/families_speed.py --n 8 --neurons 8 --skip-tl --repeats 3 --clock cpu
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
from attrscope.arch import adapter_for, hf_model  # noqa: E402
from attrscope.engine import first_difference  # noqa: E402
from families import FAMILIES, build  # noqa: E402
from hf_oracle import OUT_PROJ, hf_metric, projection_input  # noqa: E402


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed(fn):
    started = clock()
    out = fn()
    return out, clock() - started


def plain_loop(hf, family, task, adapter, heads, neurons):
    """One patch per full forward: ``heads`` and ``neurons`` of every layer."""
    run, source = task.corrupted_tokens, task.clean_tokens
    E = adapter.d_head
    with torch.inference_mode():
        base = hf_metric(hf, task, run)
        for layer in range(adapter.n_layers):
            for which, patches in ((0, [slice(h * E, (h + 1) * E) for h in heads]),
                                   (1, neurons)):
                mod = hf.get_submodule(OUT_PROJ[family][which].format(l=layer))
                src = projection_input(hf, task, source, mod)
                for cols in patches:
                    def patch(m, args, cols=cols):
                        x = args[0].clone()
                        x[..., cols] = src[..., cols]
                        return (x,) + args[1:]

                    hf_metric(hf, task, run, [(mod, patch)]) - base


def tl_heads(model, task, per_sample: bool):
    from transformer_lens import patching

    run, source = task.corrupted_tokens, task.clean_tokens
    groups = [torch.tensor([i]) for i in range(task.n)] if per_sample else [torch.arange(task.n)]
    with torch.no_grad():
        for rows in groups:
            _, cache = model.run_with_cache(source[rows])
            metric = lambda logits, rows=rows: task.metric(logits, rows).mean()  # noqa: E731
            patching.get_act_patch_attn_head_out_all_pos(model, run[rows], cache, metric)


def block_flops(adapter, queries: int, keys: int, attention: bool = True, mlp: bool = True) -> float:
    """Multiply-adds x 2 of one block for ``queries`` positions attending to ``keys``."""
    d, H, K, E, m = adapter.d_model, adapter.n_heads, adapter.n_kv_heads, adapter.d_head, adapter.d_mlp
    attn = 2 * queries * d * (H + 2 * K) * E + 2 * queries * H * E * d + 4 * queries * keys * H * E
    ffn = 2 * queries * d * m * (3 if adapter.W_gate is not None else 2)
    return attn * attention + ffn * mlp


def flop_ratio(adapter, task, n_heads: int, n_neurons: int) -> float:
    """Plain-loop FLOPs over the downstream FLOPs exact patching cannot avoid."""
    L, n, seq = adapter.n_layers, task.n, task.clean_tokens.shape[1]
    V = adapter.W_U.shape[1]
    start = first_difference(task)
    S = seq - start
    plain_pass = n * (L * block_flops(adapter, seq, seq) + 2 * seq * adapter.d_model * V)
    patches = L * (n_heads + n_neurons)

    def downstream(first_block: int) -> float:
        """From ``first_block`` on at positions start.., the last block at the answer only."""
        total = sum(block_flops(adapter, S, seq) for _ in range(first_block, L - 1))
        return n * (total + block_flops(adapter, 1, seq) + 4 * adapter.d_model)

    minimal = 0.0
    for layer in range(L):
        rest = downstream(layer + 1) if layer + 1 < L else n * 4 * adapter.d_model
        mlp_here = n * block_flops(adapter, S if layer < L - 1 else 1, seq, attention=False)
        head_after = rest + (0 if adapter.parallel else mlp_here)
        minimal += n_heads * head_after + n_neurons * rest
    return patches * plain_pass / minimal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--n", type=int, default=8, help="prompt pairs")
    parser.add_argument("--neurons", type=int, default=32, help="neurons patched per layer")
    parser.add_argument("--heads", type=int, default=None,
                        help="heads patched per layer (default: all; TL always patches all)")
    parser.add_argument("--skip-tl", action="store_true", help="leave out TransformerLens")
    parser.add_argument("--repeats", type=int, default=1,
                        help="attrscope / plain-loop pairs timed alternately (median ratio)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or the CPU time of this process (one thread: load-proof)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.manual_seed(0)
    print(f"threads {torch.get_num_threads()}, {args.clock} clock, load average "
          f"{os.getloadavg()}", flush=True)
    rows = []
    for family in args.families.split(","):
        with tempfile.TemporaryDirectory() as folder:
            build(family, folder, size="medium")
            model = attrscope.load_model(folder)
            task = attrscope.load_task("ioi", model, n=args.n, seed=0)
            adapter, hf = adapter_for(model), hf_model(model)
            neurons = list(range(0, adapter.d_mlp, adapter.d_mlp // args.neurons))[:args.neurons]
            heads = list(range(adapter.n_heads))[:args.heads]
            ours = lambda: attrscope.attribute(model, task, "ap", "denoising",  # noqa: E731
                                               units={"heads": heads, "neurons": neurons},
                                               show_progress=False)
            ours()  # warm-up (allocator, kernels)
            pairs = []
            for _ in range(args.repeats):  # alternately, so that each pair shares the load
                scores, t_ours = timed(ours)
                _, t_plain = timed(lambda: plain_loop(hf, family, task, adapter, heads, neurons))
                pairs.append((t_ours, t_plain))
            ratios = sorted(p / o for o, p in pairs)
            t_ours, t_plain = (statistics.median(t) for t in zip(*pairs))
            t_tl = t_tl1 = t_heads = float("nan")
            if not args.skip_tl:
                _, t_heads = timed(lambda: attrscope.attribute(model, task, "ap", "denoising",
                                                               "heads", show_progress=False))
                _, t_tl = timed(lambda: tl_heads(model, task, per_sample=False))
                _, t_tl1 = timed(lambda: tl_heads(model, task, per_sample=True))
            limit = flop_ratio(adapter, task, len(heads), len(neurons))
            speedup = statistics.median(ratios)
            rows.append((family, scores.meta["engine"], t_ours, t_plain, speedup, limit,
                         speedup / limit, t_tl / t_heads, t_tl1 / t_heads))
            spread = (f", pairs {100 * ratios[0] / limit:.0f}-{100 * ratios[-1] / limit:.0f} %"
                      if len(ratios) > 1 else "")
            # each family's figures as soon as they exist: a later family's failure keeps them
            print(f"{family}: attrscope {t_ours:.2f}s, plain loop {t_plain:.2f}s "
                  f"(x{speedup:.1f}, {100 * speedup / limit:.0f} % of the FLOP limit x{limit:.1f}"
                  f"{spread}); "
                  f"heads vs TL batched x{t_tl / t_heads:.1f}, per sample x{t_tl1 / t_heads:.1f}",
                  flush=True)
    print("\n| family | engine | attrscope s | plain loop s | x plain | FLOP ratio | of limit "
          "| x TL batched (heads) | x TL per sample (heads) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.1f} | {r[5]:.1f} | "
              f"{100 * r[6]:.0f} % | {r[7]:.1f} | {r[8]:.1f} |")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
