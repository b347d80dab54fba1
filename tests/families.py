"""Tiny random models of every supported family, built from their ``transformers`` config classes.

Every model has 3 layers, d_model 128 and 4 query heads; each exercises its family's features
(listed beside it). ``build(family, folder)`` saves one with the embedded model's tokenizer and
its matrices scaled by 4 so that components have visible effects.
"""

from __future__ import annotations

import torch

COMMON = dict(num_hidden_layers=3, num_attention_heads=4, hidden_size=128, intermediate_size=256,
              max_position_embeddings=128)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}


def _configs(vocab: int) -> dict:
    import transformers as t

    alternating = ["sliding_attention", "full_attention", "sliding_attention"]
    return {
        # learned positions, LayerNorm, fused qkv, GELU MLP
        "gpt2": (t.GPT2LMHeadModel, t.GPT2Config(n_embd=128, n_layer=3, n_head=4, n_inner=256,
                                                 n_positions=128)),
        # parallel residual, 25 % rotary, fused interleaved qkv
        "gpt_neox": (t.GPTNeoXForCausalLM, t.GPTNeoXConfig(
            **COMMON, use_parallel_residual=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "partial_rotary_factor": 0.25})),
        # parallel residual with one shared LayerNorm, 25 % rotate-every-two rotary
        "gptj": (t.GPTJForCausalLM, t.GPTJConfig(n_embd=128, n_layer=3, n_head=4, n_inner=256,
                                                 rotary_dim=8, n_positions=128)),
        # RMSNorm, grouped-query attention, gated MLP, llama3 rope scaling
        "llama": (t.LlamaForCausalLM, t.LlamaConfig(**COMMON, num_key_value_heads=2,
                                                    rope_parameters=LLAMA3_ROPE,
                                                    tie_word_embeddings=False)),
        # a sliding window shorter than the prompts
        "mistral": (t.MistralForCausalLM, t.MistralConfig(**COMMON, num_key_value_heads=2,
                                                          sliding_window=5)),
        # q/k/v biases, tied embeddings
        "qwen2": (t.Qwen2ForCausalLM, t.Qwen2Config(**COMMON, num_key_value_heads=2,
                                                    tie_word_embeddings=True)),
        # q/k RMSNorm per head, head_dim != d_model / heads, no q/k/v biases
        "qwen3": (t.Qwen3ForCausalLM, t.Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=48,
                                                    tie_word_embeddings=False)),
        # pre- and post-norms, soft-capping, alternating local/global, query_pre_attn_scalar
        "gemma2": (t.Gemma2ForCausalLM, t.Gemma2Config(
            **COMMON, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24,
            attn_logit_softcapping=20.0, final_logit_softcapping=15.0, sliding_window=5,
            layer_types=alternating)),
        # q/k norms, per-layer-type rotary
        "gemma3_text": (t.Gemma3ForCausalLM, t.Gemma3TextConfig(
            **COMMON, num_key_value_heads=2, head_dim=32, sliding_window=5,
            layer_types=alternating)),
        # fused qkv and gate/up projections, partial rotary
        "phi3": (t.Phi3ForCausalLM, t.Phi3Config(
            **COMMON, num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "partial_rotary_factor": 0.5})),
        # q/k norms over all heads, post-norms only
        "olmo2": (t.Olmo2ForCausalLM, t.Olmo2Config(**COMMON, num_key_value_heads=2)),
        # ReLU, ffn_dim != 4 d_model, learned positions with an offset
        "opt": (t.OPTForCausalLM, t.OPTConfig(hidden_size=128, ffn_dim=200, num_hidden_layers=3,
                                              num_attention_heads=4, word_embed_proj_dim=128,
                                              max_position_embeddings=128)),
        # post-LayerNorm blocks and a projected embedding: refused
        "opt350m_style": (t.OPTForCausalLM, t.OPTConfig(
            hidden_size=128, ffn_dim=200, num_hidden_layers=3, num_attention_heads=4,
            word_embed_proj_dim=64, do_layer_norm_before=False, max_position_embeddings=128)),
    }


FAMILIES = ["gpt2", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "gemma2",
            "gemma3_text", "phi3", "olmo2", "opt"]
REFUSED = ["opt350m_style"]


# Config fields that set a model's size, per naming scheme, for ``build(size="medium")``.
_SIZE_FIELDS = {"layers": ("num_hidden_layers", "n_layer"), "d_model": ("hidden_size", "n_embd"),
                "heads": ("num_attention_heads", "n_head"), "d_mlp": ("intermediate_size", "n_inner", "ffn_dim")}
MEDIUM = {"layers": 8, "d_model": 512, "heads": 8, "d_mlp": 2048, "head_dim": 64}


def save_tokenizer(folder):
    """The embedded model's byte-level BPE tokenizer (IOI names are single tokens in it), saved
    in ``folder``. Here rather than in tests/conftest.py: ``import conftest`` finds whichever
    conftest module a full run imported first."""
    from transformers import AutoTokenizer

    from attrscope.models import DEFAULT_MODEL_DIR

    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR, local_files_only=True)
    tok.save_pretrained(folder)
    return tok


def build(family: str, folder, size: str = "tiny") -> None:
    """Save a random model of ``family`` (seed 1234, matrices x 4) and the tokenizer: the tiny
    one above, or with ``size="medium"`` 8 layers, d_model 512, 8 heads, d_mlp 2048."""
    tok = save_tokenizer(folder)
    model_class, config = _configs(len(tok))[family]
    if size == "medium":
        for key, names in _SIZE_FIELDS.items():
            for name in names:
                if getattr(config, name, None) is not None:
                    setattr(config, name, MEDIUM[key])
        if getattr(config, "head_dim", None) is not None:
            config.head_dim = MEDIUM["head_dim"]
        if getattr(config, "layer_types", None) is not None:  # the same pattern, repeated
            types = config.layer_types
            config.layer_types = [types[i % len(types)] for i in range(MEDIUM["layers"])]
        if getattr(config, "word_embed_proj_dim", None) is not None:
            config.word_embed_proj_dim = MEDIUM["d_model"]
    config.vocab_size = len(tok)
    config.bos_token_id, config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    config.pad_token_id = tok.eos_token_id
    for name in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "attention_dropout", "hidden_dropout",
                 "dropout", "embed_dropout", "resid_dropout"):
        if hasattr(config, name):
            setattr(config, name, 0.0)
    torch.manual_seed(1234)
    model = model_class(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(4.0)
            elif "norm" in name and p.dim() == 1:  # non-trivial norm weights
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(folder)
