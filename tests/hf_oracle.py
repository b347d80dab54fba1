"""An oracle written with plain Hugging Face hooks, for every family of tests/families.py.

Forward pre-hooks on each block's attention output projection (its input is the heads' ``z``,
head h at features ``h*E .. (h+1)*E``) and on the MLP's output projection (its input is the
neurons' activations); one patch per forward, full logits, the metric read by hand. No
TransformerLens and no attrscope code runs here.
"""

from __future__ import annotations

import torch

LLAMA_LIKE = ("model.layers.{l}.self_attn.o_proj", "model.layers.{l}.mlp.down_proj")
OUT_PROJ = {  # family: (attention output projection, MLP output projection)
    "gpt2": ("transformer.h.{l}.attn.c_proj", "transformer.h.{l}.mlp.c_proj"),
    "gpt_neox": ("gpt_neox.layers.{l}.attention.dense", "gpt_neox.layers.{l}.mlp.dense_4h_to_h"),
    "gptj": ("transformer.h.{l}.attn.out_proj", "transformer.h.{l}.mlp.fc_out"),
    "opt": ("model.decoder.layers.{l}.self_attn.out_proj", "model.decoder.layers.{l}.fc2"),
    **{f: LLAMA_LIKE for f in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3",
                                   "olmo2")},
}


# -- the oracle: plain Hugging Face hooks --------------------------------------------------------
def hf_metric(hf, task, tokens, hooks=()) -> torch.Tensor:
    """logit(answer) - logit(distractor) at each answer position ``[n]``, with forward pre-hooks
    ``(module, fn)`` attached for the forward."""
    handles = [module.register_forward_pre_hook(fn) for module, fn in hooks]
    try:
        logits = hf(tokens).logits
    finally:
        for h in handles:
            h.remove()
    rows = torch.arange(tokens.shape[0])
    at = logits[rows, task.answer_pos]
    return at[rows, task.answer_ids[:, 0]] - at[rows, task.distractor_ids[:, 0]]


def module(hf, family: str, which: int, layer: int):
    return hf.get_submodule(OUT_PROJ[family][which].format(l=layer))


def projection_input(hf, task, tokens, mod) -> torch.Tensor:
    saved = {}

    def keep(m, args):
        saved["x"] = args[0].detach()

    with torch.no_grad():
        hf_metric(hf, task, tokens, [(mod, keep)])
    return saved["x"]


def run_source(task, direction):
    if direction == "denoising":
        return task.corrupted_tokens, task.clean_tokens
    return task.clean_tokens, task.corrupted_tokens


def oracle_patch(hf, task, direction, mod, columns_per_patch) -> torch.Tensor:
    """``[n, patches]``: metric change with the projection input's ``columns`` taken from the
    source prompt, one forward per patch."""
    run, source = run_source(task, direction)
    src = projection_input(hf, task, source, mod)
    with torch.no_grad():
        base = hf_metric(hf, task, run)
        out = []
        for cols in columns_per_patch:
            def patch(m, args, cols=cols):
                x = args[0].clone()
                x[..., cols] = src[..., cols]
                return (x,) + args[1:]

            out.append(hf_metric(hf, task, run, [(mod, patch)]) - base)
    return torch.stack(out, dim=1)


def oracle_gradient_times_difference(hf, task, direction, mod, alphas, weights) -> torch.Tensor:
    """``[n, features]`` of ``sum_i w_i grad(run + a_i (source - run)) * (source - run)`` summed over
    positions, at the projection input."""
    run, source = run_source(task, direction)
    run_x, src_x = projection_input(hf, task, run, mod), projection_input(hf, task, source, mod)
    total = torch.zeros_like(run_x, dtype=torch.float64)
    for alpha, weight in zip(alphas, weights):
        point = (run_x + float(alpha) * (src_x - run_x)).requires_grad_(True)
        hf_metric(hf, task, run, [(mod, lambda m, args: (point,) + args[1:])]).sum().backward()
        total += float(weight) * (point.grad * (src_x - run_x)).double()
    # OPT flattens its MLP input to [n * pos, features]: sum positions per sample either way
    return total.reshape(run.shape[0], -1, total.shape[-1]).sum(1).float()  # [n, features]


def per_head(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.view(x.shape[0], n_heads, -1).sum(-1)


