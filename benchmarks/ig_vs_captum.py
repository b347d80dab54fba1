"""Layer IG (attrscope ``ig``, heads) against captum's ``LayerIntegratedGradients`` per layer, in one
process, on a random 4-layer GPT-2-width model (d_model 768, 12 heads, d_mlp 3072, the embedded
model's tokenizer), the same path (the run's to the source's activation) and Gauss-Legendre steps.

Usage:
    python benchmarks/ig_vs_captum.py --n 8 --n-steps 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import statistics
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attrscope  # noqa: E402
from attrscope import HEADS  # noqa: E402
from compare_references import captum_ig  # noqa: E402


def build(folder: str, layers: int) -> None:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from attrscope.models import DEFAULT_MODEL_DIR

    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR, local_files_only=True)
    tok.save_pretrained(folder)
    config = GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=768, n_layer=layers,
                        n_head=12, n_inner=3072, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8, help="prompt pairs")
    parser.add_argument("--n-steps", type=int, default=20)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed pairs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        build(folder, args.layers)
        model = attrscope.load_model(folder)
        task = attrscope.load_task("ioi", model, n=args.n, seed=0)

        def ours():
            return attrscope.attribute(model, task, "ig", "denoising", "heads",
                                       n_steps=args.n_steps, show_progress=False)

        ours()  # warm-up
        # alternating pairs timed by the process's CPU clock: on a shared machine wall time
        # mostly measures the other sessions
        ratios, times = [], []
        for _ in range(args.repeats):
            started = time.process_time()
            scores = ours()
            t_ours = time.process_time() - started
            started = time.process_time()
            ref = captum_ig(model, task, "denoising", HEADS, args.n_steps, range(args.layers))
            t_ref = time.process_time() - started
            ratios.append(t_ref / t_ours)
            times.append((t_ours, t_ref))
        err = float((scores["heads"] - ref).abs().max())
        t_ours, t_ref = sorted(times, key=lambda t: t[1] / t[0])[len(times) // 2]
        print(f"ig heads, {args.n_steps} steps, n={args.n}: attrscope {t_ours:.2f} s, captum "
              f"{t_ref:.2f} s (CPU), median x{statistics.median(ratios):.2f} (range "
              f"x{min(ratios):.2f}-{max(ratios):.2f} over {args.repeats} pairs), max |difference| "
              f"{err:.2g}, engine {scores.meta['engine']}")

if __name__ == "__main__":
    main()
