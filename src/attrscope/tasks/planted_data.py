"""Prompt pairs for the planted-circuit model ``attrscope-planted`` (pure Python, no torch).

Clean: the five slots' *clean* words in order, each followed by 0-2 fillers, then `` was`` ->
`` hello`` (vs `` goodbye``); corrupted: the same with every slot's *corrupted* word, so every
planted head reads F = 0. The fillers (so the prompt lengths) vary and have no effect. See
``scripts/build_planted_model.py``.
"""

from __future__ import annotations

import random

METRIC = "logit_diff"
DESCRIPTION = ("planted circuit: five slot words with fillers, then ' was' -> ' hello' vs "
               "' goodbye'; corrupted: every slot's other word (for the attrscope-planted model, "
               "whose heads are known AND / OR / single-path / distractor components)")
SLOT_WORDS = ((" sunny", " rainy"), (" happy", " bored"), (" hot", " cold"), (" nice", " crazy"),
              (" quiet", " busy"))  # (clean, corrupted) per slot
FILLERS = (" the", " and", " then", " there", " really")


def generate_planted_pairs(n: int, seed: int = 0, split: str = "all") -> list[dict]:
    """``n`` rows (clean, corrupted, answer, distractor, positions ``SLOT1``..``SLOT5``: each
    slot's word), deterministic given ``seed``; every
    split is the same distribution (the model is not trained)."""
    if split not in ("all", "train", "heldout"):
        raise ValueError(f"split must be all, train or heldout, got {split!r}.")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        fillers = ["".join(rng.choice(FILLERS) for _ in range(rng.randint(0, 2))) for _ in SLOT_WORDS]
        clean = "".join(w[0] + f for w, f in zip(SLOT_WORDS, fillers)) + " was"
        corrupted = "".join(w[1] + f for w, f in zip(SLOT_WORDS, fillers)) + " was"
        positions, at = {}, 0
        for slot, (w, f) in enumerate(zip(SLOT_WORDS, fillers), start=1):
            positions[f"SLOT{slot}"] = {"char": at + 1}  # after the word's leading space
            at += len(w[0]) + len(f)
        rows.append({"clean": clean, "corrupted": corrupted, "answer": " hello",
                     "distractor": " goodbye", "positions": positions})
    return rows
