"""Edge methods at GPT-2 small's graph size (12 layers, 12 heads, d_model 768: 32,491 edges).

The model is randomly initialised (the hub is unreachable) with the embedded model's small
vocabulary. Prints the time of ``eap`` over all edges, of ``exact`` over every ``--stride``-th
edge, the ratio of exact's time per edge to eap's time for all edges, and the peak memory.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/edges_gpt2_size.py               # 4 IOI prompts
    python benchmarks/edges_gpt2_size.py --n 8 --stride 50 --device cuda
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attrscope  # noqa: E402
from attrscope.edges.circuit import Circuit, CircuitEvaluator  # noqa: E402
from attrscope.edges.methods import EdgeRun, eap_scores, exact_scores  # noqa: E402
from tests.conftest import save_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="IOI prompt pairs")
    parser.add_argument("--stride", type=int, default=100, help="exact on every stride-th edge")
    parser.add_argument("--max-batch-rows", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tempfile.mkdtemp()
    tok = save_tokenizer(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=768, n_layer=12,
                               n_head=12, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id)).save_pretrained(folder)
    model = attrscope.load_model(folder, device=args.device)
    task = attrscope.load_task("ioi", model, n=args.n, seed=0)
    t0 = time.perf_counter()
    er = EdgeRun.prepare(model, task, "denoising")
    t1 = time.perf_counter()
    eap = eap_scores(er, args.max_batch_rows)
    t2 = time.perf_counter()
    edges = list(range(0, er.graph.n_edges, args.stride))
    exact_scores(er, [[e] for e in edges], args.max_batch_rows)
    t3 = time.perf_counter()
    per_edge = (t3 - t2) / len(edges)
    print(f"{er.graph.n_edges} edges, {args.n} prompts, {args.device}")
    print(f"prepare (2 bridge + 2 edge forwards): {t1 - t0:.2f}s")
    print(f"eap, all edges: {t2 - t1:.2f}s  ({tuple(eap.shape)})")
    print(f"exact, {len(edges)} edges: {t3 - t2:.2f}s = {per_edge:.4f}s per edge; all edges "
          f"would take about {per_edge * er.graph.n_edges / 60:.0f} min")
    print(f"exact per edge / eap for all edges: {per_edge / (t2 - t1):.3f}")
    evaluator = CircuitEvaluator(er, "other", args.max_batch_rows)
    circuit = Circuit.top(er.graph, eap.mean(0), 1000)
    t4 = time.perf_counter()
    report = evaluator.faithfulness(circuit)
    t5 = time.perf_counter()
    print(f"faithfulness of the eap top-1000 circuit ({len(circuit.edges)} edges after pruning, "
          f"f {report['f']:.3f}): {t5 - t4:.2f}s for 3 evaluations (model, empty, circuit); "
          f"per evaluation / eap for all edges: {(t5 - t4) / 3 / (t2 - t1):.2f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
