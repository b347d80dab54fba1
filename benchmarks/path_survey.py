"""Batched path analysis of every head against the plain loop (one hooked forward per head and
step), in one process, on the same model and data: wall times, their ratio, and the largest
disagreement of the recorded metric and dm/dalpha.

Usage:
    python benchmarks/path_survey.py                   # embedded model, 20 IOI prompts, 20 steps
    python benchmarks/path_survey.py --n 50 --n-steps 50 --direction noising
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "analysis"))

import attrscope  # noqa: E402
from attrscope import HEADS  # noqa: E402
from attrscope.analysis.path import unit_paths  # noqa: E402
from attrscope.engine import Runner  # noqa: E402
from test_path import oracle_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--n-steps", type=int, default=20)
    parser.add_argument("--direction", default="denoising")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model = attrscope.load_model(args.model, device=args.device)
    task = attrscope.load_task("ioi", model, n=args.n, seed=0)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads

    start = time.perf_counter()
    runner = Runner(model, task, args.direction, [HEADS])
    paths = [p for layer in range(n_layers)
             for p in unit_paths(runner, HEADS, layer, None, args.n_steps)]
    batched = time.perf_counter() - start

    start = time.perf_counter()
    loop = [oracle_path(model, task, args.direction, HEADS, layer, head, args.n_steps)
            for layer in range(n_layers) for head in range(n_heads)]
    looped = time.perf_counter() - start

    d_metric = max(float((p.metric.float() - m).abs().max()) for p, (m, _) in zip(paths, loop))
    d_grad = max(float((p.grad.float() - g).abs().max()) for p, (_, g) in zip(paths, loop))
    print(f"{n_layers * n_heads} heads x {args.n_steps + 2} points x {args.n} prompts, "
          f"{args.direction}, engine {runner.engine_used}")
    print(f"batched {batched:.2f}s  loop {looped:.2f}s  speed-up x{looped / batched:.1f}")
    print(f"max |batched - loop|: metric {d_metric:.1e}, dm/dalpha {d_grad:.1e}")


if __name__ == "__main__":
    main()
