"""Deterministic generator of greater-than prompt pairs (pure Python, no torch).

Clean: ``"The war lasted from the year 1732 to the year 17"``; a model that understands
the task puts its probability mass on end years ``YY > 32`` (``"33"`` ... ``"99"``). The
corrupted prompt sets the start year's last two digits to ``01``
(``"... from the year 1701 to the year 17"``), which removes the information.

Tokenization convention (the task-suite model's tokenizer splits digit runs into pairs): the
prompt ends with the century token ``" 17"`` (with its leading space) and the answers are the
two-digit strings *without* a space, ``"00"`` ... ``"99"``. ``answer`` is the list of years
greater than the start year's ``YY``, ``distractor`` the list of those ``<= YY`` (the two
partition ``00``–``99``). The start ``YY`` is drawn from ``02``–``98`` so both are non-empty.

Metric: ``prob_diff`` = sum of p(answer tokens) - sum of p(distractor tokens), read at the
last prompt token.

Nouns and templates are split deterministically into a training and a held-out part.
"""

from __future__ import annotations

from ._gen_util import check_args, every_kth_heldout, fields, fill, fill_marked, generate_rows

__all__ = ["METRIC", "DESCRIPTION", "NOUNS", "TRAIN_NOUNS", "HELDOUT_NOUNS", "TEMPLATES",
           "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES", "CENTURIES", "CORRUPT_YY", "two_digit",
           "generate_greater_than_pairs"]

METRIC = "prob_diff"
DESCRIPTION = ("greater-than: 'The war lasted from the year 1732 to the year 17' -> end year "
               "'33'..'99' (no leading space); corrupted start year 1701; metric: "
               "p(years > 32) - p(years <= 32)")

NOUNS: tuple[str, ...] = (
    "war", "siege", "drought", "famine", "expedition", "dynasty", "reign", "strike",
    "journey", "voyage", "festival", "project", "crisis", "rebellion", "revolution",
    "occupation", "empire", "plague", "conflict", "campaign",
)
TRAIN_NOUNS, HELDOUT_NOUNS = every_kth_heldout(NOUNS, 4)

# {NOUN}: an event; {CC}: the century ("17"), {YY}: the start year's last two digits.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "The {NOUN} lasted from the year {CC}{YY} to the year {CC}",
    "The {NOUN} started in the year {CC}{YY} and ended in the year {CC}",
    "The {NOUN} began in {CC}{YY} and lasted until {CC}",
    "The {NOUN} went on from {CC}{YY} to {CC}",
    "In {CC}{YY} the {NOUN} began, and it ended in {CC}",
    "The great {NOUN} lasted from {CC}{YY} to {CC}",
    "The {NOUN} of the north started in {CC}{YY}, and it went on until the year {CC}",
)
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "The {NOUN} was from the year {CC}{YY} to the year {CC}",
    "The long {NOUN} began in the year {CC}{YY} and it lasted until {CC}",
)
TEMPLATES: tuple[str, ...] = TRAIN_TEMPLATES + HELDOUT_TEMPLATES

CENTURIES: tuple[str, ...] = tuple(str(c) for c in range(12, 20))
CORRUPT_YY = "01"


def two_digit(y: int) -> str:
    """``7`` -> ``"07"``."""
    return f"{y:02d}"


def _check() -> None:
    assert len(set(TEMPLATES)) == len(TEMPLATES) and len(set(NOUNS)) == len(NOUNS)
    for tpl in TEMPLATES:
        fs = fields(tpl)
        assert fs.count("NOUN") == 1 and fs.count("YY") == 1 and fs.count("CC") == 2, tpl
        assert tpl.endswith(" {CC}") and " {CC}{YY}" in tpl and " {NOUN}" in tpl, tpl


_check()


def generate_greater_than_pairs(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """Return ``n`` greater-than pairs: dicts with ``clean``, ``corrupted``, ``answer`` (list of
    ``"YY"`` strings > start), ``distractor`` (list of ``"YY"`` <= start), plus ``template``
    (index into :data:`TEMPLATES`), ``item`` (the noun), ``century`` and ``start_yy`` (int).

    ``split``: "train" (training nouns and templates), "heldout" (held-out nouns and
    templates) or "all". Deterministic in (n, seed, split); private ``random.Random(seed)``.
    """
    check_args(n, split)
    nouns = {"train": TRAIN_NOUNS, "heldout": HELDOUT_NOUNS, "all": NOUNS}[split]

    def row(rng, t):
        noun = rng.choice(nouns)
        cc = rng.choice(CENTURIES)
        yy = rng.randint(2, 98)
        clean, positions, _ = fill_marked(TEMPLATES[t], {"NOUN": "NOUN", "YY": "YY"}, NOUN=noun,
                                          CC=cc, YY=two_digit(yy))
        corrupted = fill(TEMPLATES[t], NOUN=noun, CC=cc, YY=CORRUPT_YY)
        return {
            "clean": clean,
            "corrupted": corrupted,
            "positions": positions,
            "answer": [two_digit(y) for y in range(yy + 1, 100)],
            "distractor": [two_digit(y) for y in range(0, yy + 1)],
            "template": t,
            "item": noun,
            "century": cc,
            "start_yy": yy,
        }

    return generate_rows(n, seed, split, len(TRAIN_TEMPLATES), len(HELDOUT_TEMPLATES),
                         row)
