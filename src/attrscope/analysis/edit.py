"""Attribution-guided model editing: fine-tune only the parameters of chosen heads and neurons.

**Targets.** A :class:`Target` is a set of heads ``(layer, head)`` and neurons ``(layer,
neuron)``, or every parameter of the model (``all``). It is chosen from any :class:`Scores` (the
top fraction of each kind by |mean score|, :func:`top_fraction`), from the latent (direction-
asymmetric) components of :mod:`attrscope.analysis.latent` (:func:`latent_target`), as a union
(:func:`union`), or at random with the same number of heads and neurons (:func:`random_like`,
seeded). :func:`parse_target` reads the command line's form (``ig:top10%``, ``latent``,
``ig:top10%+latent``, ``random:ig:top10%``, ``all``).

**Which parameters a component owns.** A head ``h`` of layer ``l`` owns its query, key and value
slices (weights and biases) and its rows of the output projection (``W_O[h]``; the output bias is
the layer's, not a head's). Under grouped-query attention, query head ``h`` reads key/value head
``h // (n_heads / n_kv_heads)`` (Hugging Face's ``repeat_kv`` order), which the other query
heads of its group share: editing the head edits that key/value head, so the other heads of the
group see the change through their keys and values (the record lists the key/value heads). A
neuron ``n`` owns its input column (and the gate's, in a gated MLP), its input bias entries and
its output row (the output bias is the layer's). The slices come from the model family's block
adapter (:mod:`attrscope.arch`), read from a twin model whose every parameter element holds its
own index, so that a slice is located by value, for every family the adapter reads, with no
per-family code here: the masks are indexed by (layer, head), never by a transposed layer axis.

**The edit.** Only the target elements are optimised: the optimiser (Adam, no weight decay by
default) holds a copy of exactly those elements, and after each step they are written back by
index; no other element is ever written, so every other parameter is bit-identical after the
edit (``tests/analysis/test_edit.py``). The loss is the negative log-probability of each fact's
new answer after its rewrite prompt. The model edited is a clean Hugging Face copy of the user's
(which is left untouched) and is written with ``save_pretrained`` plus ``edit.json``, the record
of what changed.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Int

from ..scores import Scores

KINDS = ("heads", "neurons")


@dataclass(frozen=True)
class Target:
    """Components to edit: ``heads`` and ``neurons`` as sorted ``(layer, unit)`` tuples, or
    ``everything`` (every parameter of the model). ``name`` says how it was chosen."""

    name: str
    heads: tuple[tuple[int, int], ...] = ()
    neurons: tuple[tuple[int, int], ...] = ()
    everything: bool = False
    info: dict = field(default_factory=dict, compare=False)

    def units(self, kind: str) -> tuple[tuple[int, int], ...]:
        return getattr(self, kind)

    def counts(self) -> dict[str, int]:
        return {kind: len(self.units(kind)) for kind in KINDS}

    def labels(self, kind: str) -> list[str]:
        return [f"{layer}.{unit}" for layer, unit in self.units(kind)]

    def describe(self) -> str:
        if self.everything:
            return f"{self.name}: every parameter"
        return f"{self.name}: {len(self.heads)} heads, {len(self.neurons)} neurons"


ALL = Target("all", everything=True)


def _sorted(units) -> tuple[tuple[int, int], ...]:
    return tuple(sorted({(int(a), int(b)) for a, b in units}))


def top_fraction(scores: Scores, fraction: float = 0.1, kinds=KINDS, name: str | None = None
                 ) -> Target:
    """The ``ceil(fraction x n_components)`` components of each kind with the largest |mean
    score| over samples (unscored, NaN, components left out). ``fraction`` in (0, 1]."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}.")
    chosen = {}
    for kind in kinds:
        if kind not in scores:
            raise ValueError(f"The {scores.method} result has no {kind!r} scores; it has "
                             f"{scores.kinds}.")
        mean = scores.mean(kind)
        n_units = mean.shape[1]
        key = mean.abs().flatten()
        key = torch.where(torch.isnan(key), torch.full_like(key, -1.0), key)
        k = min(math.ceil(fraction * key.numel()), int((key >= 0).sum()))
        order = torch.argsort(key, descending=True, stable=True)[:k]
        chosen[kind] = _sorted((int(i) // n_units, int(i) % n_units) for i in order)
    pct = f"{100 * fraction:g}%"
    return Target(name or f"{scores.method}:top{pct}", **chosen,
                  info={"method": scores.method, "direction": scores.direction,
                        "fraction": fraction})


def latent_target(results: dict[tuple[str, str], Scores], kinds=KINDS, **options) -> Target:
    """The latent components (AND- and OR-like) of :func:`~attrscope.analysis.latent.
    latent_analysis` over ``results`` ((method, direction) -> Scores, a patching method and
    ``ig`` in both directions), of every patching method, each kind. ``options``:
    latent_analysis' settings (min_asymmetry, n_boot, seed, level)."""
    from .latent import latent_analysis

    chosen: dict[str, set] = {kind: set() for kind in KINDS}
    for kind in kinds:
        found = latent_analysis(results, kind, **options)
        if found["detector"] is None:
            raise ValueError("The latent set needs ig in both directions beside a patching "
                             "method (the seed study's contrast).")
        for sets in found["latent"].values():
            chosen[kind] |= {(e["layer"], e["unit"]) for which in sets.values() for e in which}
    return Target("latent", _sorted(chosen["heads"]), _sorted(chosen["neurons"]))


def latent_of(results: dict[tuple[str, str], Scores]) -> Target:
    """The latent target of ``ap`` against ``ig`` in ``results``, whatever else they hold."""
    return latent_target({k: v for k, v in results.items() if k[0] in (LATENT_PATCHING, "ig")})


def union(*targets: Target, name: str | None = None) -> Target:
    """Every component of any of ``targets`` (``all`` if one of them is)."""
    name = name or "+".join(t.name for t in targets)
    if any(t.everything for t in targets):
        return Target(name, everything=True)
    return Target(name, _sorted(u for t in targets for u in t.heads),
                  _sorted(u for t in targets for u in t.neurons))


def random_like(target: Target, n_layers: int, n_heads: int, d_mlp: int, seed: int = 0,
                name: str | None = None) -> Target:
    """As many heads and as many neurons as ``target``, drawn uniformly without replacement
    over all (layer, unit), from a private ``random.Random(seed)``."""
    if target.everything:
        raise ValueError("random_like: 'all' has no same-size random counterpart.")
    rng = random.Random(seed)

    def draw(n: int, size: int) -> tuple[tuple[int, int], ...]:
        return _sorted(divmod(i, size) for i in rng.sample(range(n_layers * size), n))

    return Target(name or f"random:{target.name}", draw(len(target.heads), n_heads),
                  draw(len(target.neurons), d_mlp), info={"seed": seed, "like": target.name})


# -- the command line's form -------------------------------------------------------------------
_TOP = re.compile(r"^([a-z][a-z0-9-]*)(?:/(denoising|noising))?:top(\d+(?:\.\d+)?)(%?)$")


def parse_target(spec: str) -> list[tuple]:
    """Parse ``PART[+PART...]`` into ``[("top", method, direction, fraction_or_count, is_pct)
    | ("latent",) | ("all",) | ("random", inner parts, seed or None)]``. PART:
    ``METHOD[/DIRECTION]:topP%``
    (the top P % of each kind), ``METHOD[/DIRECTION]:topK`` (the top K of each kind),
    ``latent``, ``all``; ``random:SPEC`` is a random set of SPEC's size, ``random@S:SPEC`` one
    drawn with seed S (else the run's seed). A ValueError names the part that does not parse."""
    spec = spec.strip()
    random_part = re.match(r"^random(?:@(\d+))?:(.*)$", spec)
    if random_part:
        inner = parse_target(random_part[2])
        if any(p[0] == "all" for p in inner):
            raise ValueError(f"--target {spec!r}: 'all' has no same-size random counterpart.")
        return [("random", inner, None if random_part[1] is None else int(random_part[1]))]
    parts = []
    for part in spec.split("+"):
        part = part.strip()
        if part in ("latent", "all"):
            parts.append((part,))
            continue
        match = _TOP.match(part)
        if not match:
            raise ValueError(f"--target part {part!r}: write METHOD[/DIRECTION]:topP% (e.g. "
                             "ig:top10%), METHOD:topK, latent, all, random:SPEC, joined by +.")
        method, direction, amount, pct = match.groups()
        value = float(amount) / 100 if pct else int(float(amount))
        if (pct and not 0 < value <= 1) or (not pct and (value < 1 or "." in amount)):
            raise ValueError(f"--target part {part!r}: the percentage must be in (0, 100] and a "
                             "count a whole number >= 1.")
        parts.append(("top", method, direction or "denoising", value, bool(pct)))
    return parts


def check_target_methods(parts: list[tuple], spec: str) -> None:
    """Refuse a target naming a method that is not a node method (edit targets are heads and
    neurons), naming the option's value."""
    from ..methods import methods_of

    nodes = methods_of("node")
    for part in parts:
        if part[0] == "random":
            check_target_methods(part[1], spec)
        elif part[0] == "top" and part[1] not in nodes:
            raise ValueError(f"--target {spec!r}: {part[1]!r} is not a node method; choose from "
                             f"{', '.join(sorted(nodes))} (edit targets are heads and neurons).")


LATENT_PATCHING = "ap"  # the patching method whose asymmetry the latent target contrasts with ig


def needed_results(parts: list[tuple], patching: str = LATENT_PATCHING) -> set[tuple[str, str]]:
    """(method, direction) attributions a parsed target needs."""
    need = set()
    for part in parts:
        if part[0] == "top":
            need.add((part[1], part[2]))
        elif part[0] == "latent":
            need |= {(patching, "denoising"), (patching, "noising"), ("ig", "denoising"),
                     ("ig", "noising")}
        elif part[0] == "random":
            need |= needed_results(part[1], patching)
    return need


def one_sample(scores: Scores, sample: int) -> Scores:
    """``scores`` of one sample (its mean is that sample's score)."""
    return Scores({k: v[sample:sample + 1] for k, v in scores.values.items()}, meta=scores.meta)


def build_target(parts: list[tuple], results: dict[tuple[str, str], Scores], sizes: dict,
                 seed: int = 0, spec: str | None = None, sample: int | None = None,
                 latent: Target | None = None) -> Target:
    """The :class:`Target` of parsed ``parts`` from the attributions ``results`` ((method,
    direction) -> Scores); ``sizes``: n_layers, n_heads, d_mlp. ``sample``: rank the ``top``
    parts by that sample's scores alone (the seed study's per-fact choice); the latent set
    needs every sample (a bootstrap over prompts) and stays the same. ``latent``: the
    :func:`latent_target` of ``results``, when made before."""
    chosen = []
    for part in parts:
        if part[0] == "all":
            chosen.append(ALL)
        elif part[0] == "latent":
            chosen.append(latent or latent_of(results))
        elif part[0] == "random":
            like = build_target(part[1], results, sizes, seed, sample=sample, latent=latent)
            chosen.append(random_like(like, sizes["n_layers"], sizes["n_heads"], sizes["d_mlp"],
                                      seed if part[2] is None else part[2], name=spec))
        else:
            _, method, direction, value, pct = part
            scores = results[(method, direction)]
            scores = scores if sample is None else one_sample(scores, sample)
            if pct:
                chosen.append(top_fraction(scores, value))
            else:
                total = {k: scores[k].shape[1] * scores[k].shape[2] for k in KINDS}
                chosen.append(top_fraction(scores, min(1.0, value / min(total.values()))))
                chosen[-1] = _cut(chosen[-1], scores, value)
    target = chosen[0] if len(chosen) == 1 else union(*chosen)
    return Target(spec or target.name, target.heads, target.neurons, target.everything,
                  target.info)


def _cut(target: Target, scores: Scores, k: int) -> Target:
    """The ``k`` largest-|mean| components of each kind (from a superset ``target``)."""
    out = {}
    for kind in KINDS:
        mean = scores.mean(kind).abs()
        units = sorted(target.units(kind), key=lambda u: -float(mean[u]))[:k]
        out[kind] = _sorted(units)
    return Target(f"{scores.method}:top{k}", **out)


# -- the parameters a target owns --------------------------------------------------------------
def clean_copy(model) -> torch.nn.Module:
    """A plain Hugging Face copy (its own tensors) of the model under a TransformerBridge (or of
    a Hugging Face model): the bridge wraps modules in place and registers aliases of the fused
    weights, which neither training nor ``save_pretrained`` should see."""
    from transformers import AutoModelForCausalLM

    from ..arch import hf_model

    hf = hf_model(model)
    source = {k.replace("._original_component", ""): v for k, v in hf.state_dict().items()}
    param = next(hf.parameters())
    copy = AutoModelForCausalLM.from_config(hf.config).to(device=param.device, dtype=param.dtype)
    missing = sorted(set(copy.state_dict()) - set(source))
    if missing:
        raise ValueError(f"Cannot copy the {type(hf).__name__} for editing: no weights for "
                         f"{missing[:5]}.")
    copy.load_state_dict({k: source[k] for k in copy.state_dict()})
    return copy.eval()


def index_twin(hf: torch.nn.Module) -> tuple[object, list[tuple[int, str]]]:
    """The block adapter of a float64 twin of ``hf`` whose every parameter element holds its own
    index (1-based, global over ``named_parameters``), and [(first index, name)]. float64 holds
    integers exactly up to 2**53 elements."""
    from transformers import AutoModelForCausalLM

    from ..arch import adapter_for

    twin = AutoModelForCausalLM.from_config(hf.config).to(torch.float64)
    starts, offset = [], 1
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(torch.arange(offset, offset + p.numel(), dtype=torch.float64).view_as(p))
            starts.append((offset, name))
            offset += p.numel()
    return adapter_for(twin, torch.float64), starts


def _slices(adapter, kind: str, layer: int, unit: int) -> list[torch.Tensor]:
    """The adapter tensors (index values) a component owns."""
    if kind == "heads":
        kv = unit // (adapter.n_heads // adapter.n_kv_heads)
        parts = [adapter.W_Q[layer][unit], adapter.b_Q[layer][unit], adapter.W_K[layer][kv],
                 adapter.b_K[layer][kv], adapter.W_V[layer][kv], adapter.b_V[layer][kv],
                 adapter.W_O[layer][unit]]
    else:
        parts = [adapter.W_in[layer][:, unit], adapter.b_in[layer][unit],
                 adapter.W_out[layer][unit]]
        if adapter.W_gate is not None:
            parts += [adapter.W_gate[layer][:, unit], adapter.b_gate[layer][unit]]
    return parts


def parameter_masks(hf: torch.nn.Module, target: Target, twin=None
                    ) -> dict[str, Int[torch.Tensor, "m"]]:
    """``{parameter name: sorted flat element indices}`` of the parameters ``target`` owns, for
    a plain Hugging Face model ``hf`` (names of its ``named_parameters``; indices on each
    parameter's device). ``twin``: :func:`index_twin` of ``hf``, when made before."""
    params = dict(hf.named_parameters())
    if target.everything:
        return {name: torch.arange(p.numel(), device=p.device) for name, p in params.items()}
    adapter, starts = twin or index_twin(hf)
    values = []
    for kind in KINDS:
        for layer, unit in target.units(kind):
            values += [t.reshape(-1) for t in _slices(adapter, kind, layer, unit)]
    if not values:
        return {}
    index = torch.cat(values)
    index = index[index > 0]  # a bias the model does not have reads as zeros
    if not torch.equal(index, index.round()):
        raise ValueError("This model family's adapter computes its weights (not a view), so "
                         "its components' parameters cannot be located for editing.")
    index = torch.unique(index.long())
    firsts = torch.tensor([s for s, _ in starts])
    owner = torch.searchsorted(firsts, index, right=True) - 1
    masks = {}
    for i in torch.unique(owner).tolist():
        first, name = starts[i]
        masks[name] = (index[owner == i] - first).to(params[name].device)
    return masks


def head_kv_map(hf: torch.nn.Module) -> dict[str, int]:
    """n_heads, n_kv_heads and group size (query heads per key/value head) of ``hf``."""
    from ..arch import adapter_for

    adapter = adapter_for(hf)
    return {"n_heads": adapter.n_heads, "n_kv_heads": adapter.n_kv_heads,
            "group": adapter.n_heads // adapter.n_kv_heads}


# -- the masked fine-tuning --------------------------------------------------------------------
def answer_id(tokenizer, answer: str) -> int:
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"answer {answer!r} is {len(ids)} tokens; one is needed.")
    return ids[0]


def masked_finetune(hf: torch.nn.Module, masks: dict[str, Int[torch.Tensor, "m"]],
                    examples: list[tuple[Int[torch.Tensor, "1 seq"], int]], steps: int = 25,
                    lr: float = 1e-2, weight_decay: float = 0.0,
                    stop_prob: float | None = None) -> list[float]:
    """Minimise the mean -log p(new answer | prompt) over ``examples`` ((prompt ids ``[1, S]``,
    new answer id)) by changing only the masked elements of ``hf`` (in place), for ``steps``
    Adam steps or until every example's p(new answer) reaches ``stop_prob``. The optimiser
    holds only those elements (so neither weight decay nor momentum reaches any other), and only
    they are written back. Returns the loss before each step and after the last."""
    params = dict(hf.named_parameters())
    frozen = [p.requires_grad for p in params.values()]
    for name, p in params.items():
        p.requires_grad_(name in masks)
    values = {name: params[name].detach().reshape(-1)[idx].clone().requires_grad_(True)
              for name, idx in masks.items()}
    optimiser = torch.optim.Adam(list(values.values()), lr=lr, weight_decay=weight_decay)
    losses = []
    try:
        for step in range(steps + 1):
            hf.zero_grad(set_to_none=True)
            nll = torch.stack([-torch.log_softmax(hf(ids).logits[0, -1].float(), -1)[new]
                               for ids, new in examples])
            loss = nll.mean()
            losses.append(float(loss.detach()))
            reached = stop_prob is not None and bool((nll.detach() <= -math.log(stop_prob)).all())
            if step == steps or not masks or reached:
                break
            loss.backward()
            for name, idx in masks.items():
                grad = params[name].grad
                values[name].grad = (torch.zeros_like(values[name]) if grad is None
                                     else grad.reshape(-1)[idx].to(values[name].dtype))
            optimiser.step()
            with torch.no_grad():
                for name, idx in masks.items():
                    params[name].view(-1).index_copy_(0, idx, values[name].detach())
    finally:
        hf.zero_grad(set_to_none=True)
        for p, flag in zip(params.values(), frozen):
            p.requires_grad_(flag)
    return losses


def n_changed(masks: dict[str, torch.Tensor]) -> int:
    """How many parameter elements the masks let change."""
    return sum(int(idx.numel()) for idx in masks.values())


def edit_record(target: Target, masks: dict[str, torch.Tensor], settings: dict, facts: list,
                hf: torch.nn.Module, losses: list[float]) -> dict:
    """What an edit changed, as JSON: the target, the parameters and element counts, the
    settings, the facts, the loss curve."""
    params = dict(hf.named_parameters())
    return {
        "target": target.name, "everything": target.everything,
        "heads": target.labels("heads"), "neurons": target.labels("neurons"),
        "grouped_query": head_kv_map(hf),
        "parameters": {name: {"shape": list(params[name].shape), "changed": int(idx.numel())}
                       for name, idx in masks.items()},
        "n_parameters_changed": n_changed(masks),
        "n_parameters": sum(p.numel() for p in params.values()),
        "settings": settings,
        "facts": [{"case_id": f.case_id, "prompt": f.prompt, "target_true": f.target_true,
                   "target_new": f.target_new} for f in facts],
        "loss": losses,
    }


def check_edit_folder(folder: str | os.PathLike) -> None:
    """Refuse to replace an existing folder that is not an earlier edit (no ``edit.json``)."""
    folder = Path(folder)
    if folder.exists() and not (folder / "edit.json").exists():
        raise FileExistsError(f"{folder} exists and is not an edited model (no edit.json); "
                              "choose another --out.")


def save_edited(hf: torch.nn.Module, tokenizer, record: dict, folder: str | os.PathLike) -> Path:
    """Write the edited model as a Hugging Face folder (``save_pretrained``, tokenizer) with
    ``edit.json``; loadable by :func:`attrscope.load_model`. It is written beside ``folder`` and
    moved there when complete, so ``folder`` never holds a partial model (an earlier edit there
    is replaced)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".", suffix=".tmp"))
    try:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "edit.json").write_text(json.dumps(record, indent=1))
        check_edit_folder(folder)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder
