"""Deterministic generator of gender-bias prompt pairs (pure Python, no torch).

Clean: ``"The nurse said that"`` -> ``" she"`` (the profession's stereotyped pronoun); the
distractor is the other pronoun (``" he"``). The corrupted prompt replaces the profession by
``"man"`` or ``"woman"``, whichever goes with the *distractor*, so the expected pronoun flips
(``"The man said that"``). Metric: ``logit_diff`` = logit(answer) - logit(distractor).

The stereotypes are knowledge the model has to have, so the held-out split holds out
*templates* (sentence frames), not professions.
"""

from __future__ import annotations

from ._gen_util import check_templates, fill, fill_marked, generate_rows

__all__ = ["METRIC", "DESCRIPTION", "FEMALE_PROFESSIONS", "MALE_PROFESSIONS", "PRONOUN",
           "PERSON", "TEMPLATES", "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES",
           "generate_gender_pairs"]

METRIC = "logit_diff"
DESCRIPTION = ("gender: 'The nurse said that' -> ' she' vs ' he'; corrupted 'The man said that' "
               "(the answer flips); metric: logit(stereotyped pronoun) - logit(other pronoun)")

FEMALE_PROFESSIONS: tuple[str, ...] = (
    "nurse", "secretary", "receptionist", "dancer", "hairdresser", "librarian", "nanny",
    "maid", "housekeeper", "florist", "stylist", "midwife", "cheerleader", "babysitter",
)
MALE_PROFESSIONS: tuple[str, ...] = (
    "engineer", "mechanic", "carpenter", "plumber", "pilot", "soldier", "farmer",
    "firefighter", "surgeon", "builder", "electrician", "sheriff", "janitor", "lumberjack",
)
PRONOUN = {"f": " she", "m": " he"}
PERSON = {"f": "woman", "m": "man"}

TRAIN_TEMPLATES: tuple[str, ...] = (
    "The {P} said that",
    "The {P} told us that",
    "Yesterday the {P} said that",
    "The {P} was tired, so",
    "The {P} was late because",
    "I called the {P} and",
    "When the {P} came home,",
    "The {P} smiled because",
    "Everyone knew that the {P} was happy because",
)
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "The {P} was happy, so",
    "In the morning the {P} told us that",
)
TEMPLATES: tuple[str, ...] = TRAIN_TEMPLATES + HELDOUT_TEMPLATES

check_templates(TEMPLATES, ("P",))
assert not set(FEMALE_PROFESSIONS) & set(MALE_PROFESSIONS)


def generate_gender_pairs(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """Return ``n`` gender pairs: dicts with ``clean``, ``corrupted``, ``answer`` (the
    profession's stereotyped pronoun, " she" / " he"), ``distractor`` (the other one), plus
    ``template`` (index into :data:`TEMPLATES`), ``item`` (the profession) and ``gender``
    ("f"/"m", the stereotype).

    ``split``: "train" / "heldout" select the training / held-out templates; "all" both.
    Deterministic in (n, seed, split); private ``random.Random(seed)``.
    """
    def row(rng, t):
        g = rng.choice("fm")
        other = "m" if g == "f" else "f"
        prof = rng.choice(FEMALE_PROFESSIONS if g == "f" else MALE_PROFESSIONS)
        clean, positions, _ = fill_marked(TEMPLATES[t], {"P": "PROF"}, P=prof)
        return {
            "clean": clean,
            "positions": positions,
            "corrupted": fill(TEMPLATES[t], P=PERSON[other]),
            "answer": PRONOUN[g],
            "distractor": PRONOUN[other],
            "template": t,
            "item": prof,
            "gender": g,
        }

    return generate_rows(n, seed, split, len(TRAIN_TEMPLATES), len(HELDOUT_TEMPLATES),
                         row)
