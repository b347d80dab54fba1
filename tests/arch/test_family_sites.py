"""Sites at named positions on every family (tests/families.py) against a plain Hugging Face
hooks oracle: one (site, unit, position) patched per forward for ``ap``; the gradient at the
site's module times (source - run) at the position for ``atp``. No TransformerLens and no
attrscope code runs inside the oracle.

Where each site is in a Hugging Face model:

- ``resid_pre`` layer l: the input of decoder layer l; layer n_layers: the final norm's input;
- ``attn_out`` / ``mlp_out``: the output of the attention / MLP output projection (before any
  post-norm);
- ``heads``: the input of the attention output projection (head h at features h*E..(h+1)*E);
- ``q`` / ``k`` / ``v``: the query / key / value projection's output (columns of a fused one),
  or the query / key norm's output where the model has one (what attention reads, before the
  rotary embedding).

Tolerance: 1e-4 + 1e-3 x max |oracle| (float32), as tests/arch/test_families.py.
"""

from __future__ import annotations

import pytest
import torch

from transformers import AutoModelForCausalLM

import attrscope
from attrscope.arch import adapter_for
from families import FAMILIES, build
from hf_oracle import OUT_PROJ, run_source

POSITIONS = ["S2", "END"]
SITES = ["resid_pre", "attn_out", "mlp_out", "heads", "q", "k", "v"]
LLAMA_LIKE = ("model.layers.{l}", "model.norm", "model.layers.{l}.self_attn")
BLOCKS = {  # family: (decoder layer, final norm, attention module)
    "gpt2": ("transformer.h.{l}", "transformer.ln_f", "transformer.h.{l}.attn"),
    "gpt_neox": ("gpt_neox.layers.{l}", "gpt_neox.final_layer_norm", "gpt_neox.layers.{l}.attention"),
    "gptj": ("transformer.h.{l}", "transformer.ln_f", "transformer.h.{l}.attn"),
    "opt": ("model.decoder.layers.{l}", "model.decoder.final_layer_norm",
            "model.decoder.layers.{l}.self_attn"),
}
NORMED_QK = {"qwen3", "gemma3_text", "olmo2"}


def assert_matches(got: torch.Tensor, oracle: torch.Tensor) -> None:
    tol = 1e-4 + 1e-3 * float(oracle.abs().max())
    worst = float((got - oracle).abs().max())
    assert worst <= tol, f"max difference {worst:.3g} > tolerance {tol:.3g}"


def site_spec(family: str, a, site: str, layer: int):
    """(module, "pre" or "out", layout, columns(unit) -> slice of the flattened features)."""
    layer_t, final_t, attn_t = BLOCKS.get(family, LLAMA_LIKE)
    E, H, K = a.d_head, a.n_heads, a.n_kv_heads
    per_head = lambda u, offset=0: slice(offset + u * E, offset + (u + 1) * E)  # noqa: E731
    whole = lambda u: slice(None)  # noqa: E731
    if site == "resid_pre":
        name = final_t if layer == a.n_layers else layer_t.format(l=layer)
        return name, "pre", "bsf", whole
    if site in ("attn_out", "mlp_out"):
        return OUT_PROJ[family][site == "mlp_out"].format(l=layer), "out", "bsf", whole
    if site == "heads":
        return OUT_PROJ[family][0].format(l=layer), "pre", "bsf", per_head
    attn = attn_t.format(l=layer)
    which = "qkv".index(site)
    if family == "gpt2":
        return f"{attn}.c_attn", "out", "bsf", lambda u: per_head(u, which * H * E)
    if family == "gpt_neox":
        return f"{attn}.query_key_value", "out", "bsf", lambda u: slice(u * 3 * E + which * E,
                                                                          u * 3 * E + (which + 1) * E)
    if family == "phi3":
        return f"{attn}.qkv_proj", "out", "bsf", lambda u: per_head(u, [0, H * E, (H + K) * E][which])
    if family in NORMED_QK and site != "v":
        layout = "bhse" if family == "gemma3_text" else "bsf"
        return f"{attn}.{site}_norm", "out", layout, per_head
    return f"{attn}.{site}_proj", "out", "bsf", per_head


class Site:
    """One site of a Hugging Face model, read and changed as ``[b, s, features]``."""

    def __init__(self, hf, spec):
        name, self.where, self.layout, self.columns = spec
        self.module = hf.get_submodule(name)

    def flat(self, x: torch.Tensor, b: int, s: int) -> torch.Tensor:
        if self.layout == "bhse":
            return x.transpose(1, 2).reshape(b, s, -1)
        return x.reshape(b, s, -1)

    def back(self, flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.layout == "bhse":
            b, h, s, e = like.shape
            return flat.reshape(b, s, h, e).transpose(1, 2)
        return flat.reshape(like.shape)

    def metric(self, hf, task, tokens, change=None) -> torch.Tensor:
        """logit(answer) - logit(distractor) ``[n]`` with ``change(flat) -> flat`` applied."""
        b, s = tokens.shape

        def apply(x):
            return x if change is None else self.back(change(self.flat(x, b, s)), x)

        if self.where == "pre":
            def hook(m, args, kwargs):
                if args:
                    return (apply(args[0]),) + tuple(args[1:]), kwargs
                return args, {**kwargs, "hidden_states": apply(kwargs["hidden_states"])}
            handle = self.module.register_forward_pre_hook(hook, with_kwargs=True)
        else:
            handle = self.module.register_forward_hook(lambda m, args, out: apply(out))
        try:
            logits = hf(tokens).logits
        finally:
            handle.remove()
        rows = torch.arange(b)
        at = logits[rows, task.answer_pos]
        return at[rows, task.answer_ids[:, 0]] - at[rows, task.distractor_ids[:, 0]]

    def value(self, hf, task, tokens) -> torch.Tensor:
        kept = []
        with torch.no_grad():
            self.metric(hf, task, tokens, lambda x: kept.append(x.detach()) or x)
        return kept[0]


def oracle(hf, task, direction, site: Site, n_units: int, method: str) -> torch.Tensor:
    """``[n, units, len(POSITIONS)]``: ap (one unit at one named position per forward) or atp."""
    run, source = run_source(task, direction)
    rows = torch.arange(task.n)
    run_x, src_x = site.value(hf, task, run), site.value(hf, task, source)
    out = torch.zeros(task.n, n_units, len(POSITIONS))
    if method == "atp":
        held = []

        def hold(x):
            x = x.detach().requires_grad_(True)
            held.append(x)
            return x

        site.metric(hf, task, run, hold).sum().backward()
        product = held[0].grad * (src_x - run_x)
    with torch.no_grad():
        base = site.metric(hf, task, run)
        for j, name in enumerate(POSITIONS):
            at = task.positions[name]
            for u in range(n_units):
                cols = site.columns(u)
                if method == "atp":
                    out[:, u, j] = product[rows, at][:, cols].sum(-1)
                    continue

                def patch(x, cols=cols, at=at):
                    x = x.clone()
                    x[rows, at, cols] = src_x[rows, at, cols]
                    return x

                out[:, u, j] = site.metric(hf, task, run, patch) - base
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    build(request.param, folder)
    model = attrscope.load_model(str(folder))
    task = attrscope.load_task("ioi", model, n=3, seed=3)
    # A plain Hugging Face model of the same folder: the bridge wraps the loaded one's modules.
    hf = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    return request.param, model, hf, task


@pytest.mark.parametrize("method", ["ap", "atp"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_every_site_at_named_positions_matches_hf_oracle(fam, direction, method):
    family, model, hf, task = fam
    a = adapter_for(model)
    scores = attrscope.attribute(model, task, method, direction, SITES, positions=POSITIONS,
                                 show_progress=False)
    assert scores.meta["engine"].startswith("suffix_forward")
    biggest = 0.0
    for kind in SITES:
        got = scores[kind]
        for layer in range(got.shape[1]):
            site = Site(hf, site_spec(family, a, kind, layer))
            want = oracle(hf, task, direction, site, got.shape[2], method)
            assert_matches(got[:, layer], want)
            biggest = max(biggest, float(want.abs().max()))
    assert biggest > 1e-2  # the sites change the metric: not a comparison of zeros
