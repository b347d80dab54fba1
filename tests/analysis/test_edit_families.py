"""The parameters a head or neuron owns, for every model family, checked by what they do with
plain Hugging Face hooks (no attrscope adapter): changing a head's q/k/v elements changes only
that head's output ``z`` (and, under grouped-query attention, the heads sharing its key/value
head); changing its output-projection elements changes the projection only through that head's
features. The same for a neuron's input and output. And an edit leaves every other element
bit-identical."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from attrscope.analysis.edit import Target, masked_finetune, parameter_masks
from families import FAMILIES, build
from hf_oracle import OUT_PROJ

LAYER, HEAD, NEURON = 1, 2, 5  # layer != head: a transposed mask would show


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    build(request.param, folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    return request.param, hf


def _tokens(hf) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(5, hf.config.vocab_size, (2, 7), generator=generator)


def _projection_input(hf, module, tokens) -> torch.Tensor:
    """``[batch, pos, features]``: the input of ``module`` in a plain forward."""
    saved = {}
    handle = module.register_forward_pre_hook(lambda m, args: saved.update(x=args[0].detach()))
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        handle.remove()
    return saved["x"]


def _perturb(hf, masks: dict, names) -> None:
    params = dict(hf.named_parameters())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in names:
            idx = masks[name]
            params[name].view(-1)[idx] += torch.randn(idx.numel(), generator=generator)


def _split(masks: dict, out_name: str) -> tuple[list[str], list[str]]:
    out = [n for n in masks if n == out_name]
    return [n for n in masks if n != out_name], out


def _features_changed(before: torch.Tensor, after: torch.Tensor, size: int) -> set[int]:
    """Which blocks of ``size`` features changed (beyond rounding)."""
    width = before.shape[-1]  # OPT feeds its MLP [batch * pos, features]
    diff = (after - before).abs().reshape(-1, width).amax(dim=0).view(-1, size).amax(dim=1)
    scale = float(before.abs().max())
    return {i for i, d in enumerate(diff.tolist()) if d > 1e-5 * scale}


def _projection_delta_ignores_other_features(module, before: dict, keep: slice, width: int):
    """The projection's change (edited - original weights) applied to inputs with the ``keep``
    features zeroed is 0, and with only them non-zero is not."""
    x = torch.randn(3, width, generator=torch.Generator().manual_seed(2))
    others, only = x.clone(), torch.zeros_like(x)
    others[:, keep] = 0
    only[:, keep] = x[:, keep]
    with torch.no_grad():
        edited = [module(v) for v in (others, only)]
        saved = {n: p.detach().clone() for n, p in module.named_parameters()}
        for n, p in module.named_parameters():
            p.copy_(before[n])
        original = [module(v) for v in (others, only)]
        for n, p in module.named_parameters():
            p.copy_(saved[n])
    assert torch.allclose(edited[0], original[0], atol=1e-5)
    assert not torch.allclose(edited[1], original[1], atol=1e-3)


# OLMo-2 RMS-normalises the queries (and keys) of all heads together, so a head's q/k elements
# rescale every head's queries: there only its value elements are confined to it.
SHARED_QK_NORM = {"olmo2"}


def _run_check(hf, family: str, which: int, target: Target, block: int, changed_ok: set[int]):
    out_name = OUT_PROJ[family][which].format(l=LAYER)
    module = hf.get_submodule(out_name)
    tokens = _tokens(hf)
    masks = parameter_masks(hf, target)
    inner, outer = _split(masks, out_name + ".weight")
    assert inner and outer, sorted(masks)
    z = _projection_input(hf, module, tokens)
    original = {n: p.detach().clone() for n, p in module.named_parameters()}
    if which == 0 and family in SHARED_QK_NORM:
        inner = [n for n in inner if "v_proj" in n]
        assert inner, sorted(masks)
    _perturb(hf, masks, inner)
    changed = _features_changed(z, _projection_input(hf, module, tokens), block)
    unit = NEURON if which else HEAD
    assert unit in changed and changed <= changed_ok, (changed, changed_ok)
    _perturb(hf, masks, outer)
    _projection_delta_ignores_other_features(module, original,
                                             slice(unit * block, (unit + 1) * block), z.shape[-1])


def test_a_heads_parameters_act_through_that_head_only(fam):
    family, hf = fam
    cfg = hf.config
    n_heads = cfg.num_attention_heads if hasattr(cfg, "num_attention_heads") else cfg.n_head
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    group = n_heads // n_kv
    width = hf.get_submodule(OUT_PROJ[family][0].format(l=LAYER)).weight.numel()
    d_model = hf.get_input_embeddings().weight.shape[1]
    E = width // d_model // n_heads
    same_group = set(range(HEAD // group * group, (HEAD // group + 1) * group))
    _run_check(hf, family, 0, Target("h", heads=((LAYER, HEAD),)), E, same_group)


def test_a_neurons_parameters_act_through_that_neuron_only(fam):
    family, hf = fam
    _run_check(hf, family, 1, Target("n", neurons=((LAYER, NEURON),)), 1, {NEURON})


def test_an_edit_leaves_every_other_element_bit_identical(fam):
    family, hf = fam
    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    masks = parameter_masks(hf, Target("x", heads=((0, 3),), neurons=((2, 7),)))
    tokens = _tokens(hf)[:1]
    masked_finetune(hf, masks, [(tokens, 11)], steps=2, lr=1e-2, weight_decay=0.1)
    moved = 0
    for name, p in hf.named_parameters():
        keep = torch.ones(p.numel(), dtype=torch.bool)
        if name in masks:
            keep[masks[name]] = False
            moved += int((p.detach().reshape(-1) != before[name].reshape(-1)).sum())
        assert torch.equal(p.detach().reshape(-1)[keep], before[name].reshape(-1)[keep]), name
    assert moved > 0
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(before[name])
