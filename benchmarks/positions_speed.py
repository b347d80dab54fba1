"""Exact patching per position (issue 23 item 3): attrscope's ``ap`` with ``positions="each"``
against ``transformer_lens.patching`` called as its users call it, in one process, on the same
model and prompts (of one length).

For each site it prints the wall time of both, their ratio, the largest |difference| of the
scores, and the FLOPs (matrix products and attention; norms, activations and the embedding are
left out):

- **reference**: what the TransformerLens loop computes: one full forward of the batch, with
  the whole unembedding at every position, per (layer, position[, head]) patched;
- **attrscope**: counted while it runs, from every block the one forward computes (rows,
  positions, keys; :mod:`attrscope.arch.forward`) plus the model's own forwards it runs (its
  unpatched run and source caches, one full forward each);
- **limit**: the least any exact patching must compute: a patch at (layer l, position p) changes
  nothing before p, so blocks l.. at positions p..answer, each query reading the keys up to it,
  and the metric's columns at the answer; in the last block only the answer's query and MLP;
  only patches whose source and run activations differ (a head, attention output or query patched at p
  changes only position p of its own layer). ``reached`` = limit / attrscope (whole run);
  ``(patches)``: limit / the patched runs alone (attrscope run again on the same runner, its
  caches kept: what each patch costs beyond the two unpatched runs every method needs).

Sites and their reference functions: ``resid_pre`` ``get_act_patch_resid_pre``, ``attn_out``
``get_act_patch_attn_out``, ``heads`` ``get_act_patch_attn_head_out_by_pos``, ``q``
``get_act_patch_attn_head_q_by_pos``. TransformerLens 4 has no HookedTransformer: the functions
run on the TransformerBridge attrscope loads, with ``reduce="none"`` for per-prompt values.

Usage:
    python benchmarks/positions_speed.py --n 4 [--sites resid_pre,attn_out,heads,q]
    python benchmarks/positions_speed.py --n 4 --family gpt2     # a random medium-size model
                                                                 # (tests/families.py: 8 layers,
                                                                 # d_model 512, 8 heads, d_mlp 2048)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformer_lens import patching

import attrscope
from attrscope import sites
from attrscope.arch import BlockAdapter, adapter_for, forward
from attrscope.components import KINDS
from attrscope.engine import Runner
from attrscope.sites import site_activations

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from oracles import one_length_task  # noqa: E402  (the tests' helper: IOI pairs of one length)

REFERENCE = {"resid_pre": "get_act_patch_resid_pre", "attn_out": "get_act_patch_attn_out",
             "heads": "get_act_patch_attn_head_out_by_pos", "q": "get_act_patch_attn_head_q_by_pos",
             "k": "get_act_patch_attn_head_k_by_pos", "v": "get_act_patch_attn_head_v_by_pos"}


class Flops:
    """FLOPs of a model of the adapter's shape: per block piece and per full forward."""

    def __init__(self, a, d_vocab: int):
        self.d, self.H, self.K, self.E, self.m = a.d_model, a.n_heads, a.n_kv_heads, a.d_head, a.d_mlp
        self.gated = a.W_gate is not None
        self.L, self.V = a.n_layers, d_vocab

    def projections(self, rows: int, computed: int, queries: int) -> float:
        """q/k/v of ``computed`` positions, W_O of ``queries``."""
        d, H, K, E = self.d, self.H, self.K, self.E
        return rows * (2 * computed * d * (H + 2 * K) * E + 2 * queries * H * E * d)

    def attend(self, rows: int, query_positions) -> float:
        """Scores and weighted values of queries at absolute ``query_positions``, each reading
        the keys up to it."""
        return rows * 2 * 2 * self.H * self.E * sum(int(t) + 1 for t in query_positions)

    def attention(self, rows: int, first: int, computed: int, queries: int) -> float:
        """q/k/v of ``computed`` positions from ``first``; scores, values and W_O of the last
        ``queries`` of them."""
        last = first + computed
        return (self.projections(rows, computed, queries)
                + self.attend(rows, range(last - queries, last)))

    def mlp(self, rows: int, positions: int) -> float:
        return rows * positions * 2 * self.d * self.m * (3 if self.gated else 2)

    def block(self, rows: int, first: int, positions: int) -> float:
        return self.attention(rows, first, positions, positions) + self.mlp(rows, positions)

    def full(self, rows: int, seq: int) -> float:
        """A full forward with the whole unembedding at every position (the reference's)."""
        return self.L * self.block(rows, 0, seq) + rows * seq * 2 * self.d * self.V

    def limit(self, site: str, rows: int, layer: int, p: int, end: int) -> float:
        """The least exact patching of ``site`` at (layer, p) computes: the stream changes at
        p from there on; a head's output, the attention output or a query change only
        position p of their own layer (its MLP there; a query also its attention row)."""
        def block(at: int) -> float:  # the last block: only the answer's query and MLP
            if at < self.L - 1:
                return self.block(rows, p, end - p)
            return self.attention(rows, p, end - p, 1) + self.mlp(rows, 1)

        later = sum(block(at) for at in range(layer + 1, self.L))
        if site == "resid_pre":
            return block(layer) + later
        if layer == self.L - 1:  # the last block: only the answer's query matters
            if site in ("k", "v"):
                return self.attend(rows, [end - 1]) + self.projections(rows, 0, 1) + self.mlp(rows, 1)
            return self.mlp(rows, 1) + (self.attend(rows, [p]) + self.projections(rows, 0, 1)
                                        if site == "q" else 0) if p == end - 1 else 0.0
        if site in ("k", "v"):  # every query from p on reads the changed key or value
            reached = end - p
            own = (self.attend(rows, range(p, end)) + self.projections(rows, 0, reached)
                   + self.mlp(rows, reached))
        else:  # heads, attn_out, q: only position p of the layer changes
            own = self.mlp(rows, 1)
            if site == "q":
                own += self.attend(rows, [p]) + self.projections(rows, 0, 1)
        return own + later


def counting(flops: Flops, total: list):
    """Wrap the pieces every computation runs through so that each adds its FLOPs to total[0]:
    a block's projections, every attention (in a block or a query/key/value patch's own), the
    MLPs and the output projection of a query/key/value patch."""
    block, mlp_half = forward._block, forward._mlp_half
    attend, attention_metric = BlockAdapter.attend, sites.attention_metric

    def counted_block(a, layer, resid, positions, query_at, plan):
        queries = 1 if query_at is not None else resid.shape[1]
        total[0] += flops.projections(resid.shape[0], resid.shape[1], queries)
        return block(a, layer, resid, positions, query_at, plan)

    def counted_attend(self, layer, q, k, v, q_pos):
        total[0] += flops.attend(1, q_pos.flatten().tolist()) * (q.shape[0] if q_pos.dim() == 1 else 1)
        return attend(self, layer, q, k, v, q_pos)

    def counted_mlp(a, layer, resid, mid, plan, cache=None):
        total[0] += flops.mlp(mid.shape[0], mid.shape[1])
        return mlp_half(a, layer, resid, mid, plan, cache)

    def counted_attention_metric(runner, kind, layer, samples, chunk, end, p, source):
        reached = 1 if kind.point == "q" else end - p
        total[0] += flops.projections(len(samples) * len(chunk), 0, reached)
        return attention_metric(runner, kind, layer, samples, chunk, end, p, source)

    forward._block, forward._mlp_half = counted_block, counted_mlp
    BlockAdapter.attend, sites.attention_metric = counted_attend, counted_attention_metric

    def restore():
        forward._block, forward._mlp_half = block, mlp_half
        BlockAdapter.attend, sites.attention_metric = attend, attention_metric

    return restore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--sites", default="resid_pre,attn_out,heads,q")
    parser.add_argument("--direction", default="denoising")
    parser.add_argument("--family", default=None,
                        help="a random medium-size model of this family instead of the embedded one")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.family is None:
        model = attrscope.load_model()
    else:
        import tempfile

        from families import build

        folder = tempfile.mkdtemp(prefix=f"positions-{args.family}-")
        build(args.family, folder, size="medium")
        model = attrscope.load_model(folder)
    task = one_length_task(model, args.n)
    a = adapter_for(model)
    flops = Flops(a, int(model.cfg.d_vocab))
    n, seq = task.n, int(task.clean_tokens.shape[1])
    run, source = ((task.corrupted_tokens, task.clean_tokens) if args.direction == "denoising"
                   else (task.clean_tokens, task.corrupted_tokens))
    rows = torch.arange(n)
    metric = lambda logits: task.metric(logits, rows)  # noqa: E731
    first = int((task.clean_tokens != task.corrupted_tokens).any(0).float().argmax())
    which = "embedded model" if args.family is None else f"random medium {args.family}"
    print(f"{which} ({a.n_layers} layers, {a.n_heads} heads, d_model {a.d_model}), {n} IOI "
          f"prompts of {seq} "
          f"tokens (first clean/corrupted difference at {first}), {args.direction}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'site':<10} {'attrscope s':>11} {'TL s':>8} {'speed-up':>8} {'max|diff|':>9} "
          f"{'GFLOP ours':>10} {'GFLOP TL':>9} {'TL/ours':>7} {'reached':>7} {'(patches)':>8}")
    for site in args.sites.split(","):
        runner = Runner(model, task, args.direction, [KINDS[site]])
        counts = []
        for _ in range(2):  # cold (with the run and source caches), then warm (patches only)
            total = [0.0]
            restore = counting(flops, total)
            forwards = []
            handle = model.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape))
            try:
                started = time.perf_counter()
                ours = attrscope.attribute(model, task, "ap", args.direction, site,
                                           positions="each", show_progress=False, runner=runner)
                counts.append((time.perf_counter() - started,
                               total[0] + sum(flops.full(s[0], s[1]) for s in forwards)))
            finally:
                restore()
                handle.remove()
        (ours_s, ours_flops), (_, patch_flops) = counts
        started = time.perf_counter()
        _, cache = model.run_with_cache(source)
        base = metric(model(run))
        ref = getattr(patching, REFERENCE[site])(model, run, cache, metric, reduce="none").values
        ref_s = time.perf_counter() - started
        got = ours[site]  # [n, layers(+1), units, seq]
        L = a.n_layers
        if site in ("resid_pre", "attn_out"):
            want = ref.permute(2, 0, 1) - base[:, None, None]  # [n, L, seq]
            diff = (got[:, :L, 0] - want).abs().max()
            patches = L * seq
            units = 1
        else:
            want = ref.permute(3, 0, 1, 2) - base[:, None, None, None]  # [n, L, seq, heads]
            diff = (got.permute(0, 1, 3, 2) - want).abs().max()
            units = a.n_heads
            patches = L * seq * units
        ref_flops = patches * flops.full(n, seq)
        answer = int(task.answer_pos[0]) + 1
        # only patches that change something count (the source differs from the run there)
        run_acts = site_activations(runner, [KINDS[site]], "run")
        source_acts = site_activations(runner, [KINDS[site]], "source")
        limit = 0.0
        for layer in range(L):
            differs = (run_acts[(site, layer)] != source_acts[(site, layer)])  # [n, seq, units, ...]
            per_unit = differs.flatten(3).any(-1) if differs.dim() > 3 else differs
            changed = per_unit.any(0).sum(-1)  # [seq]: units that change at each position
            limit += sum(int(changed[p]) * flops.limit(site, n, layer, p, answer)
                         for p in range(first, answer))
        print(f"{site:<10} {ours_s:>11.2f} {ref_s:>8.2f} {ref_s / ours_s:>7.1f}x {float(diff):>9.1e} "
              f"{ours_flops / 1e9:>10.3f} {ref_flops / 1e9:>9.3f} {ref_flops / ours_flops:>6.1f}x "
              f"{limit / ours_flops:>6.0%} {limit / patch_flops:>8.0%}")


if __name__ == "__main__":
    main()
