"""attrscope against the reference implementations, in one process, on the same model and data.

For each method it prints the wall time and peak memory (resident set size above the level
before the step, sampled every 2 ms) of attrscope and of the reference, their ratio, and the
largest absolute disagreement between the two results:

- ap heads:    transformer_lens.patching.get_act_patch_attn_head_out_all_pos, one sample at a time
               (its metric must be a scalar)
- ap neurons:  a plain loop, one full forward per neuron (batched over samples); both sides patch
               the same neurons (attrscope's ``units`` setting)
- ig:          captum LayerIntegratedGradients, once per layer and component kind
- atp:         against the cost of two plain forwards and one backward (best of 5 each)

Cases:
    --case a   the embedded model (default)
    --case b   a GPT-2-small-architecture model (12 layers x 12 heads, d_model 768, d_mlp 3072,
               n_ctx 1024, vocabulary 50257) with random weights, built into a temporary folder
               with the embedded model's tokenizer (IOI names are single tokens in it; the
               prompts use only its ids, but the model unembeds to all 50257)

Usage:
    python benchmarks/compare_references.py --n 100                          # case (a)
    python benchmarks/compare_references.py --case b --n 20 --ref-samples 2 --neuron-stride 768 --n-steps 5 --ig-ref-layers 0,11
    python benchmarks/compare_references.py --model PATH_OR_NAME --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import attrscope  # noqa: E402
from attrscope import HEADS, NEURONS  # noqa: E402
from oracles import patch_one_unit_per_forward, run_and_source  # noqa: E402


def release_free_heap() -> None:
    """Hand freed heap memory back to the system (glibc), so that RSS starts each step low."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn):
    """(result, seconds); the peak memory of the call is left in ``timed.peak``: bytes above
    the resident set size before it (freed heap handed back first), sampled every 2 ms; on
    CUDA, torch's peak allocation above the allocation before it."""
    on_cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        release_free_heap()
        before = rss_bytes()
    peak, done = [before], threading.Event()

    def sample():
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss_bytes())

    sampler = None if on_cuda else threading.Thread(target=sample, daemon=True)
    if sampler:
        sampler.start()
    start = time.perf_counter()
    try:
        out = fn()
        if on_cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - start
    finally:
        done.set()
        if sampler:
            sampler.join()
            peak[0] = max(peak[0], rss_bytes())
        timed.peak = (torch.cuda.max_memory_allocated() if on_cuda else peak[0]) - before


def random_gpt2_small(folder: Path) -> str:
    """Save a randomly initialised GPT-2-small-architecture model (default GPT-2 initialisation,
    seed 0) and the embedded model's tokenizer into ``folder``; returns its path."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from attrscope.models import DEFAULT_MODEL_DIR

    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR, local_files_only=True)
    tok.save_pretrained(folder)
    config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                        n_inner=3072, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


def tl_heads(model, task, direction, samples):
    from transformer_lens import patching

    run, source = run_and_source(task, direction)
    out = torch.full((task.n, model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    with torch.no_grad():
        for i in samples:
            rows = torch.tensor([i], device=run.device)
            _, cache = model.run_with_cache(source[i:i + 1])
            metric = lambda logits, rows=rows: task.metric(logits, rows)[0]  # noqa: E731
            base = metric(model(run[i:i + 1]))
            patched = patching.get_act_patch_attn_head_out_all_pos(model, run[i:i + 1], cache, metric)
            out[i] = patched.cpu() - base.cpu()
    return out


def captum_ig(model, task, direction, kind, n_steps, layers):
    from captum.attr import LayerIntegratedGradients

    run, source = run_and_source(task, direction)
    n = task.n

    def forward(tokens):
        rows = torch.arange(tokens.shape[0], device=tokens.device) % n
        return task.metric(model(tokens), rows)

    out = torch.full((n, model.cfg.n_layers, kind.n_units(model.cfg)), float("nan"))
    for layer in layers:
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
    parser.add_argument("--case", choices=["a", "b"], default="a",
                        help="a: the embedded model; b: random GPT-2-small architecture")
    parser.add_argument("--model", default=None, help="case a only: another model than the embedded one")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--direction", default="denoising")
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--neuron-stride", type=int, default=1,
                        help="both sides patch every k-th neuron of each layer only")
    parser.add_argument("--ig-ref-layers", default=None,
                        help="comma-separated layers captum runs on (default: all); its time is "
                        "scaled to all layers. Its forward does not depend on the layer and its "
                        "backward grows linearly towards layer 0, so layers 0 and the last give "
                        "the average")
    parser.add_argument("--ref-samples", type=int, default=None,
                        help="transformer_lens.patching runs on the first K samples only (it takes "
                        "one sample at a time); its time is scaled by n/K")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", default="", help="comma-separated: ap_heads,ap_neurons,ig,atp")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    if args.case == "b":
        folder = tempfile.TemporaryDirectory(prefix="gpt2-small-random-")
        model_name = random_gpt2_small(Path(folder.name))
    else:
        model_name = args.model
    model = attrscope.load_model(model_name, device=args.device)
    task = attrscope.load_task("ioi", model, n=args.n, seed=0)
    d = args.direction
    cfg = model.cfg
    print(f"case {args.case}: model {cfg.model_name}: {cfg.n_layers} layers x {cfg.n_heads} heads, "
          f"d_model {cfg.d_model}, d_mlp {cfg.d_mlp}, vocab {cfg.d_vocab}; {task.n} IOI prompts, "
          f"seq {task.clean_tokens.shape[1]}, direction {d}, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    with torch.no_grad():  # warm-up, so that neither side pays for first-call initialisation
        model(task.clean_tokens)
        attrscope.attribute(model, task, "atp", d, show_progress=False)

    def report(name, t_ours, m_ours, t_ref, m_ref, diff, scale):
        print(f"{name:<11} attrscope {t_ours:8.2f}s {m_ours / 2**20:7.0f} MiB   reference "
              f"{t_ref:8.2f}s {m_ref / 2**20:7.0f} MiB   speed-up x{t_ref / t_ours:6.1f}   "
              f"max |diff| {diff:.2e} (max |reference| {scale:.2e})", flush=True)

    def compare(name, ours_fn, ref_fn, pick=lambda x: x, ref_scale=1.0):
        ours, t1 = timed(ours_fn)
        m1 = timed.peak
        ref, t2 = timed(ref_fn)
        m2 = timed.peak
        ours, ref = pick(ours), pick(ref)
        report(name, t1, m1, t2 * ref_scale, m2, (ours - ref).abs().max().item(), ref.abs().max().item())

    if "ap_heads" not in skip:
        k = min(task.n, args.ref_samples or task.n)
        compare("ap heads" + ("" if k == task.n else "†"),
                lambda: attrscope.attribute(model, task, "ap", d, "heads", show_progress=False)["heads"],
                lambda: tl_heads(model, task, d, range(k)), pick=lambda x: x[:k], ref_scale=task.n / k)
        if k < task.n:
            print(f"† transformer_lens.patching ran on the first {k} of the {task.n} samples, one "
                  f"at a time; its time is scaled by {task.n}/{k} (attrscope ran on all)")
    if "ap_neurons" not in skip:
        units = list(range(0, cfg.d_mlp, args.neuron_stride))
        label = "ap neurons" if len(units) == cfg.d_mlp else f"ap neurons ({len(units)}/layer)"
        compare(label,
                lambda: attrscope.attribute(model, task, "ap", d, "neurons", units={"neurons": units},
                                            show_progress=False)["neurons"][:, :, units],
                lambda: torch.stack([patch_one_unit_per_forward(model, task, d, NEURONS, layer, units)
                                     for layer in range(cfg.n_layers)], dim=1))
    if "ig" not in skip:
        layers = (list(range(cfg.n_layers)) if args.ig_ref_layers is None
                  else [int(x) for x in args.ig_ref_layers.split(",")])
        for kind in (HEADS, NEURONS):
            compare(f"ig {kind.name}" + ("" if len(layers) == cfg.n_layers else "*"),
                    lambda: attrscope.attribute(model, task, "ig", d, kind.name, n_steps=args.n_steps,
                                                show_progress=False)[kind.name],
                    lambda: captum_ig(model, task, d, kind, args.n_steps, layers),
                    pick=lambda x: x[:, layers], ref_scale=cfg.n_layers / len(layers))
        if len(layers) != cfg.n_layers:
            print(f"* captum ran on layers {layers} only; its time is scaled by "
                  f"{cfg.n_layers}/{len(layers)} (attrscope ran on all layers)")
    if "atp" not in skip:
        # Sub-second timings: best of 5 on each side, or one scheduler hiccup decides the ratio.
        t1 = min(timed(lambda: attrscope.attribute(model, task, "atp", d, show_progress=False))[1]
                 for _ in range(5))
        t2 = min(timed(lambda: plain_fwd_bwd(model, task, d))[1] for _ in range(5))
        print(f"{'atp':<11} attrscope {t1:8.2f}s   2 plain forwards + 1 backward {t2:8.2f}s   "
              f"ratio {t1 / t2:5.2f}", flush=True)


if __name__ == "__main__":
    main()
