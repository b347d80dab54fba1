"""attrscope at real model shapes, beside the references, in one process.

Builds a model with the exact shape of GPT-2 small, Pythia-410m or Llama-3.2-1B (random weights,
seed 0, the embedded model's tokenizer, whose ids all exist in the larger vocabularies), saves
it as a Hugging Face folder (under ``--cache``, default a temporary folder; never in the
repository) and times every node method, each edge method and the screened ``ap`` on a few IOI
prompts, with the peak memory of each step (resident set size above the level before it,
sampled every 2 ms; on CUDA, torch's peak allocation). On a subset the references run in the
same process: ``transformer_lens.patching`` for ``ap`` heads (``--ref-samples`` samples, one at
a time) and captum's ``LayerIntegratedGradients`` for ``ig`` (``--ig-ref-layers``), with the
ratio of times per unit of work and the largest disagreement.

Each line also gives the pre-run estimate (:func:`attrscope.estimate.estimate_seconds`) and
its ratio to the measured time. ``--json`` writes every row.

Usage (each well under 3 minutes on a shared 2-core CPU):
    python benchmarks/real_shapes.py --shape gpt2-small --n 4
    python benchmarks/real_shapes.py --shape llama-3.2-1b --dtype bfloat16 --n 2 --methods atp --compare
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import attrscope  # noqa: E402
from attrscope import HEADS  # noqa: E402
from compare_references import captum_ig, timed, tl_heads  # noqa: E402

SHAPES = {
    # name: (config class, config keyword arguments)
    "gpt2-small": ("GPT2Config", dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12,
                                      n_head=12, n_inner=3072, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0)),
    "pythia-410m": ("GPTNeoXConfig", dict(vocab_size=50304, hidden_size=1024, num_hidden_layers=24,
                                          num_attention_heads=16, intermediate_size=4096,
                                          rotary_pct=0.25, max_position_embeddings=2048,
                                          use_parallel_residual=True, tie_word_embeddings=False)),
    "llama-3.2-1b": ("LlamaConfig", dict(vocab_size=128256, hidden_size=2048, num_hidden_layers=16,
                                         num_attention_heads=32, num_key_value_heads=8,
                                         intermediate_size=8192, head_dim=64, rope_theta=500000.0,
                                         max_position_embeddings=2048, tie_word_embeddings=True)),
    # a few-MB stand-in with GPT-2's layout, for tests and smoke runs
    "tiny": ("GPT2Config", dict(vocab_size=2000, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                n_inner=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
}


def save_shape(shape: str, folder: Path, dtype: str = "float32") -> Path:
    """A random model of ``shape`` (seed 0) and the embedded tokenizer saved into ``folder``
    (reused when a previous run saved it there)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from attrscope.models import DEFAULT_MODEL_DIR

    folder = Path(folder)
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR, local_files_only=True)
    tok.save_pretrained(folder)
    class_name, kwargs = SHAPES[shape]
    config = getattr(transformers, class_name)(bos_token_id=tok.bos_token_id,
                                               eos_token_id=tok.eos_token_id, **kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(folder)
    return folder


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f}"


def run_rows(model, task, methods: list[str], args) -> list[dict]:
    """Time, peak memory and the pre-run estimate of each method (denoising), heads and
    neurons; the references beside ``ap`` heads and ``ig``."""
    from attrscope.estimate import estimate_seconds

    rows = []
    for method in methods:
        spec = attrscope.methods.get_method(method)
        settings = dict(args.settings.get(method, {}))
        kinds = ["edges"] if spec.granularity == "edge" else ["heads", "neurons"]
        estimate = estimate_seconds(model, task, method, settings, kinds)
        result, seconds = timed(lambda: attrscope.attribute(
            model, task, method, "denoising", show_progress=False, **settings))
        row = {"method": method, "settings": settings, "seconds": round(seconds, 4),
               "peak_gib": round(timed.peak / 2**30, 3), "estimate_s": round(estimate, 4),
               "estimate_over_actual": round(estimate / seconds, 2)}
        if method == "ap" and args.ref_samples:
            samples = list(range(min(args.ref_samples, task.n)))
            ref, ref_s = timed(lambda: tl_heads(model, task, "denoising", samples))
            row["reference"] = "transformer_lens.patching heads"
            ours_heads, ours_s = timed(lambda: attrscope.attribute(
                model, task, "ap", "denoising", "heads", show_progress=False))
            # per sample: the reference ran on len(samples), attrscope on all n
            row["ref_ratio"] = round((ref_s / len(samples)) / (ours_s / task.n), 2)
            row["max_abs_diff"] = float((ours_heads["heads"][samples] - ref[samples]).abs().max())
        if method == "ig" and args.ig_ref_layers:
            layers = [int(x) for x in args.ig_ref_layers.split(",")]
            steps = settings.get("n_steps", spec.defaults["n_steps"])
            ref, ref_s = timed(lambda: captum_ig(model, task, "denoising", HEADS, steps, layers))
            ours = result["heads"][:, layers]
            row["reference"] = f"captum LayerIntegratedGradients heads, layers {layers}"
            # per layer and kind: attrscope did 2 kinds x all layers
            per_ours = seconds / (2 * model.cfg.n_layers)
            row["ref_ratio"] = round((ref_s / len(layers)) / per_ours, 2)
            row["max_abs_diff"] = float((ours - ref[:, layers]).abs().max())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-small")
    parser.add_argument("--n", type=int, default=4, help="IOI prompt pairs")
    parser.add_argument("--methods", default="atp,atpstar,ig,ap,eap",
                        help="comma-separated; ap is screened (atp, top 50 + audit 50 per kind)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for the saved models (default: a temporary one)")
    parser.add_argument("--ref-samples", type=int, default=1)
    parser.add_argument("--ig-ref-layers", default="0")
    parser.add_argument("--n-steps", type=int, default=5, help="ig and eap-ig steps")
    parser.add_argument("--compare", action="store_true",
                        help="also time attrscope.compare's default plan (ap screened when over "
                             "the budget) and its peak memory")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.settings = {"ig": {"n_steps": args.n_steps}, "eap-ig": {"n_steps": args.n_steps},
                     "ap": {"screen": "atp", "screen_top_k": 50, "screen_audit": 50}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_shape(args.shape, (args.cache or Path(tmp)) / f"{args.shape}-{args.dtype}",
                            args.dtype)
        started = time.perf_counter()
        model = attrscope.load_model(str(folder), device=args.device, dtype=args.dtype)
        task = attrscope.load_task("ioi", model, n=args.n)
        print(f"{args.shape} ({args.dtype}, {args.device}): loaded in "
              f"{time.perf_counter() - started:.1f}s; {task.n} prompts of "
              f"{task.clean_tokens.shape[1]} tokens", flush=True)
        rows = run_rows(model, task, [m for m in args.methods.split(",") if m], args)
        if args.compare:
            comparison, seconds = timed(lambda: attrscope.compare(
                model, task, show_progress=False, log=lambda line: None, n_boot=100,
                n_random=10))
            row = {"method": "compare (default plan)", "plan": comparison.info.get("plan"),
                   "seconds": round(seconds, 2), "peak_gib": round(timed.peak / 2**30, 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"shape": args.shape, "n": args.n, "dtype": args.dtype,
                                         "device": args.device, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
