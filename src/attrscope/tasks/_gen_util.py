"""Small helpers shared by the synthetic task generators (pure Python, no torch)."""

from __future__ import annotations

import random
import re
import string

SPLITS = ("train", "heldout", "all")
_FIELD_RE = re.compile(r"\{(\w+)\}")


def check_args(n: int, split: str) -> None:
    """Validate the common ``n`` / ``split`` arguments of every generator."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")


def split_indices(split: str, n_train: int, n_heldout: int) -> list[int]:
    """Indices into ``train + heldout`` (a concatenated tuple) allowed for ``split``."""
    if split == "train":
        return list(range(n_train))
    if split == "heldout":
        return list(range(n_train, n_train + n_heldout))
    return list(range(n_train + n_heldout))


def every_kth_heldout(items, k: int) -> tuple[tuple, tuple]:
    """Split ``items`` into (train, heldout): every ``k``-th item (index k-1, 2k-1, ...) is held out."""
    items = tuple(items)
    return (tuple(x for i, x in enumerate(items) if i % k != k - 1),
            tuple(x for i, x in enumerate(items) if i % k == k - 1))


def fields(tpl: str) -> list[str]:
    """Placeholder names of a template, in order."""
    return [m.group(1) for m in _FIELD_RE.finditer(tpl)]


def fill(tpl: str, **values: str) -> str:
    """Fill ``{FIELD}`` placeholders (extra values are ignored)."""
    return string.Formatter().vformat(tpl, (), values)


def fill_marked(tpl: str, marks: dict[str, str], **values: str) -> tuple[str, dict, dict]:
    """Fill ``tpl`` as :func:`fill` does and say where the marked fields landed: ``marks`` maps
    a field (which the template has once) to a position name. Returns the text, name ->
    ``{"char": start}`` (a position value, see :mod:`attrscope.tasks.positions`) and name ->
    the character just after the field's value."""
    parts, starts, ends, length, last = [], {}, {}, 0, 0
    for m in _FIELD_RE.finditer(tpl):
        literal, value = tpl[last:m.start()], values[m.group(1)]
        length += len(literal)
        if m.group(1) in marks:
            starts[marks[m.group(1)]] = {"char": length}
            ends[marks[m.group(1)]] = length + len(value)
        parts += [literal, value]
        length += len(value)
        last = m.end()
    parts.append(tpl[last:])
    text = "".join(parts)
    assert text == fill(tpl, **values), tpl  # templates hold no braces but their fields
    return text, starts, ends


def check_templates(templates, required: tuple[str, ...]) -> None:
    """Every template has each required field exactly once, each preceded by a space (so the
    filled word tokenizes with its leading space), and no trailing space; no duplicates."""
    assert len(set(templates)) == len(templates), "duplicate templates"
    for tpl in templates:
        fs = fields(tpl)
        for name in required:
            assert fs.count(name) == 1, (tpl, name)
            assert " {" + name + "}" in tpl, (tpl, name)
        assert not tpl.endswith(" ") and not tpl.startswith("{"), tpl


def generate_rows(n: int, seed: int, split: str, n_train_templates: int,
                  n_heldout_templates: int, make_row) -> list[dict]:
    """The common generator loop: validate the arguments, then ``n`` times draw a template
    index allowed for ``split`` and call ``make_row(rng, template_index)`` with a private
    ``random.Random(seed)`` (never the global random state)."""
    check_args(n, split)
    tpl_ids = split_indices(split, n_train_templates, n_heldout_templates)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(make_row(rng, rng.choice(tpl_ids)))
    return out
