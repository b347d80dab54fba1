"""Build the planted-circuit model (``attrscope-planted``): a 2-layer GPT-2 with hand-set weights
whose heads have a known role, and its ground truth (``ground_truth.json`` beside the weights).

Prompt: five slot words in order, each followed by 0-2 fillers, then `` was``. Slot h's word is
*clean* (feature F = 1) or *corrupted* (F = 0); both carry slot h's marker S_h. Heads 0.0-0.4 each
attend to the token with their marker (wherever it is) and copy its F into their own residual
dimension; heads 0.5-0.7 copy slots 0-2 into dimensions nothing reads (distractors). The layer-0
MLP computes, on the logit dimension,

    AND(h0, h1) + OR(h2, h3) + h4,  AND(s) = clamp((s - 1.25) / 0.5, 0, 1),
                                    OR(s)  = clamp((s - 0.25) / 0.5, 0, 1),

each clamp as two smoothed-ReLU neurons, gelu(16 x) / 16 (0.0/0.1 for AND, 0.2/0.3 for OR);
head 0.4 writes to the logit dimension directly (single path). Layer 1 is all zeros (inert components). The unembedding (tied)
reads the logit dimension for the answer `` hello`` only, so logit(answer) - logit(distractor
`` goodbye``) is about 3 on clean prompts and 0 on corrupted ones. LayerNorm is kept nearly
linear: a large constant anchor (+A, -A) in two dimensions of every embedding fixes its scale, and
every write is balanced by the opposite write to an unread "sink" dimension, so the mean it
subtracts is 0. Run: ``python scripts/build_planted_model.py [OUT_DIR]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "attrscope" / "planted_model"
D, N_HEADS, D_MLP, ANCHOR = 32, 8, 16, 40.0
F, MARKER0, HEAD_DIM0, LOGIT = 2, 3, 11, 19  # residual dimensions (see the module docstring)
SHARPNESS = 16.0  # of the smoothed ReLUs in the MLP
SINKS = (28, 29, 30, 31)  # every write is balanced here, so LayerNorm's mean stays 0

GROUND_TRUTH = {
    "heads": {"and": ["0.0", "0.1"], "or": ["0.2", "0.3"], "single": ["0.4"],
              "distractor": ["0.5", "0.6", "0.7"], "inert": [f"1.{i}" for i in range(N_HEADS)]},
    "neurons": {"single": ["0.0", "0.1", "0.2", "0.3"],
                "inert": [f"{layer}.{i}" for layer in (0, 1) for i in range(D_MLP)
                          if layer == 1 or i >= 4]},
    "metric": {"clean": 3.0, "corrupted": 0.0},
    "notes": "heads 0.0/0.1 feed AND(s) = clamp((s-1.25)/0.5, 0, 1) (needs both), 0.2/0.3 feed "
             "OR(s) = clamp((s-0.25)/0.5, 0, 1) (either suffices), 0.4 writes the logit "
             "directly, 0.5-0.7 write dimensions nothing reads (active, no effect); layer 1 and "
             "neurons 0.4-0.15 are all zeros. Relevant = and + or + single.",
}


def set_weights(model: GPT2LMHeadModel, tok) -> None:
    sd = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    from attrscope.tasks.planted_data import SLOT_WORDS

    d_head = D // N_HEADS
    wte = sd["transformer.wte.weight"]
    wte[:, 0], wte[:, 1] = ANCHOR, -ANCHOR
    for slot, words in enumerate(SLOT_WORDS):
        for word, feature in zip(words, (1.0, 0.0)):  # (clean word, corrupted word)
            (tid,) = tok(word, add_special_tokens=False)["input_ids"]
            wte[tid, F], wte[tid, MARKER0 + slot] = feature, 1.0
            wte[tid, SINKS[0]] = -(feature + 1.0)
    answer = tok(" hello", add_special_tokens=False)["input_ids"][0]
    sd["transformer.wte.weight"][answer, LOGIT] = 1.0  # tied unembedding reads the logit dim
    sd["transformer.wte.weight"][answer, SINKS[0]] = -1.0
    # LayerNorm weight 10 undoes the 1/std (std ~ ANCHOR * sqrt(2 / D) = 10).
    scale = 1.0 / (ANCHOR * (2.0 / D) ** 0.5)
    for name in ("transformer.h.0.ln_1.weight", "transformer.h.0.ln_2.weight",
                 "transformer.h.1.ln_1.weight", "transformer.h.1.ln_2.weight",
                 "transformer.ln_f.weight"):
        sd[name][:] = 1.0 / scale
    attn = sd["transformer.h.0.attn.c_attn.weight"]  # [D, 3D]: x @ W -> q | k | v
    proj = sd["transformer.h.0.attn.c_proj.weight"]  # [D, D]: heads' concat -> residual
    targets = [0, 1, 2, 3, 4, 0, 1, 2]  # the slot each head reads
    outputs = [HEAD_DIM0 + h for h in range(5)] + [16, 17, 18]
    for h, (slot, out) in enumerate(zip(targets, outputs)):
        col = h * d_head
        attn[0, col] = 15.0 / ANCHOR  # q = 15 from the anchor, at every position
        attn[MARKER0 + slot, D + col] = 4.0  # k = 4 at the slot's word: score 60 / sqrt(4) = 30
        attn[F, 2 * D + col] = 1.0  # v = F of the attended token
        proj[col, out], proj[col, SINKS[2]] = 1.0, -1.0
        if h == 4:  # the single-path head also writes the logit directly
            proj[col, LOGIT], proj[col, SINKS[2]] = 1.0, -2.0
    fc, fc_b = sd["transformer.h.0.mlp.c_fc.weight"], sd["transformer.h.0.mlp.c_fc.bias"]
    mlp_out = sd["transformer.h.0.mlp.c_proj.weight"]  # [D_MLP, D]
    # gelu(k x) / k is ReLU smoothed over ~1/k: smooth enough for 50-step IG to be complete,
    # sharp enough that the gates' flat ends have (nearly) zero gradient.
    for neuron, (heads, bias, sign) in enumerate([((0, 1), -1.25, 1), ((0, 1), -1.75, -1),
                                                  ((2, 3), -0.25, 1), ((2, 3), -0.75, -1)]):
        for h in heads:
            fc[HEAD_DIM0 + h, neuron] = SHARPNESS
        fc_b[neuron] = bias * SHARPNESS
        mlp_out[neuron, LOGIT] = 2.0 * sign / SHARPNESS
        mlp_out[neuron, SINKS[3]] = -2.0 * sign / SHARPNESS
    if "lm_head.weight" in sd:  # tied: one tensor, so both names must carry the embedding
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    model.load_state_dict(sd)


def build(out: Path = DEFAULT_OUT) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(ROOT / "src" / "attrscope" / "default_model")
    config = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=D, n_layer=2,
                        n_head=N_HEADS, n_inner=D_MLP, activation_function="gelu_new",
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, layer_norm_epsilon=1e-5)
    model = GPT2LMHeadModel(config)
    set_weights(model, tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "ground_truth.json").write_text(json.dumps(GROUND_TRUTH, indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
