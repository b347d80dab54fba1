"""Deterministic generator of capital–country prompt pairs (pure Python, no torch).

Clean: ``"We visited Kabul, the capital of"`` -> ``" Afghanistan"``. The corrupted prompt names
another capital (``"We visited Lima, the capital of"``); the distractor is that capital's
country (``" Peru"``). Metric: ``logit_diff`` = logit(answer) - logit(distractor).

The facts themselves are knowledge the model has to have, so the held-out split holds out
*templates* (the sentence frames), not capitals: ``split="heldout"`` uses only frames never
used in training.
"""

from __future__ import annotations

from ._gen_util import check_templates, fill, fill_marked, generate_rows

__all__ = ["METRIC", "DESCRIPTION", "CAPITALS", "TEMPLATES", "TRAIN_TEMPLATES",
           "HELDOUT_TEMPLATES", "generate_capital_country_pairs"]

METRIC = "logit_diff"
DESCRIPTION = ("capital-country: 'We visited Kabul, the capital of' -> ' Afghanistan'; corrupted "
               "with another capital; metric: logit(country) - logit(corrupting capital's country)")

# (capital, country); every word is one token with its leading space for the suite tokenizer.
CAPITALS: tuple[tuple[str, str], ...] = (
    ("Paris", "France"), ("Berlin", "Germany"), ("Rome", "Italy"), ("Madrid", "Spain"),
    ("Lisbon", "Portugal"), ("Dublin", "Ireland"), ("Oslo", "Norway"), ("Stockholm", "Sweden"),
    ("Helsinki", "Finland"), ("Copenhagen", "Denmark"), ("Warsaw", "Poland"),
    ("Vienna", "Austria"), ("Budapest", "Hungary"), ("Athens", "Greece"), ("Ankara", "Turkey"),
    ("Moscow", "Russia"), ("Cairo", "Egypt"), ("Nairobi", "Kenya"), ("Accra", "Ghana"),
    ("Tokyo", "Japan"), ("Beijing", "China"), ("Seoul", "Korea"), ("Bangkok", "Thailand"),
    ("Hanoi", "Vietnam"), ("Jakarta", "Indonesia"), ("Kabul", "Afghanistan"),
    ("Tehran", "Iran"), ("Baghdad", "Iraq"), ("Damascus", "Syria"), ("Beirut", "Lebanon"),
    ("Ottawa", "Canada"), ("Havana", "Cuba"), ("Lima", "Peru"), ("Santiago", "Chile"),
    ("Bogota", "Colombia"), ("Caracas", "Venezuela"), ("Canberra", "Australia"),
    ("Brussels", "Belgium"), ("Bern", "Switzerland"), ("Bucharest", "Romania"),
    ("Belgrade", "Serbia"), ("Rabat", "Morocco"), ("Dhaka", "Bangladesh"),
    ("Kathmandu", "Nepal"),
)

TRAIN_TEMPLATES: tuple[str, ...] = (
    "We visited {CAP}, the capital of",
    "She lives in {CAP}, the capital of",
    "They moved to {CAP}, the capital of",
    "The museum in {CAP}, the capital of",
    "Last year we went to {CAP}, which is the capital of",
    "He was born in {CAP}, the capital of",
    "The train to {CAP}, the capital of",
    "I think that {CAP} is the capital of",
)
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "The old museum was in {CAP}, the capital of",
    "Last year she moved to {CAP}, which is the capital of",
)
TEMPLATES: tuple[str, ...] = TRAIN_TEMPLATES + HELDOUT_TEMPLATES

check_templates(TEMPLATES, ("CAP",))
assert len({c for c, _ in CAPITALS}) == len({k for _, k in CAPITALS}) == len(CAPITALS)


def generate_capital_country_pairs(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """Return ``n`` capital–country pairs: dicts with ``clean``, ``corrupted``, ``answer``
    (" " + country), ``distractor`` (" " + the corrupting capital's country), plus ``template``
    (index into :data:`TEMPLATES`), ``item`` (the capital) and ``corrupt_item``.

    ``split``: "train" / "heldout" select the training / held-out templates; "all" both.
    Deterministic in (n, seed, split); private ``random.Random(seed)``.
    """
    def row(rng, t):
        (cap, country), (cap2, country2) = rng.sample(CAPITALS, 2)
        clean, positions, _ = fill_marked(TEMPLATES[t], {"CAP": "CAP"}, CAP=cap)
        return {
            "clean": clean,
            "positions": positions,
            "corrupted": fill(TEMPLATES[t], CAP=cap2),
            "answer": " " + country,
            "distractor": " " + country2,
            "template": t,
            "item": cap,
            "corrupt_item": cap2,
        }

    return generate_rows(n, seed, split, len(TRAIN_TEMPLATES), len(HELDOUT_TEMPLATES),
                         row)
