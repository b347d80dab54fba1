"""Latent-aware scores against the single directions (issue 25 item 3).

1. The planted-circuit model (``--task planted``): precision and recall of the components flagged
   by ``ap`` (|mean| >= 0.1 of the largest, the ground-truth module's rule) against the planted AND
   pair, OR pair and all relevant heads, for denoising, noising and each combination.
2. Edge circuits in each direction and combination: CPR and CMD of the faithfulness curve
   (``other`` ablation, clean run), on the planted model (``--method``, default exact) and the
   embedded IOI model (``--ioi-method``, default eap-ig).

    python benchmarks/latent_scores.py --n 20
"""

from __future__ import annotations

import argparse
import time

import attrscope
from attrscope.analysis.combine import COMBINATIONS, combine_directions
from attrscope.analysis.ground_truth import load_ground_truth, precision_recall, relevant
from attrscope.edges.circuit import CircuitEvaluator


def flagged(scores, kind: str = "heads") -> set[str]:
    mean, labels = scores.mean(kind).flatten().abs(), scores.labels(kind)
    return {labels[i] for i in range(len(labels)) if mean[i] > 0 and mean[i] >= 0.1 * mean.max()}


def both(model, task, method: str, **kw):
    return [attrscope.attribute(model, task, method, d, show_progress=False, **kw)
            for d in ("denoising", "noising")]


def variants(den, noi):
    return [("denoising", den), ("noising", noi)] + [
        (how, combine_directions(den, noi, how)) for how in COMBINATIONS]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--method", default="exact", help="edge method on the planted model")
    parser.add_argument("--ioi-method", default="eap-ig", help="edge method on the IOI model "
                        "(exact takes minutes there)")
    args = parser.parse_args()
    started = time.perf_counter()
    planted = attrscope.load_model("attrscope-planted")
    task = attrscope.load_task("planted", planted, n=args.n)
    truth = load_ground_truth()
    print("| ap scores | AND pair recall | OR pair recall | relevant heads precision | "
          "relevant heads recall |\n|---|---|---|---|---|")
    for name, s in variants(*both(planted, task, "ap", components=("heads",))):
        found = flagged(s)
        pairs = [precision_recall(found, set(truth["heads"][w]))["recall"] for w in ("and", "or")]
        every = precision_recall(found, relevant(truth, "heads"))
        cells = [*pairs, every["precision"], every["recall"]]
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    print(f"\n| edges | planted CPR ({args.method}) | planted CMD | IOI CPR ({args.ioi_method}) "
          "| IOI CMD |\n|---|---|---|---|---|")
    ioi = attrscope.load_model()
    ioi_task = attrscope.load_task("ioi", ioi, n=args.n)
    rows = {}
    for model, t, method in ((planted, task, args.method), (ioi, ioi_task, args.ioi_method)):
        evaluator = CircuitEvaluator.for_task(model, t)
        for name, s in variants(*both(model, t, method)):
            curve = evaluator.curve(s.mean("edges").flatten())
            rows.setdefault(name, []).extend([curve["cpr"], curve["cmd"]])
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
