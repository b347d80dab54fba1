"""Prompt pairs with answer sets, for tests of the set metrics."""

from attrscope.tasks import PromptPair

NAMES = [" John", " Mary", " Tom", " James", " Sarah", " Anna"]


def set_pairs():
    """IOI prompts of different lengths whose answer is a set of names."""
    from attrscope.tasks.ioi_data import generate_ioi_pairs

    pairs = []
    for row in generate_ioi_pairs(6, seed=5, split="all"):
        others = [name for name in NAMES if name not in (row["answer"], row["distractor"])]
        pairs.append(PromptPair(row["clean"], row["corrupted"], (row["answer"], others[0]),
                                (row["distractor"], others[1], others[2])))
    return pairs
