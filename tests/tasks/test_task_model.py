"""The shipped task-suite model really performs all six tasks on their held-out splits.

Loaded through ``attrscope.load_model("attrscope-tasks")``; prompts are tokenized here (BOS +
prompt, right padded: with causal attention the padding after a prompt cannot change its
logits) and every metric is recomputed with a plain per-row loop over the full logits at the
prompt's last token."""

from __future__ import annotations

import json
import math

import pytest
import torch

import attrscope
from attrscope.models import TASK_MODEL_DIR, TASK_MODEL_NAME
from attrscope.tasks import (
    capital_country_data,
    gender_data,
    greater_than_data,
    hypernymy_data,
    ioi_data,
    sva_data,
)

N, SEED = 200, 12345
TASKS = {
    "ioi": (ioi_data.generate_ioi_pairs, "logit_diff"),
    "ioi_abc": (lambda n, seed, split: ioi_data.generate_ioi_pairs(
        n, seed=seed, split=split, corruption="abc"), "logit_diff"),
    "greater_than": (greater_than_data.generate_greater_than_pairs, greater_than_data.METRIC),
    "capital_country": (capital_country_data.generate_capital_country_pairs,
                        capital_country_data.METRIC),
    "gender": (gender_data.generate_gender_pairs, gender_data.METRIC),
    "sva": (sva_data.generate_sva_pairs, sva_data.METRIC),
    "hypernymy": (hypernymy_data.generate_hypernymy_pairs, hypernymy_data.METRIC),
}
MIN_GAP = {"logit_diff": 1.0, "logprob_diff": 1.0, "prob_diff": 0.3}


@pytest.fixture(scope="module")
def task_model():
    return attrscope.load_model(TASK_MODEL_NAME)


def last_logits(model, prompts):
    """[len(prompts), vocab] logits at each prompt's last token."""
    tok = model.tokenizer
    seqs = [[tok.bos_token_id] + tok.encode(p, add_special_tokens=False) for p in prompts]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    with torch.no_grad():
        logits = model(ids)
    return torch.stack([logits[i, len(s) - 1] for i, s in enumerate(seqs)]).double()


def metric(kind, row_logits, answers, distractors):
    """One row's metric, written out plainly (probabilities from an explicit softmax)."""
    probs = torch.exp(row_logits - row_logits.max())
    probs = probs / probs.sum()
    if kind == "logit_diff":
        return float(row_logits[answers[0]] - row_logits[distractors[0]])
    p_a = sum(float(probs[i]) for i in answers)
    p_d = sum(float(probs[i]) for i in distractors)
    if kind == "prob_diff":
        return p_a - p_d
    assert kind == "logprob_diff"
    return math.log(p_a) - math.log(p_d)


def one_token(tok, strings):
    ids = []
    for s in [strings] if isinstance(strings, str) else strings:
        enc = tok.encode(s, add_special_tokens=False)
        assert len(enc) == 1, s
        ids.append(enc[0])
    return ids


def measure(model, name):
    gen, kind = TASKS[name]
    pairs = gen(N, seed=SEED, split="heldout")
    clean = last_logits(model, [p["clean"] for p in pairs])
    corrupted = last_logits(model, [p["corrupted"] for p in pairs])
    c, k = [], []
    for i, p in enumerate(pairs):
        a, d = one_token(model.tokenizer, p["answer"]), one_token(model.tokenizer, p["distractor"])
        c.append(metric(kind, clean[i], a, d))
        k.append(metric(kind, corrupted[i], a, d))
    return kind, sum(c) / N, sum(k) / N, sum(x > 0 for x in c) / N


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_model_performs_the_task_on_held_out_prompts(task_model, name):
    kind, clean, corrupted, accuracy = measure(task_model, name)
    assert accuracy >= 0.9, (name, accuracy)
    assert clean - corrupted > MIN_GAP[kind], (name, clean, corrupted)
    # the shipped training record reports the same numbers (its own implementation)
    record = json.loads((TASK_MODEL_DIR / "training.json").read_text())["heldout_eval"]["tasks"]
    assert record[name]["clean_mean"] == pytest.approx(clean, abs=1e-3)
    assert record[name]["corrupted_mean"] == pytest.approx(corrupted, abs=1e-3)
    assert record[name]["accuracy"] == pytest.approx(accuracy, abs=1.5 / N)  # a row near 0 may flip


def test_task_model_loads_by_name_with_bos_and_right_padding(task_model):
    assert task_model.cfg.model_name == TASK_MODEL_NAME
    tok = task_model.tokenizer
    assert tok.padding_side == "right" and tok.pad_token_id != tok.bos_token_id
    text = "The war lasted from the year 1732 to the year 17"
    tokens = task_model.to_tokens(text)
    assert tokens[0, 0].item() == tok.bos_token_id
    assert tokens[0, 1:].tolist() == tok.encode(text, add_special_tokens=False)
    assert task_model.cfg.n_layers == 4 and task_model.cfg.n_heads == 8


def test_default_model_is_unchanged_by_the_task_model(embedded_model):
    from attrscope.models import DEFAULT_MODEL_NAME

    assert embedded_model.cfg.model_name == DEFAULT_MODEL_NAME
