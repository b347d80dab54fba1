"""What a whole-vocabulary metric costs: exact patching (``ap``) of every head with each metric.

A random GPT-2-architecture model with a GPT-2-size vocabulary (50,257 columns; 8 layers,
d_model 512, 8 heads, d_mlp 2048) and ``--n`` IOI prompt pairs, denoising, all in this process.
The reference is the same run with ``logit_diff``, which unembeds one direction per row; the
others unembed every column at each patched row: ``prob_diff`` and ``kl`` (built in) and a user
metric that computes the logit difference from the full logits. It prints seconds per metric
(best of ``--repeat`` interleaved runs), the ratio to ``logit_diff``, and the time ``load_task`` takes (``kl``
runs the clean prompts once for its reference; a user metric runs them once for its checks).

Usage:
    python benchmarks/metric_cost.py                 # n 8, best of 4
    python benchmarks/metric_cost.py --n 16 --repeat 6
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

import attrscope


def user_logit_diff(logits, rows, task):
    answer, distractor = task.answer_ids[rows, :1], task.distractor_ids[rows, :1]
    return (logits.gather(1, answer) - logits.gather(1, distractor))[:, 0]


def build(folder: str, vocab: int) -> None:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from attrscope.models import DEFAULT_MODEL_DIR

    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR, local_files_only=True)
    tok.save_pretrained(folder)
    config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=512, n_layer=8, n_head=8,
                        n_inner=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(1234)
    GPT2LMHeadModel(config).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=50257)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        build(folder, args.vocab)
        model = attrscope.load_model(folder)
        print(f"model: 8 layers, 64 heads, d_vocab {model.cfg.d_vocab}; n {args.n}; torch "
              f"threads {torch.get_num_threads()}")
        tasks, loaded = [], []
        for metric in ("logit_diff", "prob_diff", "kl", user_logit_diff):
            started = time.perf_counter()
            tasks.append(attrscope.load_task("ioi", model, n=args.n, seed=0, metric=metric))
            loaded.append(time.perf_counter() - started)
        best = [float("inf")] * len(tasks)
        for _ in range(args.repeat):  # interleaved, so that a load change hits every metric
            for i, task in enumerate(tasks):
                started = time.perf_counter()
                attrscope.attribute(model, task, "ap", "denoising", "heads", show_progress=False)
                best[i] = min(best[i], time.perf_counter() - started)
        for task, seconds, load in zip(tasks, best, loaded):
            print(f"{task.metric_name:<34} ap {seconds:7.2f} s  x{seconds / best[0]:5.2f} of "
                  f"logit_diff   load_task {load:5.2f} s")

if __name__ == "__main__":
    main()
