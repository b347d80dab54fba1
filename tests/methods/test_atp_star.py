"""``atpstar`` (AtP*): its terms against plain-loop oracles that patch one head's queries, keys or
values through hooks, GradDrop against an independent gradient-blocking mechanism, and the QK fix
against the linearisation through the softmax it replaces."""

import pytest
import torch

import attrscope
from attrscope.methods.atp_star import pattern_term, value_term
from tests.oracles import cache_of, run_and_source

DIRECTIONS = ["denoising", "noising"]


def run_with_grads(model, task, tokens, names, extra_hooks=()):
    """Metric ``[n]`` summed gradient w.r.t. the named activations and the activations themselves."""
    held = {}

    def keeper(name):
        # keyed by the requested name: the bridge reports aliases (hook_z) by their canonical names
        def keep(act, hook):
            held[name] = act
            return act

        return keep

    with torch.enable_grad(), model.hooks(fwd_hooks=[*extra_hooks, *[(n, keeper(n)) for n in names]]):
        metric = task.metric(model(tokens))
        grads = torch.autograd.grad(metric.sum(), [held[n] for n in names], allow_unused=True)
    # None: the activation does not reach the metric (GradDrop oracle blocking its own block)
    grads = [torch.zeros_like(held[n]) if g is None else g for n, g in zip(names, grads)]
    return dict(zip(names, grads)), {n: a.detach() for n, a in held.items()}


def patched_one_head(model, tokens, layer, head, which, source_act, read):
    """Activation ``read`` of a full forward with head ``head``'s ``which`` (q, k or v) at every
    position taken from ``source_act`` ``[n, pos, heads, d_head]``."""
    def patch(act, hook):
        act = act.clone()
        act[:, :, head] = source_act[:, :, head]
        return act

    return cache_of_with_hooks(model, tokens, read, [(f"blocks.{layer}.attn.hook_{which}", patch)])


def cache_of_with_hooks(model, tokens, name, hooks):
    store = {}

    def save(act, hook):
        store["x"] = act.detach()

    with torch.no_grad(), model.hooks(fwd_hooks=[*hooks, (name, save)]):
        model(tokens)
    return store["x"]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_atpstar_without_fixes_is_atp(random_model, random_task, direction):
    atp = attrscope.attribute(random_model, random_task, "atp", direction, show_progress=False)
    star = attrscope.attribute(random_model, random_task, "atpstar", direction, show_progress=False,
                               qk_fix=False, graddrop=False)
    for kind in ("heads", "neurons"):
        assert atp[kind].abs().max() > 1e-2
        torch.testing.assert_close(star[kind], atp[kind], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_qk_terms_equal_patterns_recomputed_by_hooks(random_model, random_task, direction):
    """query/key terms = sum (pattern with one head's q (k) from the source - run pattern) x
    d metric / d pattern, the patched pattern read from a full forward; value term = gradient at z
    x the change of z when only the head's values are patched. Their sum is the head's score
    with head_score="paths"."""
    model, task = random_model, random_task
    run, source = run_and_source(task, direction)
    star = attrscope.attribute(model, task, "atpstar", direction, "heads", show_progress=False,
                               graddrop=False, head_score="paths")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [f"blocks.{l}.attn.hook_{x}" for l in range(L) for x in ("pattern", "z")]
    grads, acts = run_with_grads(model, task, run, names)
    checked = 0
    for layer in range(L):
        pat, z = f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_z"
        for head in range(H):
            expected = {}
            for which in ("q", "k"):
                src = cache_of(model, source, f"blocks.{layer}.attn.hook_{which}")
                new = patched_one_head(model, run, layer, head, which, src, pat)
                expected["query" if which == "q" else "key"] = (
                    (new - acts[pat])[:, head] * grads[pat][:, head]).sum(dim=(1, 2))
            src_v = cache_of(model, source, f"blocks.{layer}.attn.hook_v")
            new_z = patched_one_head(model, run, layer, head, "v", src_v, z)
            expected["value"] = ((new_z - acts[z])[:, :, head] * grads[z][:, :, head]).sum(dim=(1, 2))
            for term, value in expected.items():
                got = star.extras[f"qk.{term}.heads"][:, layer, head]
                torch.testing.assert_close(got, value, atol=1e-4, rtol=1e-4)
            checked += int(expected["query"].abs().max() > 1e-3) + int(expected["key"].abs().max() > 1e-3)
            torch.testing.assert_close(star["heads"][:, layer, head], sum(expected.values()),
                                       atol=1e-4, rtol=1e-4)
    assert checked > L * H  # the terms are not trivially zero


def test_atp_head_score_decomposes_into_value_and_exact_pattern_terms(random_model, random_task):
    """atp(head) = g . (A' (v' - v)) + sum (A' - A) G exactly: on a whole-head patch AtP already
    uses the exact source pattern (the identity the module documents)."""
    model, task = random_model, random_task
    run, source = run_and_source(task, "denoising")
    atp = attrscope.attribute(model, task, "atp", "denoising", "heads", show_progress=False)
    L = model.cfg.n_layers
    names = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    grads, _ = run_with_grads(model, task, run, names)
    for layer in range(L):
        get = lambda tokens, x: cache_of(model, tokens, f"blocks.{layer}.attn.hook_{x}")
        A, A_src = get(run, "pattern"), get(source, "pattern")
        v, v_src = get(run, "v"), get(source, "v")
        g = grads[f"blocks.{layer}.attn.hook_z"]
        G = torch.einsum("bthe,bshe->bhts", g, v)
        total = value_term(g, A_src, v_src - v) + pattern_term(A_src, A, G)
        torch.testing.assert_close(atp["heads"][:, layer], total, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_graddrop_matches_blocking_the_residual_contribution(random_model, random_task, direction):
    """Oracle: for each layer l, the gradient with block l's residual contribution detached at
    hook_resid_post (resid_pre + (resid_post - resid_pre).detach()), then 1/(L-1) sum_l |AtP_l|,
    signed as the undropped AtP."""
    model, task = random_model, random_task
    run, source = run_and_source(task, direction)
    star = attrscope.attribute(model, task, "atpstar", direction, show_progress=False, qk_fix=False)
    atp = attrscope.attribute(model, task, "atp", direction, show_progress=False)
    L = model.cfg.n_layers
    kinds = {"heads": "blocks.{}.attn.hook_z", "neurons": "blocks.{}.mlp.hook_post"}
    names = [t.format(l) for t in kinds.values() for l in range(L)]
    deltas = {n: cache_of(model, source, n) - cache_of(model, run, n) for n in names}
    total = {k: torch.zeros_like(atp[k]) for k in kinds}
    for drop in range(L):
        kept = {}

        def keep_pre(act, hook):
            kept["pre"] = act
            return act

        def block(act, hook):
            return kept["pre"] + (act - kept["pre"]).detach()

        hooks = [(f"blocks.{drop}.hook_resid_pre", keep_pre), (f"blocks.{drop}.hook_resid_post", block)]
        grads, _ = run_with_grads(model, task, run, names, hooks)
        for kind, template in kinds.items():
            for layer in range(L):
                name = template.format(layer)
                c = (grads[name] * deltas[name]).flatten(2 if kind == "neurons" else 3).sum(1)
                if kind == "heads":
                    c = c.sum(-1)
                if layer == drop:  # a node's whole effect passes through its own block
                    assert c.abs().max() < 1e-6
                total[kind][:, layer] += c.abs()
    for kind in kinds:
        expected = torch.sign(atp[kind]) * total[kind] / (L - 1)
        assert (expected.abs() - atp[kind].abs()).abs().max() > 1e-2  # GradDrop changes scores
        torch.testing.assert_close(star[kind], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("which_model", ["embedded", "random"])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_qk_fix_is_closer_to_exact_query_and_key_patching_than_linearising(
        request, which_model, direction):
    """Where the QK fix applies -- patching only a head's queries, or only its keys -- its terms are
    closer to the exact effect (one full forward per head) than AtP's linearisation through the
    softmax, g_q . (q' - q) (resp. keys), on the embedded and the random model."""
    model = request.getfixturevalue(f"{which_model}_model")
    task = request.getfixturevalue(f"{which_model}_task")
    run, source = run_and_source(task, direction)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    star = attrscope.attribute(model, task, "atpstar", direction, "heads", show_progress=False,
                               graddrop=False)
    names = [f"blocks.{l}.attn.hook_{x}" for l in range(L) for x in "qk"]
    grads, acts = run_with_grads(model, task, run, names)
    with torch.no_grad():
        base = task.metric(model(run))
    for which, term in (("q", "query"), ("k", "key")):
        exact, linear = torch.empty(task.n, L, H), torch.empty(task.n, L, H)
        for layer in range(L):
            name = f"blocks.{layer}.attn.hook_{which}"
            src = cache_of(model, source, name)
            for head in range(H):
                def patch(act, hook, head=head):
                    act = act.clone()
                    act[:, :, head] = src[:, :, head]
                    return act

                with torch.no_grad(), model.hooks(fwd_hooks=[(name, patch)]):
                    exact[:, layer, head] = task.metric(model(run)) - base
                linear[:, layer, head] = ((src - acts[name]) * grads[name])[:, :, head].sum((1, 2))
        err_linear = (linear - exact).abs()
        err_fix = (star.extras[f"qk.{term}.heads"] - exact).abs()
        print(f"\n{which_model} {direction} {term}-only patches: |exact| max {exact.abs().max():.3f}; "
              f"AtP through softmax |err| max {err_linear.max():.4f} mean {err_linear.mean():.4f}; "
              f"AtP* QK fix |err| max {err_fix.max():.4f} mean {err_fix.mean():.4f}")
        assert exact.abs().max() > (0.1 if which_model == 'embedded' else 1e-3)
        assert err_fix.max() < err_linear.max() and err_fix.mean() < err_linear.mean()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_default_head_score_is_the_joint_patch_with_the_path_terms_as_extras(
        random_model, random_task, direction):
    """head_score="joint" (default): a whole-head node's patch moves q, k and v together, and the
    QK fix applied to that joint patch is atp's head score; the per-path terms stay extras."""
    atp = attrscope.attribute(random_model, random_task, "atp", direction, "heads", show_progress=False)
    star = attrscope.attribute(random_model, random_task, "atpstar", direction, "heads",
                               show_progress=False, graddrop=False)
    paths = attrscope.attribute(random_model, random_task, "atpstar", direction, "heads",
                                show_progress=False, graddrop=False, head_score="paths")
    torch.testing.assert_close(star["heads"], atp["heads"], atol=1e-5, rtol=1e-5)
    for term in ("value", "query", "key"):
        torch.testing.assert_close(star.extras[f"qk.{term}.heads"], paths.extras[f"qk.{term}.heads"])
    summed = sum(star.extras[f"qk.{term}.heads"] for term in ("value", "query", "key"))
    torch.testing.assert_close(paths["heads"], summed, atol=1e-5, rtol=1e-5)
    assert (paths["heads"] - star["heads"]).abs().max() > 1e-3  # the two scores differ


def test_atpstar_refuses_bad_settings_and_unsupported_attention(random_model, random_task):
    with pytest.raises(ValueError, match="qk_fix must be True or False"):
        attrscope.attribute(random_model, random_task, "atpstar", show_progress=False, qk_fix="yes")
    with pytest.raises(ValueError, match="head_score must be one of"):
        attrscope.attribute(random_model, random_task, "atpstar", show_progress=False, head_score="x")
    with pytest.raises(ValueError, match="needs qk_fix=True"):
        attrscope.attribute(random_model, random_task, "atpstar", show_progress=False,
                            qk_fix=False, head_score="paths")
    # Attention the block adapter does not reproduce (scores tilted towards later keys inside
    # the model): the QK fix is refused, naming the setting that avoids it; without the fix the
    # method runs.
    def tilt(scores, hook):
        return scores + 2.0 * torch.arange(scores.shape[-1], dtype=scores.dtype)

    shift = [("blocks.0.attn.hook_attn_scores", tilt)]
    with random_model.hooks(fwd_hooks=shift):
        with pytest.raises(ValueError, match="qk_fix=False"):
            attrscope.attribute(random_model, random_task, "atpstar", "noising", "heads",
                                show_progress=False)
        attrscope.attribute(random_model, random_task, "atpstar", "noising", "heads", show_progress=False,
                            qk_fix=False)
