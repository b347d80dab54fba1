"""Deterministic generator of IOI (indirect object identification) prompt pairs.

Pure Python, no torch. Every prompt ends right before the answer (no trailing
space); the answer and distractor carry a leading space (``" Mary"``), which is
how the names are tokenised (one token each) by the embedded default model.

A *clean* prompt mentions the indirect object (IO) once and the subject (S)
twice; the correct completion is the IO. The *corrupted* prompt is the same
text with the second mention of the subject (S2) replaced by the IO, so the IO
becomes the duplicated name and the correct completion flips to S.

Names and templates are split deterministically into a training part and a
held-out part; ``split="heldout"`` uses only held-out names and templates, which
the default model never saw in an IOI prompt during training.
"""

from __future__ import annotations

import random
import re
import string

from ._gen_util import fill_marked

__all__ = [
    "NAMES",
    "TRAIN_NAMES",
    "HELDOUT_NAMES",
    "PLACES",
    "OBJECTS",
    "TEMPLATES",
    "TRAIN_TEMPLATES",
    "HELDOUT_TEMPLATES",
    "FILLER_TEMPLATES",
    "CORRUPTIONS",
    "generate_ioi_pairs",
    "generate_filler_sentences",
]

# Common English first names. Each must be a single token with a leading space
# for the default model's tokenizer (asserted by scripts/train_default_model.py).
# Names that double as ordinary words (Will, May, Rose, Bill, ...) are avoided.
NAMES: tuple[str, ...] = (
    "John", "Mary", "Tom", "James", "Sarah", "Michael", "Emma", "David",
    "Anna", "Robert", "Laura", "Daniel", "Alice", "Peter", "Linda", "Paul",
    "Susan", "Mark", "Karen", "George", "Lisa", "Kevin", "Helen", "Brian",
    "Julia", "Steven", "Emily", "Jason", "Rachel", "Eric", "Nancy", "Adam",
    "Kate", "Ryan", "Amy", "Jacob", "Sophie", "Henry", "Claire", "Frank",
    "Diana", "Oliver", "Grace", "Simon", "Lucy", "Patrick", "Hannah", "Victor",
    "Olivia", "Edward", "Megan", "Thomas", "Jessica", "Richard", "Andrea", "Charles",
    "Monica", "Joseph", "Sandra", "Arthur", "Martha", "Harry", "Ella",
    "Samuel", "Jennifer", "Anthony", "Nicole", "Scott", "Teresa", "Gregory", "Carol",
    "Philip", "Janet", "Louis", "Joan", "Raymond", "Alicia", "Walter", "Irene",
    "Dennis", "Fiona", "Howard", "Tina", "Carl", "Ruth", "Jeremy", "Angela",
    "Sean", "Wendy", "Keith", "Amanda", "Roger", "Diane", "Albert", "Vanessa",
    "Ethan", "Chloe", "Lucas", "Isabel", "Nathan", "Natalie", "Aaron", "Heather",
    "Oscar", "Beth", "Leo", "Molly", "Felix", "Sylvia", "Martin", "Paula",
    "Gordon", "Judy", "Neil", "Carmen", "Ian", "Brenda", "Dylan", "Stella",
    "Rebecca",
)

# Every 5th name is held out from IOI training prompts.
HELDOUT_NAMES: tuple[str, ...] = tuple(n for i, n in enumerate(NAMES) if i % 5 == 4)
TRAIN_NAMES: tuple[str, ...] = tuple(n for i, n in enumerate(NAMES) if i % 5 != 4)

PLACES: tuple[str, ...] = (
    "store", "park", "school", "hospital", "station", "restaurant", "office",
    "garden", "beach", "library", "market", "museum", "house", "kitchen",
    "cafe", "bank", "church", "theater", "gym", "farm", "airport", "hotel",
)

# Some objects are multi-word so that prompt lengths vary within a template.
OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink",
    "snack", "book", "letter", "bottle of milk", "box of chocolates",
    "cup of coffee", "bunch of flowers", "pair of shoes", "small gift",
    "birthday card", "red apple", "new phone", "piece of cake", "key",
    "glass of water", "map", "hat",
)

# Placeholders: {A} and {B} are the first two name mentions ({A}={IO},{B}={S}
# for ABBA, {A}={S},{B}={IO} for BABA); {S} is the second mention of the subject;
# {PLACE} and {OBJECT} are fillers. No template starts with a name, so every
# name is preceded by a space and tokenises as " Name".
TRAIN_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a long and really crazy argument. Afterwards, {S} said to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were commuting to the {PLACE}, {S} gave a {OBJECT} to",
    "After the lunch, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Afterwards, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "The {PLACE} {A} and {B} went to had a {OBJECT}. {S} gave it to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave it to",
    "So {A} and {B} met at the {PLACE}, and {S} handed the {OBJECT} to",
    "Yesterday {A} and {B} walked to the {PLACE}, where {S} sent a {OBJECT} to",
    "At the {PLACE}, {A} and {B} talked. Later {S} gave a {OBJECT} to",
    "In the morning {A} and {B} left for the {PLACE}. {S} brought a {OBJECT} to",
    "Once {A} and {B} arrived at the {PLACE}, {S} showed the {OBJECT} to",
    "When {A} and {B} were at the {PLACE}, {S} passed the {OBJECT} to",
    "Today {A} and {B} cleaned the {PLACE}, and then {S} gave a {OBJECT} to",
    "After a long day, {A} and {B} went home from the {PLACE}. {S} said goodbye to",
    "Last week {A} and {B} visited the {PLACE}. {S} bought a {OBJECT} for",
    "During the trip, {A} and {B} stopped at the {PLACE}, so {S} threw the {OBJECT} to",
    "Both {A} and {B} liked the {PLACE}. {S} wanted to give a {OBJECT} to",
    "Because {A} and {B} were hungry at the {PLACE}, {S} offered a {OBJECT} to",
    "On a cold and rainy day at the {PLACE}, {A} and {B} were bored, so {S} gave a {OBJECT} to",
    "It was late at the {PLACE} when {A} and {B} arrived. {S} handed a {OBJECT} to",
    "Then {A} and {B} had dinner. {S} gave a {OBJECT} to",
    "The {PLACE} was quiet in the morning, and {A} and {B} were the first there. {S} sent a {OBJECT} to",
    "After the meeting at the {PLACE} was over, {A} and {B} talked, and {S} threw the {OBJECT} to",
    "Since the {OBJECT} was new, {A} and {B} took it to the {PLACE}. Then {S} gave it to",
)

# Held-out templates: new structures, built only from words that also occur in
# the training templates or filler sentences.
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "Later, {A} and {B} found a {OBJECT} at the {PLACE}, and {S} handed it to",
    "Yesterday {A} and {B} had lunch at the {PLACE}. Afterwards {S} sent a {OBJECT} to",
    "Because the {PLACE} was closed, {A} and {B} went home, so {S} gave the {OBJECT} to",
    "Then {A} and {B} went home. {S} wanted to give the {OBJECT} to",
    "In the {PLACE}, {A} and {B} were working, and then {S} passed a {OBJECT} to",
    "After the trip to the {PLACE}, {A} and {B} were hungry. {S} showed a {OBJECT} to",
)

TEMPLATES: tuple[str, ...] = TRAIN_TEMPLATES + HELDOUT_TEMPLATES

# Non-IOI sentences mentioning one or two names ({X}, {Y}); used by the training
# script so that every name (held-out ones included) gets a trained embedding,
# and so that copying a previously mentioned name is a generic skill.
FILLER_TEMPLATES: tuple[str, ...] = (
    "Yesterday {X} went to the {PLACE}.",
    "The {OBJECT} at the {PLACE} belongs to {X}.",
    "Everyone at the {PLACE} likes {X}.",
    "This is {X}. Today {X} is at the {PLACE}.",
    "The {OBJECT} was found by {X}. It was a gift for {X}.",
    "Then {X} went to the {PLACE}, and later {X} went home.",
    "My friend {X} has a {OBJECT}.",
    "Both {X} and {Y} work at the {PLACE}.",
    "The {PLACE} was closed, so {X} and {Y} went home.",
    "The winner was {X}, and everyone cheered for {X}.",
    "When {X} arrived, the {PLACE} was empty.",
    "A {OBJECT} for {X} and a {OBJECT2} for {Y}.",
    "Afterwards, {X} said hello to {Y}.",
    "In the morning {X} called {Y}, and {Y} answered.",
)

_FIELD_RE = re.compile(r"\{(\w+)\}")


def _check_templates() -> None:
    for tpl in TEMPLATES:
        fields = [m.group(1) for m in _FIELD_RE.finditer(tpl)]
        assert fields.count("A") == fields.count("B") == fields.count("S") == 1, tpl
        assert fields.index("A") < fields.index("B") < fields.index("S"), tpl
        assert not tpl.endswith(" ") and not tpl.startswith("{"), tpl
        for name in ("A", "B", "S"):
            assert " {" + name + "}" in tpl, tpl  # names always follow a space
    assert len(set(TEMPLATES)) == len(TEMPLATES)
    assert len(set(NAMES)) == len(NAMES)
    for tpl in FILLER_TEMPLATES:
        assert not tpl.startswith("{"), tpl


_check_templates()


def _fill(tpl: str, **fields: str) -> str:
    return string.Formatter().vformat(tpl, (), fields)


CORRUPTIONS: tuple[str, ...] = ("flip", "abc")


def generate_ioi_pairs(n: int, seed: int = 0, split: str = "train",
                       corruption: str = "flip") -> list[dict]:
    """Return ``n`` clean/corrupted IOI prompt pairs.

    Each item is a dict with keys ``clean``, ``corrupted``, ``answer`` (" " + IO),
    ``distractor`` (" " + S), ``template`` (index into :data:`TEMPLATES`),
    ``order`` ("ABBA" or "BABA"), plus ``io``, ``s``, ``place``, ``object``.

    ``split`` is "train" (training names and templates only), "heldout" (held-out
    names and templates only) or "all". Deterministic in (n, seed, split); uses a
    private ``random.Random(seed)``, never the global random state.

    ``corruption``: "flip" (default) replaces the second subject mention by the IO, so the
    answer flips. "abc" replaces all three name mentions by three other names (distinct, and
    different from IO and S, drawn from the same split's names), which removes the name
    information; ``answer``/``distractor`` stay the clean prompt's, and the item gains
    ``abc_names`` (the replacements of the A, B, S mentions). The clean prompts are the same
    for both corruptions (the abc names come from a second generator derived from ``seed``).
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be 'flip' or 'abc', got {corruption!r}")
    if split == "train":
        names, tpl_ids = TRAIN_NAMES, range(len(TRAIN_TEMPLATES))
    elif split == "heldout":
        names, tpl_ids = HELDOUT_NAMES, range(len(TRAIN_TEMPLATES), len(TEMPLATES))
    elif split == "all":
        names, tpl_ids = NAMES, range(len(TEMPLATES))
    else:
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if n < 0:
        raise ValueError("n must be non-negative")
    tpl_ids = list(tpl_ids)
    rng = random.Random(seed)
    abc_rng = random.Random(f"ioi-abc-{seed}") if corruption == "abc" else None
    out: list[dict] = []
    for _ in range(n):
        t = rng.choice(tpl_ids)
        tpl = TEMPLATES[t]
        io, s = rng.sample(names, 2)
        place = rng.choice(PLACES)
        obj = rng.choice(OBJECTS)
        order = rng.choice(("ABBA", "BABA"))
        a, b = (io, s) if order == "ABBA" else (s, io)
        marks = {"A": "IO", "B": "S1"} if order == "ABBA" else {"A": "S1", "B": "IO"}
        clean, positions, ends = fill_marked(tpl, {**marks, "S": "S2"}, A=a, B=b, S=s,
                                             PLACE=place, OBJECT=obj)
        positions["S1+1"] = {"char": ends["S1"]}  # the token after S1 (" and", " went", ...)
        if abc_rng is None:
            corrupted = _fill(tpl, A=a, B=b, S=io, PLACE=place, OBJECT=obj)
        else:
            x, y, z = abc_rng.sample([m for m in names if m not in (io, s)], 3)
            corrupted = _fill(tpl, A=x, B=y, S=z, PLACE=place, OBJECT=obj)
        item = {
            "clean": clean,
            "corrupted": corrupted,
            "positions": {name: positions[name] for name in ("IO", "S1", "S1+1", "S2")},
            "answer": " " + io,
            "distractor": " " + s,
            "template": t,
            "order": order,
            "io": io,
            "s": s,
            "place": place,
            "object": obj,
        }
        if abc_rng is not None:
            item["abc_names"] = (x, y, z)
        out.append(item)
    return out


def generate_filler_sentences(n: int, seed: int = 0, names=NAMES) -> list[str]:
    """Return ``n`` non-IOI sentences built from :data:`FILLER_TEMPLATES`."""
    rng = random.Random(seed)
    names = list(names)
    out = []
    for _ in range(n):
        tpl = rng.choice(FILLER_TEMPLATES)
        x, y = rng.sample(names, 2)
        o1, o2 = rng.sample(OBJECTS, 2)
        out.append(_fill(tpl, X=x, Y=y, PLACE=rng.choice(PLACES), OBJECT=o1, OBJECT2=o2))
    return out
