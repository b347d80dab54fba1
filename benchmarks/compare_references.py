"""attrscope against the reference implementations, in one process, on the same model and data.

For each method it prints the wall time of attrscope and of the reference, their ratio, and the
largest absolute disagreement between the two results:

- ap heads:    transformer_lens.patching.get_act_patch_attn_head_out_all_pos, one sample at a time
               (its metric must be a scalar)
- ap neurons:  a plain loop, one full forward per neuron (batched over samples)
- ig:          captum LayerIntegratedGradients, once per layer and component kind
- atp:         against the cost of two plain forwards and one backward (best of 5 each)

Usage:
    python benchmarks/compare_references.py                       # embedded model, 20 IOI prompts
    python benchmarks/compare_references.py --n 100 --neuron-stride 8
    python benchmarks/compare_references.py --model PATH_OR_NAME --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import attrscope  # noqa: E402
from attrscope import HEADS, NEURONS  # noqa: E402
from oracles import patch_one_unit_per_forward, run_and_source  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def tl_heads(model, task, direction):
    from transformer_lens import patching

    run, source = run_and_source(task, direction)
    out = torch.empty(task.n, model.cfg.n_layers, model.cfg.n_heads)
    with torch.no_grad():
        for i in range(task.n):
            rows = torch.tensor([i], device=run.device)
            _, cache = model.run_with_cache(source[i:i + 1])
            metric = lambda logits, rows=rows: task.metric(logits, rows)[0]  # noqa: E731
            base = metric(model(run[i:i + 1]))
            patched = patching.get_act_patch_attn_head_out_all_pos(model, run[i:i + 1], cache, metric)
            out[i] = patched.cpu() - base.cpu()
    return out


def captum_ig(model, task, direction, kind, n_steps):
    from captum.attr import LayerIntegratedGradients

    run, source = run_and_source(task, direction)
    n = task.n

    def forward(tokens):
        rows = torch.arange(tokens.shape[0], device=tokens.device) % n
        return task.metric(model(tokens), rows)

    out = torch.empty(n, model.cfg.n_layers, kind.n_units(model.cfg))
    for layer in range(model.cfg.n_layers):
        lig = LayerIntegratedGradients(forward, model.hook_dict[kind.hook_name(layer)])
        attr = lig.attribute(run, baselines=source, n_steps=n_steps, method="gausslegendre",
                             internal_batch_size=n * n_steps)
        out[:, layer] = -attr.reshape(n, attr.shape[1], kind.n_units(model.cfg), -1).sum(dim=(1, 3)).cpu()
    return out


def plain_fwd_bwd(model, task, direction):
    run, source = run_and_source(task, direction)
    with torch.no_grad():
        model(source)
    with torch.enable_grad():
        task.metric(model(run)).sum().backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--direction", default="denoising")
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--neuron-stride", type=int, default=1,
                        help="reference loop over every k-th neuron only (same subset compared)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", default="", help="comma-separated: ap_heads,ap_neurons,ig,atp")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    model = attrscope.load_model(args.model, device=args.device)
    task = attrscope.load_task("ioi", model, n=args.n, seed=0)
    d = args.direction
    cfg = model.cfg
    print(f"model {cfg.model_name}: {cfg.n_layers} layers x {cfg.n_heads} heads, d_mlp {cfg.d_mlp}; "
          f"{task.n} IOI prompts, seq {task.clean_tokens.shape[1]}, direction {d}, device {args.device}")
    rows = []
    with torch.no_grad():  # warm-up, so that neither side pays for first-call initialisation
        model(task.clean_tokens)
        attrscope.attribute(model, task, "atp", d, show_progress=False)

    def report(name, ours, t_ours, ref, t_ref, diff):
        rows.append((name, t_ours, t_ref, diff))
        print(f"{name:<12} attrscope {t_ours:8.2f}s   reference {t_ref:8.2f}s   "
              f"speed-up x{t_ref / t_ours:6.1f}   max |diff| {diff:.2e}", flush=True)

    if "ap_heads" not in skip:
        ours, t1 = timed(lambda: attrscope.attribute(model, task, "ap", d, "heads", show_progress=False))
        ref, t2 = timed(lambda: tl_heads(model, task, d))
        report("ap heads", ours, t1, ref, t2, (ours["heads"] - ref).abs().max().item())
    if "ap_neurons" not in skip:
        units = list(range(0, cfg.d_mlp, args.neuron_stride))
        ours, t1 = timed(lambda: attrscope.attribute(model, task, "ap", d, "neurons", show_progress=False))
        ref, t2 = timed(lambda: torch.stack([patch_one_unit_per_forward(model, task, d, NEURONS, layer, units)
                                              for layer in range(cfg.n_layers)], dim=1))
        fraction = len(units) / cfg.d_mlp  # ours did every neuron: compare time per neuron
        report(f"ap neurons{'' if fraction == 1 else '*'}", ours, t1 * fraction, ref, t2,
               (ours["neurons"][:, :, units] - ref).abs().max().item())
    if "ig" not in skip:
        for kind in (HEADS, NEURONS):
            ours, t1 = timed(lambda: attrscope.attribute(model, task, "ig", d, kind.name,
                                                         n_steps=args.n_steps, show_progress=False))
            ref, t2 = timed(lambda: captum_ig(model, task, d, kind, args.n_steps))
            report(f"ig {kind.name}", ours, t1, ref, t2, (ours[kind.name] - ref).abs().max().item())
    if "atp" not in skip:
        # Sub-second timings: best of 5 on each side, or one scheduler hiccup decides the ratio.
        t1 = min(timed(lambda: attrscope.attribute(model, task, "atp", d, show_progress=False))[1]
                 for _ in range(5))
        t2 = min(timed(lambda: plain_fwd_bwd(model, task, d))[1] for _ in range(5))
        rows.append(("atp", t1, t2, float("nan")))
        print(f"{'atp':<12} attrscope {t1:8.2f}s   2 plain forwards + 1 backward {t2:8.2f}s   "
              f"ratio {t1 / t2:5.2f}", flush=True)
    if any(r[0].endswith("*") for r in rows):
        print("* attrscope time scaled to the neuron subset the reference loop ran")


if __name__ == "__main__":
    main()
