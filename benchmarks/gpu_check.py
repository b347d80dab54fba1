"""Every method on a GPU at real shapes, checked against CPU float32, in one short run.

For each shape (default: GPT-2 small in float32 and Llama-3.2-1B in bfloat16, random weights
saved by :mod:`real_shapes`), on ``--device``:

- runs every registered method (node methods on heads and neurons, edge methods on every edge;
  ``ap`` screened by ``atp``, ``exact`` edges only up to ``--max-exact-edges`` edges) in the
  denoising direction on ``--n`` IOI prompts, with its wall time and peak memory (torch's peak
  allocation on CUDA, resident set size on CPU);
- counts the host-device synchronisations inside each method's call, where the hot loops run,
  with ``torch.cuda.set_sync_debug_mode("warn")`` (each synchronising call warns once per call;
  None on CPU);
- recomputes each method on the CPU in float32 (the same weights, upcast) for the first
  ``--n-check`` prompts and reports the largest difference relative to the largest |score|
  (node methods on heads, edge methods on edges; ``ap`` on the units both verified);
- writes everything to ``--json``.

Usage:
    python benchmarks/gpu_check.py --device cuda --json gpu-check.json             # < 5 min on one GPU
    python benchmarks/gpu_check.py --device cpu --shapes tiny --n 2 --json out.json # CPU smoke (the test)

A row is ``ok`` when its relative difference is below 1e-3 (float32) or 2e-2 (half precision,
which attrscope computes in float32 by default, so differences come from the rounded inputs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attrscope  # noqa: E402
from compare_references import timed  # noqa: E402
from real_shapes import save_shape  # noqa: E402

DEFAULT_SHAPES = "gpt2-small:float32,llama-3.2-1b:bfloat16"
SETTINGS = {"ig": {"n_steps": 5}, "eap-ig": {"n_steps": 5}, "eap-ig-act": {"n_steps": 3},
            "ap": {"screen": "atp", "screen_top_k": 50, "screen_audit": 50}}
TOLERANCE = {"float32": 1e-3, "bfloat16": 2e-2, "float16": 2e-2}


def first_samples(task, m: int, device: str = "cpu"):
    """The task's first ``m`` prompt pairs on ``device`` (a new Task; the original is kept)."""
    tensors = {name: getattr(task, name)[:m].to(device) for name in
               ("clean_tokens", "corrupted_tokens", "answer_pos", "answer_ids", "distractor_ids")}
    if getattr(task, "reference_logprobs", None) is not None:
        tensors["reference_logprobs"] = task.reference_logprobs[:m].to(device)
    positions = {name: p[:m].to(device) for name, p in getattr(task, "positions", {}).items()}
    return replace(task, pairs=task.pairs[:m], positions=positions, **tensors)


def counted_syncs(fn, on_cuda: bool):
    """``fn()`` and the number of synchronising CUDA calls it made (None off CUDA)."""
    if not on_cuda:
        return fn(), None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return out, sum("synchroniz" in str(w.message).lower() for w in caught)


def relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference| over the entries both scored (not NaN)."""
    ours, reference = ours.float().cpu(), reference.float().cpu()
    both = ~(ours.isnan() | reference.isnan())
    if not both.any():
        return float("nan")
    scale = float(reference[both].abs().max()) or 1.0
    return float((ours[both] - reference[both]).abs().max()) / scale


def check_shape(shape: str, dtype: str, args, folder: Path) -> dict:
    """Every method on one shape: time, peak memory, syncs, difference from CPU float32."""
    on_cuda = args.device.startswith("cuda")
    path = save_shape(shape, folder / f"{shape}-{dtype}", dtype)
    started = time.perf_counter()
    model = attrscope.load_model(str(path), device=args.device, dtype=dtype)
    task = attrscope.load_task("ioi", model, n=args.n)
    reference_model = attrscope.load_model(str(path), device="cpu", dtype="float32")
    reference_task = first_samples(task, args.n_check)
    out = {"shape": shape, "dtype": dtype, "device": args.device, "n": task.n,
           "n_check": reference_task.n, "load_s": round(time.perf_counter() - started, 1),
           "methods": []}
    n_edges = attrscope.edges.graph.Graph.of_model(model).n_edges
    for name, spec in attrscope.methods.METHODS.items():
        if name == "exact" and n_edges > args.max_exact_edges:
            out["methods"].append({"method": name, "skipped": f"{n_edges} edges > "
                                                              f"--max-exact-edges {args.max_exact_edges}"})
            continue
        settings = SETTINGS.get(name, {})
        kinds = ["heads", "neurons"]

        def run(m=model, t=task, components=kinds):
            return attrscope.attribute(m, t, name, "denoising", components, show_progress=False,
                                       **settings)

        (result, syncs), seconds = timed(lambda: counted_syncs(run, on_cuda))
        row = {"method": name, "settings": settings, "seconds": round(seconds, 2),
               "peak_gib": round(timed.peak / 2**30, 3), "syncs": syncs}
        kind = "edges" if spec.granularity == "edge" else "heads"
        reference = run(reference_model, reference_task, ["heads"])
        row["max_rel_diff"] = relative_difference(result[kind][:reference_task.n], reference[kind])
        row["ok"] = bool(row["max_rel_diff"] <= TOLERANCE.get(dtype, 1e-3))
        out["methods"].append(row)
        print(json.dumps({"shape": shape, **row}), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES,
                        help="comma-separated SHAPE[:DTYPE] (shapes of benchmarks/real_shapes.py)")
    parser.add_argument("--n", type=int, default=8, help="IOI prompt pairs")
    parser.add_argument("--n-check", type=int, default=2, help="prompts checked on the CPU")
    parser.add_argument("--max-exact-edges", type=int, default=5000)
    parser.add_argument("--cache", type=Path, default=None, help="folder for the saved models")
    parser.add_argument("--json", type=Path, default=Path("gpu-check.json"))
    args = parser.parse_args(argv)
    summary = {"device": args.device, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
               "shapes": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.cache or Path(tmp)
        for item in args.shapes.split(","):
            shape, _, dtype = item.partition(":")
            summary["shapes"].append(check_shape(shape, dtype or "float32", args, folder))
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["all_ok"] = all(row.get("ok", True) for s in summary["shapes"] for row in s["methods"])
    args.json.write_text(json.dumps(summary, indent=1))
    print(f"{'all methods agree with CPU float32' if summary['all_ok'] else 'DIFFERENCES FOUND'}"
          f" ({summary['seconds']} s) -> {args.json}")
    return summary


if __name__ == "__main__":
    main()
