"""Model loading: the embedded model, local Hugging Face folders, and hub names."""

import pytest
import torch

import attrscope
from attrscope.models import DEFAULT_MODEL_NAME, default_model_info


def test_local_folder_loads_offline_and_matches_hugging_face(random_model_dir, random_model):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(random_model_dir).eval()
    tokens = random_model.to_tokens("When John and Mary went to the store, John gave a drink to")
    with torch.no_grad():
        torch.testing.assert_close(random_model(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
    assert random_model.cfg.n_layers == 3 and random_model.cfg.n_heads == 4
    assert not random_model.training


def test_embedded_model_solves_held_out_ioi(embedded_model):
    """The shipped model must really do the task on names and templates it never saw in IOI
    training: >= 98 % accuracy and mean logit difference >= 3."""
    task = attrscope.load_task("ioi", embedded_model, n=500, seed=12345, split="heldout")
    with torch.no_grad():
        clean = task.metric(embedded_model(task.clean_tokens))
        corrupted = task.metric(embedded_model(task.corrupted_tokens))
    accuracy = (clean > 0).float().mean().item()
    assert accuracy >= 0.98, accuracy
    assert clean.mean().item() >= 3.0, clean.mean().item()
    assert corrupted.mean().item() < 0  # the corruption flips the answer
    assert embedded_model.cfg.model_name == DEFAULT_MODEL_NAME
    assert embedded_model.cfg.n_layers != embedded_model.cfg.n_heads


def test_embedded_model_has_a_training_record():
    info = default_model_info()
    assert {"seed", "hyperparameters", "architecture", "heldout_eval"} <= set(info), sorted(info)
    assert info["heldout_eval"]["accuracy"] >= 0.98 and info["heldout_eval"]["mean_logit_diff"] >= 3


def test_folder_without_config_gives_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is empty"):
        attrscope.load_model(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        attrscope.load_model(str(tmp_path))


@pytest.mark.parametrize("fault, message", [
    ("missing", "does not exist"), ("file", "is a file"), ("config", "not valid JSON"),
    ("no weights", "has no weights"), ("truncated", "model.safetensors is corrupt or truncated"),
    ("header", "model.safetensors is corrupt or truncated"), ("tokenizer", "has no tokenizer"),
])
def test_model_folder_faults_are_named_before_loading(random_model_dir, tmp_path, fault, message):
    import shutil

    from attrscope.models import check_model_folder

    folder = tmp_path / "m"
    shutil.copytree(random_model_dir, folder)
    assert check_model_folder(folder) == folder.resolve()
    weights = folder / "model.safetensors"
    if fault == "missing":
        shutil.rmtree(folder)
    elif fault == "file":
        folder = weights
    elif fault == "config":
        (folder / "config.json").write_text("{model_type: gpt2")
    elif fault == "no weights":
        weights.unlink()
    elif fault == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif fault == "header":
        data = bytearray(weights.read_bytes())
        data[8:20] = b"\xff" * 12  # the JSON header overwritten
        weights.write_bytes(bytes(data))
    else:
        for name in ("tokenizer.json", "vocab.json"):
            (folder / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=message):
        check_model_folder(folder)


def test_unreachable_hub_name_gives_clear_error():
    with pytest.raises(Exception, match="definitely-not-a-model"):
        attrscope.load_model("attrscope-tests/definitely-not-a-model")


def test_bad_device_and_dtype_are_refused():
    with pytest.raises(ValueError, match="dtype"):
        attrscope.load_model(None, dtype="float8")
    with pytest.raises(ValueError, match="device"):
        attrscope.load_model(None, device="tpu:banana")


def _bert_folder(folder):
    """A BERT masked-LM folder: loads as BertLMHeadModel, but it is no decoder-only causal LM."""
    from transformers import BertConfig, BertForMaskedLM

    from families import save_tokenizer

    tok = save_tokenizer(folder)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    return folder


def test_the_model_check_refuses_an_encoder_before_loading(tmp_path, monkeypatch):
    import transformers

    folder = _bert_folder(tmp_path / "bert")

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    with pytest.raises(ValueError, match=r"'bert' model \(BertForMaskedLM\), not a decoder-only "
                                         "causal language model"):
        attrscope.load_model(str(folder))


def test_the_model_check_refuses_an_encoder_object(tmp_path):
    from transformers import AutoTokenizer, BertForMaskedLM

    folder = _bert_folder(tmp_path / "bert")
    with pytest.raises(ValueError, match="not a decoder-only causal language model"):
        attrscope.load_model(BertForMaskedLM.from_pretrained(folder),
                             tokenizer=AutoTokenizer.from_pretrained(folder))


def test_config_and_weights_disagreeing_on_vocab_size_are_named(random_model_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(random_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    rows = config["vocab_size"]
    config["vocab_size"] = rows + 7
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"disagree on vocab_size: config.json says {rows + 7}, "
                                         f"model.safetensors has {rows} rows"):
        attrscope.load_model(str(folder))
