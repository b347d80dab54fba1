"""Faithfulness of edge circuits on the embedded IOI model: top-n circuits chosen by each edge
method, evaluated exactly (clean run, every edge outside the circuit ablated).

For each method (scores in ``--direction``) and each ablation, prints the circuit size after
pruning and f = (m(circuit) - m(empty)) / (m(model) - m(empty)) for ``--tops``, and CPR / CMD
of the curve over 0.1 .. 100 % of edges. Timings: seconds per circuit evaluation.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/edges_circuits.py            # 8 prompts, eap/eap-ig/exact
    python benchmarks/edges_circuits.py --n 16 --methods eap,exact --ablations other
"""

from __future__ import annotations

import argparse
import time

import attrscope
from attrscope.edges.circuit import Circuit, CircuitEvaluator
from attrscope.api import attribute_edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--direction", default="denoising")
    parser.add_argument("--methods", default="eap,eap-ig,exact")
    parser.add_argument("--ablations", default="other,mean,zero")
    parser.add_argument("--tops", default="50,100,200")
    args = parser.parse_args()
    model = attrscope.load_model()
    task = attrscope.load_task("ioi", model, n=args.n, seed=args.seed)
    tops = [int(t) for t in args.tops.split(",")]
    results = {}
    for method in args.methods.split(","):
        started = time.perf_counter()
        results[method] = attribute_edges(model, task, method, args.direction,
                                          show_progress=False)
        print(f"{method}: scores in {time.perf_counter() - started:.1f}s")
    for how in args.ablations.split(","):
        evaluator = CircuitEvaluator.for_task(model, task, how, run="clean")
        print(f"\nablation {how} (clean run, n={task.n})")
        for method, scores in results.items():
            mean = scores.mean("edges")
            cells = []
            for k in tops:
                circuit = Circuit.top(scores.graph, mean, k)
                started = time.perf_counter()
                report = evaluator.faithfulness(circuit)
                seconds = time.perf_counter() - started
                cells.append(f"top {k}: {len(circuit.edges)} edges f {report['f']:.3f}")
            curve = evaluator.curve(mean)
            print(f"  {method:<8} " + " | ".join(cells)
                  + f" | CPR {curve['cpr']:.3f} CMD {curve['cmd']:.3f}"
                  + f"  (m model {report['m_model']:+.3f}, m empty {report['m_empty']:+.3f};"
                  + f" {seconds:.2f}s per faithfulness call)")


if __name__ == "__main__":
    main()
