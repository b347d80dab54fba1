"""How far ``atp`` and ``atpstar`` (with each fix on or off) are from exact patching (``ap``).

For each direction and component kind it prints, over every head (or neuron) and sample:
max and mean |score - ap| of the per-sample scores, and for the sample-mean scores the Spearman
rank correlation of |score| with |ap| and the overlap of the top-k by |score| with the top-k by
|ap| (k = 10 heads, 50 neurons). GradDrop scores are magnitudes meant for ranking, so their
|score - ap| is not expected to shrink.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/atp_star_vs_ap.py --n 6 --seed 7        # embedded model
    python benchmarks/atp_star_vs_ap.py --model PATH_OR_NAME --n 20
"""

from __future__ import annotations

import argparse

import torch

import attrscope


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks of a 1-D tensor ``[m]`` -> ``[m]`` (float)."""
    return x.argsort().argsort().float()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1].item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    model = attrscope.load_model(args.model)
    task = attrscope.load_task("ioi", model, n=args.n, seed=args.seed)
    variants = {"atp": ("atp", {})}
    for head_score in ("joint", "paths"):
        for gd in (False, True):
            variants[f"atpstar head_score={head_score:<5} graddrop={gd!s:<5}"] = (
                "atpstar", {"head_score": head_score, "graddrop": gd})
    print(f"model {model.cfg.model_name}, ioi n={task.n} seed={args.seed}")
    for direction in ("denoising", "noising"):
        ap = attrscope.attribute(model, task, "ap", direction, show_progress=False)
        results = {name: attrscope.attribute(model, task, method, direction, show_progress=False,
                                             **settings)
                   for name, (method, settings) in variants.items()}
        for kind, k in (("heads", 10), ("neurons", 50)):
            exact_mean = ap[kind].mean(0).flatten()
            top_exact = set(exact_mean.abs().topk(k).indices.tolist())
            print(f"\n{direction} {kind}: |ap| max {ap[kind].abs().max():.3f}")
            print(f"  {'method':<40} {'max|s-ap|':>9} {'mean|s-ap|':>10} {'spearman|.|':>11} {'top' + str(k):>6}")
            for name, scores in results.items():
                err = (scores[kind] - ap[kind]).abs()
                mean = scores[kind].mean(0).flatten()
                overlap = len(top_exact & set(mean.abs().topk(k).indices.tolist()))
                print(f"  {name:<40} {err.max():9.4f} {err.mean():10.4f} "
                      f"{spearman(mean.abs(), exact_mean.abs()):11.3f} {overlap:>4}/{k}")


if __name__ == "__main__":
    main()
