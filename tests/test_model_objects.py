"""Bring your own model: every accepted model input gives the same scores as the folder path."""

from pathlib import Path

import pytest
import torch

import attrscope
from attrscope.api import attribute_edges
from attrscope.models import as_bridge


class FakeLanguageModel:
    """Stand-in for an nnsight ``LanguageModel`` (not a dependency): the wrapped Hugging Face
    model in ``_model``, its tokenizer in ``tokenizer``."""

    def __init__(self, hf_model, tokenizer):
        self._model = hf_model
        self.tokenizer = tokenizer


def _hf(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.fixture(scope="module")
def reference(random_model_dir):
    """atp head scores with the model loaded from its folder path."""
    model = attrscope.load_model(str(random_model_dir))
    task = attrscope.load_task("ioi", model, n=3, seed=3)
    return attrscope.attribute(model, task, "atp", components="heads", show_progress=False)


@pytest.mark.parametrize("kind", ["path", "hf", "hf+tokenizer", "nnsight", "bridge"])
def test_every_model_input_gives_the_same_scores(kind, random_model_dir, reference):
    folder = Path(random_model_dir)
    if kind == "path":
        model = folder  # a pathlib.Path, not only a str
    elif kind == "hf":
        model = _hf(folder)  # tokenizer found from its name_or_path folder
    elif kind == "hf+tokenizer":
        model = attrscope.load_model(_hf(folder), tokenizer=_tokenizer(folder))
    elif kind == "nnsight":
        model = FakeLanguageModel(_hf(folder), _tokenizer(folder))
    else:
        model = attrscope.load_model(str(folder))
    task = attrscope.load_task("ioi", model, n=3, seed=3)
    scores = attrscope.attribute(model, task, "atp", components="heads", show_progress=False)
    torch.testing.assert_close(scores["heads"], reference["heads"], atol=1e-5, rtol=1e-5)
    assert not torch.equal(scores["heads"], torch.zeros_like(scores["heads"]))


def test_a_hugging_face_model_is_wrapped_once_and_a_bridge_returned_as_is(random_model_dir):
    hf = _hf(random_model_dir)
    attributes = set(vars(hf))
    bridge = as_bridge(hf)
    assert set(vars(hf)) == attributes  # nothing stored on the user's model object
    assert as_bridge(hf) is bridge and as_bridge(bridge) is bridge
    assert attrscope.load_model(bridge, device="cpu") is bridge
    assert bridge.cfg.model_name == str(random_model_dir)
    nn = FakeLanguageModel(hf, bridge.tokenizer)
    assert as_bridge(nn) is bridge  # the nnsight stand-in reaches the same Hugging Face model


def test_edges_accept_a_hugging_face_model(random_model_dir, random_model):
    task = attrscope.load_task("ioi", random_model, n=2, seed=3)
    expected = attribute_edges(random_model, task, "eap", show_progress=False)
    got = attribute_edges(_hf(random_model_dir), task, "eap", show_progress=False)
    torch.testing.assert_close(got["edges"], expected["edges"], atol=1e-5, rtol=1e-5)


def test_load_model_moves_a_hugging_face_model_to_the_dtype_asked(random_model_dir):
    bridge = attrscope.load_model(_hf(random_model_dir), dtype="float64")
    assert next(bridge.parameters()).dtype == torch.float64


@pytest.mark.parametrize("bad", [3, {"model": "gpt2"}, torch.nn.Linear(2, 2)])
def test_anything_else_is_a_type_error_listing_what_is_accepted(bad):
    with pytest.raises(TypeError, match="PreTrainedModel.*nnsight LanguageModel.*TransformerBridge"):
        attrscope.load_model(bad)
    with pytest.raises(TypeError, match="accepts"):
        attrscope.load_task("ioi", bad, n=2)


def test_a_model_without_a_findable_tokenizer_says_to_pass_one(random_model_dir):
    hf = _hf(random_model_dir)
    hf.name_or_path = ""  # e.g. a model built from a config in memory
    with pytest.raises(ValueError, match="pass one"):
        as_bridge(hf)


def test_a_bridge_whose_config_misreads_the_mlp_width_is_left_as_it_is(tmp_path):
    """OPT's TransformerLens config says d_mlp = 4 d_model whatever ffn_dim is (200 in the
    fixture). attrscope reads the width from the weights (``arch.config_of``) and never writes
    it into the user's bridge: its cfg is the same after every method, and neuron scores have
    the weights' width."""
    from transformer_lens import TransformerBridge

    from attrscope.arch import config_of
    from attrscope.registry import methods_of
    from families import build

    build("opt", tmp_path)
    bridge = TransformerBridge.boot_transformers(str(tmp_path), hf_model=_hf(tmp_path),
                                                 tokenizer=_tokenizer(tmp_path), device="cpu")
    before = dict(vars(bridge.cfg))
    assert bridge.cfg.d_mlp != 200  # else this test checks nothing
    assert config_of(bridge).d_mlp == 200
    task = attrscope.load_task("ioi", bridge, n=2, seed=0)
    for name in methods_of("node"):
        scores = attrscope.attribute(bridge, task, name, components="heads,neurons",
                                     show_progress=False, **({"n_steps": 2} if name == "ig" else {}))
        assert scores["neurons"].shape == (2, 3, 200), name
        assert dict(vars(bridge.cfg)) == before, name
    for name in methods_of("edge"):
        attribute_edges(bridge, task, name, show_progress=False,
                        **({} if name in ("eap", "exact") else {"n_steps": 2}))
        assert dict(vars(bridge.cfg)) == before, name
    loaded = attrscope.load_model(str(tmp_path))  # attrscope's own bridge: not rewritten either
    assert loaded.cfg.d_mlp == bridge.cfg.d_mlp and config_of(loaded).d_mlp == 200
