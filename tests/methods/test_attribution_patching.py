"""``atp``: exact identity with ``ap`` where the metric is linear in the patched activation."""

import pytest
import torch

import attrscope


@pytest.fixture
def linear_final_norm(embedded_model):
    """Freeze the final LayerNorm's scale to 1: the norm becomes x - mean(x) (times its weight,
    plus bias), so the metric is linear in the last layer's heads and neurons."""
    def freeze(scale, hook):
        return torch.ones_like(scale)

    with embedded_model.hooks(fwd_hooks=[("ln_final.hook_scale", freeze)]):
        yield embedded_model


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_atp_equals_ap_when_metric_is_linear(linear_final_norm, embedded_task, direction):
    model = linear_final_norm
    last = model.cfg.n_layers - 1
    ap = attrscope.attribute(model, embedded_task, "ap", direction, show_progress=False)
    atp = attrscope.attribute(model, embedded_task, "atp", direction, show_progress=False)
    for kind in ("heads", "neurons"):
        assert ap[kind][:, last].abs().max() > 1e-2, kind
        torch.testing.assert_close(atp[kind][:, last], ap[kind][:, last], atol=1e-4, rtol=1e-4)
    # Earlier layers feed the nonlinear rest of the network: there the estimate differs,
    # which shows this comparison can fail.
    assert not torch.allclose(atp["heads"][:, 0], ap["heads"][:, 0], atol=1e-3)


def test_atp_is_first_order_estimate_of_ap(embedded_model, embedded_task):
    ap = attrscope.attribute(embedded_model, embedded_task, "ap", "denoising", "heads",
                             show_progress=False)
    atp = attrscope.attribute(embedded_model, embedded_task, "atp", "denoising", "heads",
                              show_progress=False)
    corr = torch.corrcoef(torch.stack([ap["heads"].flatten(), atp["heads"].flatten()]))[0, 1]
    assert corr > 0.5


def test_atp_sample_chunks_do_not_change_results(embedded_model, embedded_task):
    whole = attrscope.attribute(embedded_model, embedded_task, "atp", "noising", show_progress=False)
    chunked = attrscope.attribute(embedded_model, embedded_task, "atp", "noising",
                                  show_progress=False, max_batch_rows=4)
    for kind in ("heads", "neurons"):
        torch.testing.assert_close(chunked[kind], whole[kind], atol=1e-5, rtol=1e-5)
