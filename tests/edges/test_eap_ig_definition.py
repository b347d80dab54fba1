"""``eap-ig-act`` with ``definition="eap-ig"``: the EAP-IG library's EAP-IG-activations.

- against an oracle written here with plain Hugging Face hooks on GPT-2: one forward and
  backward per sublayer and step, the sublayer's output replaced by a constant, and every
  destination input's gradient taken from the projection it feeds;
- the documented difference from the complete definition: its sums over the edges into a stage
  are not exact patching of those edges, while both definitions give exact patching into the
  logits where the metric is linear in the final stream, and with one step EAP-IG's edges into
  the logits are EAP's.
"""

import pytest
import torch
from transformers import GPT2LMHeadModel

import attrscope
from attrscope.edges.methods import (EdgeRun, eap_ig_activations_scores, eap_ig_sublayer_scores,
                                     eap_scores, exact_scores)

from hf_oracle import hf_metric, run_source
from test_edge_methods import freeze_final_norm_scale, stage_edges

STEPS = 2


class Recorder:
    """Forward hooks on a Hugging Face GPT-2 that record each sublayer's output, and each
    destination's input and the gradient of what it feeds, and can replace one sublayer's
    output by a constant (``replace``: ``(module, tensor)``)."""

    def __init__(self, hf: GPT2LMHeadModel):
        self.hf, self.handles, self.saved, self.replace = hf, [], {}, None
        blocks = hf.transformer.h
        self._save_input(blocks[0], "input")
        for layer, block in enumerate(blocks):
            self._save_input(block.ln_1, f"ln_1 in {layer}")
            self._save_output(block.attn.c_attn, f"qkv {layer}")
            self._save_input(block.attn.c_proj, f"z {layer}")
            self._save_output(block.attn, f"attn {layer}")
            self._save_input(block.ln_2, f"ln_2 in {layer}")
            self._save_output(block.ln_2, f"ln_2 out {layer}")
            self._save_output(block.mlp, f"mlp {layer}")
        self._save_input(hf.transformer.ln_f, "ln_f in")
        self._save_output(hf.transformer.ln_f, "ln_f out")

    def _save_input(self, module, name):
        def hook(mod, args):
            if self.replace is not None and self.replace[0] is mod:
                args = (self.replace[1],) + tuple(args[1:])
            self.saved[name] = args[0]
            return args
        self.handles.append(module.register_forward_pre_hook(hook))

    def _save_output(self, module, name):
        def hook(mod, args, output):
            if self.replace is not None and self.replace[0] is mod:
                output = (self.replace[1], *output[1:]) if isinstance(output, tuple) else self.replace[1]
            value = output[0] if isinstance(output, tuple) else output
            if value.requires_grad:
                value.retain_grad()
            self.saved[name] = value
            return output
        self.handles.append(module.register_forward_hook(hook))

    def close(self):
        for handle in self.handles:
            handle.remove()


def source_outputs(rec: Recorder, hf, tokens, task) -> dict:
    """Every sublayer's output ``[n, P, d]`` and every source node's ``[n, P, d]`` (in graph
    source order: input, then per layer its heads and its MLP) in a clean forward."""
    cfg = hf.config
    dh = cfg.n_embd // cfg.n_head
    with torch.no_grad():
        hf_metric(hf, task, tokens)
    sublayer = {"input": rec.saved["input"].clone()}
    sources = [sublayer["input"]]
    for layer, block in enumerate(hf.transformer.h):
        z, w = rec.saved[f"z {layer}"], block.attn.c_proj.weight  # [n, P, H dh], [H dh, d]
        sources += [z[..., h * dh:(h + 1) * dh] @ w[h * dh:(h + 1) * dh] for h in range(cfg.n_head)]
        sources.append(rec.saved[f"mlp {layer}"].clone())
        sublayer[f"attn {layer}"] = rec.saved[f"attn {layer}"].clone()
        sublayer[f"mlp {layer}"] = sources[-1]
    return {"sublayers": sublayer, "sources": torch.stack(sources, dim=2)}


def pulled_back(norm, x, weight, grad) -> torch.Tensor:
    """The gradient at ``x`` ``[n, P, d]`` of a destination whose input is ``norm(x) @
    weight``, given the gradient ``grad`` of that product (zero if it got none)."""
    if grad is None:
        return torch.zeros_like(x)
    x = x.detach().requires_grad_(True)
    out = norm(x) if weight is None else norm(x) @ weight
    return torch.autograd.grad(out, x, grad)[0]


def destination_grads(rec: Recorder, hf, graph) -> torch.Tensor:
    """``[n, P, n_dests, d]`` the metric's gradient at every destination input, in graph
    destination order, from the gradients recorded in the last backward."""
    cfg, s = hf.config, rec.saved
    d, dh = cfg.n_embd, cfg.n_embd // cfg.n_head
    grads = []
    for layer, block in enumerate(hf.transformer.h):
        qkv = s[f"qkv {layer}"]
        for head in range(cfg.n_head):
            for j in range(3):  # q, k, v: the columns of c_attn this input feeds
                cols = slice(j * d + head * dh, j * d + (head + 1) * dh)
                g = None if qkv.grad is None else qkv.grad[..., cols]
                grads.append(pulled_back(block.ln_1, s[f"ln_1 in {layer}"],
                                         block.attn.c_attn.weight[:, cols], g))
        grads.append(pulled_back(block.ln_2, s[f"ln_2 in {layer}"], None,
                                 s[f"ln_2 out {layer}"].grad))
    grads.append(pulled_back(hf.transformer.ln_f, s["ln_f in"], None, s["ln_f out"].grad))
    return torch.stack(grads, dim=2)


def hf_eap_ig_activations(model_dir, task, direction: str, graph, steps: int) -> torch.Tensor:
    """Oracle of EAP-IG's EAP-IG-activations ``[n, n_edges]``: for each sublayer (input, each
    attention, each MLP) and step k = 1..steps, one forward of the run with that sublayer's
    output replaced by the constant run + (1 - k/steps)(source - run); each adds delta_u .
    gradient at v for every edge u -> v; the total is averaged over all those passes."""
    hf = GPT2LMHeadModel.from_pretrained(model_dir).float().eval()
    run, source = run_source(task, direction)
    rec = Recorder(hf)
    try:
        at_run, at_source = (source_outputs(rec, hf, t, task) for t in (run, source))
        delta = at_source["sources"] - at_run["sources"]  # [n, P, n_sources, d]
        blocks = hf.transformer.h
        modules = {"input": blocks[0]}
        for layer, block in enumerate(blocks):
            modules[f"attn {layer}"], modules[f"mlp {layer}"] = block.attn, block.mlp
        total = torch.zeros(task.n, graph.n_dests, graph.n_sources, dtype=torch.float64)
        for name, module in modules.items():
            a, b = at_run["sublayers"][name], at_source["sublayers"][name]
            for k in range(1, steps + 1):
                rec.replace = (module, a + (1 - k / steps) * (b - a))
                hf.zero_grad()
                hf_metric(hf, task, run).sum().backward()
                grads = destination_grads(rec, hf, graph)
                total += torch.einsum("npsd,npvd->nvs", delta, grads).double()
        total /= len(modules) * steps
    finally:
        rec.close()
    return total[:, graph.dest_index, graph.source_index].float()


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_eap_ig_definition_equals_hf_oracle(random_model_dir, random_model, random_task,
                                            direction):
    got = attrscope.attribute(random_model, random_task, "eap-ig-act", direction, "edges",
                              definition="eap-ig", n_steps=STEPS, max_batch_rows=4,
                              show_progress=False)["edges"]
    er = EdgeRun.prepare(random_model, random_task, direction)
    expected = hf_eap_ig_activations(str(random_model_dir), random_task, direction, er.graph,
                                     STEPS)
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    complete = attrscope.attribute(random_model, random_task, "eap-ig-act", direction, "edges",
                                   n_steps=STEPS, show_progress=False)["edges"]
    assert (complete - expected).abs().max() > 1e-3  # the oracle tells the definitions apart


def stage_sums(scores: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """``[n, stages]`` the scores summed over the edges into each destination stage."""
    return torch.stack([scores[:, g].sum(-1) for g in groups], dim=1)


def test_only_the_complete_definition_sums_to_exact_patching(random_model, random_task):
    """Summed over the edges into a stage, the complete definition is exact patching of them
    all; EAP-IG's is not, and more steps do not close the gap: a difference of definition,
    not of quadrature."""
    er = EdgeRun.prepare(random_model, random_task, "denoising")
    groups = stage_edges(er.graph)
    exact = exact_scores(er, groups)

    def sums(definition, steps):
        return stage_sums(attrscope.attribute(
            random_model, random_task, "eap-ig-act", "denoising", "edges", n_steps=steps,
            definition=definition, show_progress=False)["edges"], groups)

    torch.testing.assert_close(sums("complete", 16), exact, atol=1e-4, rtol=1e-4)
    gap_4, gap_16 = ((sums("eap-ig", s) - exact).abs().max() for s in (4, 16))
    assert gap_16 > 1e-2
    assert abs(gap_16 - gap_4) < 0.1 * gap_16


def test_definitions_agree_into_logits_where_linear(embedded_model, embedded_task):
    """Where the metric is linear in the final stream (its norm's scale frozen), the gradient
    at the logits is the same in every pass, so both definitions give exact patching into the
    logits; into the other stages they differ."""
    er = EdgeRun.prepare(embedded_model, embedded_task, "noising")
    freeze_final_norm_scale(er)
    graph = er.graph
    into_logits = stage_edges(graph)[-1]
    exact = exact_scores(er, [[e] for e in into_logits], max_batch_rows=600)
    eap_ig = eap_ig_sublayer_scores(er, steps=2)
    complete = eap_ig_activations_scores(er, steps=1)  # one node is exact where linear
    assert exact.abs().max() > 1e-1
    torch.testing.assert_close(eap_ig[:, into_logits], exact, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(complete[:, into_logits], exact, atol=1e-4, rtol=1e-4)
    assert (eap_ig - complete).abs().max() > 1e-2


def test_one_step_is_eap_into_logits_only(random_model, random_task):
    """With one step every pass is the run itself (k/steps = 1), so the gradient at the logits
    is EAP's; elsewhere each pass has one sublayer frozen, which removes the paths through it
    from the gradients upstream of it, so EAP-IG's definition is not EAP even at first order."""
    er = EdgeRun.prepare(random_model, random_task, "noising")
    graph = er.graph
    into_logits = stage_edges(graph)[-1]
    one, eap = eap_ig_sublayer_scores(er, steps=1), eap_scores(er)
    torch.testing.assert_close(one[:, into_logits], eap[:, into_logits], atol=1e-5, rtol=1e-5)
    assert (one - eap).abs().max() > 1e-3


def test_definition_is_checked(random_model, random_task):
    with pytest.raises(ValueError, match="definition must be one of \\['complete', 'eap-ig'\\]"):
        attrscope.attribute(random_model, random_task, "eap-ig-act", "denoising", "edges",
                            definition="mib", show_progress=False)
