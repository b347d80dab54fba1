"""Deterministic generator of hypernymy prompt pairs (pure Python, no torch).

Clean: ``"She collected rubies, emeralds and other"`` -> one of the category's hypernyms
``{" gems", " gemstones", " jewels"}``. The corrupted prompt swaps the hyponyms, word for word,
for those of another category (``"She collected apples, pears and other"``). ``answer`` is the
clean category's hypernym list, ``distractor`` the corrupting category's (lists of strings with
their leading space). Metric: ``logprob_diff`` = log sum p(answer set) - log sum p(distractor
set), read at the last prompt token.

The categories are knowledge the model has to have, so the held-out split holds out
*templates* (sentence frames), not categories.
"""

from __future__ import annotations

from ._gen_util import check_templates, fill, fill_marked, generate_rows

__all__ = ["METRIC", "DESCRIPTION", "CATEGORIES", "TEMPLATES", "TRAIN_TEMPLATES",
           "HELDOUT_TEMPLATES", "generate_hypernymy_pairs"]

METRIC = "logprob_diff"
DESCRIPTION = ("hypernymy: 'She collected rubies, emeralds and other' -> {' gems', ' gemstones', "
               "' jewels'}; corrupted with another category's hyponyms; metric: log p(answer set) "
               "- log p(corrupting category's set)")

# category -> (hyponyms, hypernyms); every word one token with its leading space.
CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gems": (("rubies", "emeralds", "sapphires", "diamonds", "pearls", "opals"),
             ("gems", "gemstones", "jewels")),
    "fruits": (("apples", "bananas", "oranges", "grapes", "pears", "cherries"),
               ("fruits", "fruit")),
    "animals": (("dogs", "cats", "horses", "cows", "lions", "tigers"),
                ("animals", "mammals", "pets")),
    "vehicles": (("cars", "trucks", "buses", "bikes", "vans", "trains"),
                 ("vehicles",)),
    "tools": (("hammers", "saws", "drills", "wrenches", "chisels", "pliers"),
              ("tools",)),
    "instruments": (("violins", "pianos", "guitars", "drums", "flutes", "trumpets"),
                    ("instruments",)),
    "vegetables": (("carrots", "onions", "potatoes", "peas", "beans", "cabbages"),
                   ("vegetables", "veggies")),
    "birds": (("sparrows", "eagles", "owls", "crows", "robins", "parrots"),
              ("birds",)),
    "flowers": (("roses", "tulips", "lilies", "daisies", "orchids", "violets"),
                ("flowers", "blooms")),
    "metals": (("iron", "copper", "silver", "gold", "zinc", "tin"),
               ("metals",)),
    "clothes": (("shirts", "jackets", "coats", "dresses", "skirts", "sweaters"),
                ("clothes", "garments")),
    "insects": (("ants", "bees", "flies", "beetles", "wasps", "moths"),
                ("insects", "bugs")),
    "drinks": (("tea", "coffee", "juice", "milk", "soda", "lemonade"),
               ("drinks", "beverages")),
}

# {H1} {H2} [{H3}]: hyponyms of one category.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "She collected {H1}, {H2} and other",
    "We bought {H1}, {H2}, {H3} and other",
    "The shop sells {H1}, {H2} and other",
    "He likes {H1}, {H2}, {H3} and many other",
    "In the market there were {H1}, {H2} and other",
    "My friend has {H1}, {H2} and other",
    "They talked about {H1}, {H2}, {H3} and other",
)
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "The store has {H1}, {H2}, {H3} and other",
    "She bought {H1}, {H2} and many other",
)
TEMPLATES: tuple[str, ...] = TRAIN_TEMPLATES + HELDOUT_TEMPLATES

check_templates(TEMPLATES, ("H1", "H2"))


def _check_categories() -> None:
    words = [w for hypo, hyper in CATEGORIES.values() for w in hypo + hyper]
    assert len(set(words)) == len(words), "a word is in two categories or twice in one"


_check_categories()


def generate_hypernymy_pairs(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """Return ``n`` hypernymy pairs: dicts with ``clean``, ``corrupted``, ``answer`` (list of the
    clean category's hypernyms, " gems" ...), ``distractor`` (the corrupting category's list),
    plus ``template`` (index into :data:`TEMPLATES`), ``item`` (clean category) and
    ``corrupt_item``.

    ``split``: "train" / "heldout" select the training / held-out templates; "all" both.
    Deterministic in (n, seed, split); private ``random.Random(seed)``.
    """
    names = sorted(CATEGORIES)

    def row(rng, t):
        tpl = TEMPLATES[t]
        k = 3 if "{H3}" in tpl else 2
        cat, cat2 = rng.sample(names, 2)
        h = rng.sample(CATEGORIES[cat][0], k)
        h2 = rng.sample(CATEGORIES[cat2][0], k)
        # H3 exists in some templates only: HLAST (the last hyponym) is in every prompt
        marks = {"H1": "H1", "H2": "H2", f"H{k}": "HLAST"} if k == 3 else \
            {"H1": "H1", "H2": "HLAST"}
        clean, positions, _ = fill_marked(tpl, marks, **{f"H{i + 1}": w for i, w in enumerate(h)})
        positions.setdefault("H2", positions["HLAST"])
        return {
            "clean": clean,
            "positions": positions,
            "corrupted": fill(tpl, **{f"H{i + 1}": w for i, w in enumerate(h2)}),
            "answer": [" " + w for w in CATEGORIES[cat][1]],
            "distractor": [" " + w for w in CATEGORIES[cat2][1]],
            "template": t,
            "item": cat,
            "corrupt_item": cat2,
        }

    return generate_rows(n, seed, split, len(TRAIN_TEMPLATES), len(HELDOUT_TEMPLATES),
                         row)
