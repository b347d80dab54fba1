"""Shared fixtures: the embedded model, and a small randomly initialised GPT-2-architecture model
saved to a local folder (the Hugging Face hub is unreachable in tests).

The random model has 3 layers and 4 heads, d_mlp 96, so that layers, heads, positions and
neurons all differ in size: an axis mix-up cannot pass unnoticed.

``llama_model`` is a randomly initialised Llama-architecture model (RMSNorm, rotary positions,
SwiGLU MLP, no biases, untied unembedding) with grouped-query attention: 3 layers, 4 query heads
sharing 2 key/value heads, d_model 48, d_mlp 96, saved with the same tokenizer.
"""

from __future__ import annotations

import os

# Tests never reach the Hugging Face hub (it is unreachable on CI machines).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

import attrscope
from families import save_tokenizer  # noqa: F401  (tests import it from here too)


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("random_gpt2")
    tok = save_tokenizer(folder)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=48, n_layer=3, n_head=4, n_inner=96,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    save_scaled_random_model(GPT2LMHeadModel, config, folder)
    return folder


def save_scaled_random_model(model_class, config, folder) -> None:
    """A random ``model_class(config)`` (seed 1234) with its matrices scaled by 4, saved."""
    torch.manual_seed(1234)
    model = model_class(config)
    # Larger weights than the default init make the random model's metric vary with components.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    model.save_pretrained(folder)


@pytest.fixture(scope="session")
def llama_model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("random_llama")
    tok = save_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    save_scaled_random_model(LlamaForCausalLM, config, folder)
    return folder


@pytest.fixture(scope="session")
def llama_model(llama_model_dir):
    return attrscope.load_model(str(llama_model_dir))


@pytest.fixture(scope="session")
def llama_task(llama_model):
    return attrscope.load_task("ioi", llama_model, n=5, seed=3)


@pytest.fixture(scope="session")
def random_model(random_model_dir):
    return attrscope.load_model(str(random_model_dir))


@pytest.fixture(scope="session")
def embedded_model():
    return attrscope.load_model()


@pytest.fixture(scope="session")
def random_task(random_model):
    return attrscope.load_task("ioi", random_model, n=5, seed=3)


@pytest.fixture(scope="session")
def embedded_task(embedded_model):
    return attrscope.load_task("ioi", embedded_model, n=6, seed=7)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster of 2 CPUs, started once per test session (tests of sweeps and
    sharding); skipped where ray is not installed (``pip install attrscope[ray]``)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install attrscope[ray])")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()
