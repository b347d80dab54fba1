"""Deterministic generator of subject–verb agreement (SVA) prompt pairs (pure Python, no torch).

Clean: ``"The keys to the cabinet"`` -> ``" are"`` (plural subject), distractor ``" is"``. The
verb pair of a row is one of ``(" are", " is")``, ``(" were", " was")``, ``(" have", " has")``
(plural form, singular form), drawn per row. An attractor noun of random number sits between
the subject and the verb, so the number must be read off the subject. The corrupted prompt
flips the subject's number (``"The key to the cabinet"``), so the correct form flips.
Metric: ``logit_diff`` = logit(correct form) - logit(incorrect form).

The held-out split holds out templates (frames) and prepositions; nouns are shared (their
number is lexical knowledge).
"""

from __future__ import annotations

from ._gen_util import check_args, check_templates, fill, fill_marked, generate_rows

__all__ = ["METRIC", "DESCRIPTION", "NOUNS", "VERB_PAIRS", "TRAIN_PREPOSITIONS",
           "HELDOUT_PREPOSITIONS", "TEMPLATES", "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES",
           "generate_sva_pairs"]

METRIC = "logit_diff"
DESCRIPTION = ("subject-verb agreement: 'The keys to the cabinet' -> ' are' vs ' is'; corrupted "
               "'The key to the cabinet'; metric: logit(correct verb form) - logit(wrong form)")

# (singular, plural); each form one token with its leading space.
NOUNS: tuple[tuple[str, str], ...] = (
    ("key", "keys"), ("dog", "dogs"), ("boy", "boys"), ("girl", "girls"), ("book", "books"),
    ("car", "cars"), ("teacher", "teachers"), ("student", "students"), ("doctor", "doctors"),
    ("window", "windows"), ("table", "tables"), ("box", "boxes"), ("cat", "cats"),
    ("farmer", "farmers"), ("picture", "pictures"), ("door", "doors"), ("bird", "birds"),
    ("letter", "letters"), ("road", "roads"), ("friend", "friends"),
)
# (plural form, singular form)
VERB_PAIRS: tuple[tuple[str, str], ...] = ((" are", " is"), (" were", " was"), (" have", " has"))

TRAIN_PREPOSITIONS: tuple[str, ...] = ("to", "near", "of", "behind", "on", "under")
HELDOUT_PREPOSITIONS: tuple[str, ...] = ("beside", "above")

# {SUBJ}: the subject noun; {PREP} {ATTR}: the attractor phrase.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "The {SUBJ} {PREP} the {ATTR}",
    "I think the {SUBJ} {PREP} the {ATTR}",
    "She said that the {SUBJ} {PREP} the {ATTR}",
    "The old {SUBJ} {PREP} the big {ATTR}",
    "Yesterday the {SUBJ} {PREP} the {ATTR}",
    "We know that the {SUBJ} {PREP} the small {ATTR}",
)
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "He said the {SUBJ} {PREP} the old {ATTR}",
    "I know that the big {SUBJ} {PREP} the {ATTR}",
)
TEMPLATES: tuple[str, ...] = TRAIN_TEMPLATES + HELDOUT_TEMPLATES

check_templates(TEMPLATES, ("SUBJ", "PREP", "ATTR"))
assert not set(TRAIN_PREPOSITIONS) & set(HELDOUT_PREPOSITIONS)


def generate_sva_pairs(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """Return ``n`` SVA pairs: dicts with ``clean``, ``corrupted``, ``answer`` (the verb form
    agreeing with the clean subject), ``distractor`` (the other form of the same verb), plus
    ``template`` (index into :data:`TEMPLATES`), ``item`` (the clean subject noun), ``plural``
    (bool, the clean subject's number), ``preposition`` and ``verbs`` ((plural, singular)).

    ``split``: "train" / "heldout" select the training / held-out templates and prepositions;
    "all" both. Deterministic in (n, seed, split); private ``random.Random(seed)``.
    """
    check_args(n, split)
    preps = {"train": TRAIN_PREPOSITIONS, "heldout": HELDOUT_PREPOSITIONS,
             "all": TRAIN_PREPOSITIONS + HELDOUT_PREPOSITIONS}[split]

    def row(rng, t):
        subj, attr = rng.sample(NOUNS, 2)
        plural = rng.random() < 0.5
        attr_word = attr[rng.random() < 0.5]
        prep = rng.choice(preps)
        verbs = rng.choice(VERB_PAIRS)
        clean, positions, _ = fill_marked(TEMPLATES[t], {"SUBJ": "SUBJ", "ATTR": "ATTR"},
                                          SUBJ=subj[plural], PREP=prep, ATTR=attr_word)
        corrupted = fill(TEMPLATES[t], SUBJ=subj[not plural], PREP=prep, ATTR=attr_word)
        return {
            "clean": clean,
            "corrupted": corrupted,
            "positions": positions,
            "answer": verbs[0] if plural else verbs[1],
            "distractor": verbs[1] if plural else verbs[0],
            "template": t,
            "item": subj[plural],
            "plural": plural,
            "preposition": prep,
            "verbs": verbs,
        }

    return generate_rows(n, seed, split, len(TRAIN_TEMPLATES), len(HELDOUT_TEMPLATES),
                         row)
