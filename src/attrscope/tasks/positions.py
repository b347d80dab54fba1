"""Named token positions of a task's prompts: ``task.positions[name]`` is an ``[n]`` index tensor
(each prompt's own token for that name), so prompts of different lengths can be compared
position by position (``IO``, ``S1``, ``S2``, ``END`` in IOI).

Every task names ``END``, the answer position (each sample's last real token). Generated tasks
name their words; a task file can add a ``positions`` column, a JSON object mapping a name to
one of

- a **token index** into the model's input (the BOS token, when the model prepends one, is 0;
  a negative index counts from the last real token, -1 = ``END``);
- a **word** to find in the clean prompt (as a whole word, exactly once): its first token;
- ``[word, k]``: the word's k-th occurrence (1-based), for a word the prompt repeats;
- ``{"char": c}``: the token holding the clean prompt's character ``c`` (or the first one after
  it, when ``c`` is a space the tokenizer folds into the next token).

Pure Python apart from the tokenizer; resolving is done by :func:`attrscope.tasks.build_task`.
"""

from __future__ import annotations

import re
from typing import Any

END = "END"
# Names end up in labels L.U@NAME and in --positions A,B: no "@", ",", "." or spaces.
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*$")
RESERVED = ("all", "each")
# The positions setting of the node methods, for the command line.
POSITIONS_HELP = ("all (one patch over every position), each (every position on its own: "
                  "scores gain a position axis; prompts of one length) or position names such "
                  "as S2,END (each prompt at its own token)")


class PositionError(ValueError):
    """A named position that cannot be resolved; the message names it."""


def check_name(name: Any) -> None:
    """Raise PositionError unless ``name`` can name a position."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise PositionError("a position name must start with a letter and hold only letters, "
                            "digits, '_', '+' and '-'")
    if name.lower() in RESERVED:
        raise PositionError("the name is reserved (positions='all' / 'each')")
    if name == END:
        raise PositionError("END is named automatically (each sample's answer position, its "
                            "last token); give the others")


def check_spec(name: str, spec: Any) -> None:
    """Raise PositionError unless ``spec`` is a position value of a form the module lists."""
    check_name(name)
    if isinstance(spec, bool):
        pass
    elif isinstance(spec, int) or (isinstance(spec, str) and spec.strip()):
        return
    elif (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str)
          and isinstance(spec[1], int) and not isinstance(spec[1], bool) and spec[1] >= 1):
        return
    elif (isinstance(spec, dict) and set(spec) == {"char"} and isinstance(spec["char"], int)
          and not isinstance(spec["char"], bool)):
        return
    raise PositionError(f"{spec!r} is none of: a token index, a word, "
                        '[word, k] (its k-th occurrence, k >= 1), {"char": c}')


def token_spans(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` character span of each token of ``text`` (tokenized as ``ids``)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            return [tuple(span) for span in enc["offset_mapping"]]
    # A tokenizer without offsets: the spans of the growing decoded prefixes.
    spans, previous = [], 0
    for i in range(len(ids)):
        end = len(tokenizer.decode(ids[: i + 1]))
        spans.append((previous, end))
        previous = end
    return spans


def word_char(text: str, word: str, occurrence: int | None) -> int:
    """The character index of ``word``'s ``occurrence``-th whole-word match in ``text`` (the
    only one when ``occurrence`` is None)."""
    core = word.strip()
    if not core:
        raise PositionError("the word to find is empty")
    pattern = (r"(?<!\w)" if core[0].isalnum() or core[0] == "_" else "") + re.escape(core) + \
        (r"(?!\w)" if core[-1].isalnum() or core[-1] == "_" else "")
    starts = [m.start() for m in re.finditer(pattern, text)]
    if not starts:
        raise PositionError(f"the word {core!r} is not in the clean prompt")
    if occurrence is None:
        if len(starts) > 1:
            raise PositionError(f"the word {core!r} occurs {len(starts)} times in the clean "
                                f'prompt; give [{core!r}, k] for its k-th occurrence')
        return starts[0]
    if occurrence > len(starts):
        raise PositionError(f"the word {core!r} occurs {len(starts)} time(s) in the clean "
                            f"prompt, not {occurrence}")
    return starts[occurrence - 1]


def resolve(spec: Any, text: str, spans: list[tuple[int, int]], n_prefix: int) -> int:
    """The token index (into the model's input: ``n_prefix`` BOS tokens, then the prompt's
    tokens with ``spans``) that ``spec`` names in the clean prompt ``text``."""
    n_tokens = n_prefix + len(spans)
    if isinstance(spec, int):
        index = spec + n_tokens if spec < 0 else spec
        if not 0 <= index < n_tokens:
            raise PositionError(f"token index {spec} is outside the prompt's {n_tokens} tokens")
        return index
    if isinstance(spec, dict):
        char = spec["char"]
    elif isinstance(spec, list):
        char = word_char(text, spec[0], spec[1])
    else:
        char = word_char(text, spec, None)
    if not 0 <= char < len(text):
        raise PositionError(f"character {char} is outside the clean prompt's {len(text)}")
    for i, (_, end) in enumerate(spans):
        if end > char:
            return n_prefix + i
    raise PositionError(f"no token covers character {char} of the clean prompt")


def parse_setting(value: Any) -> str | list[str]:
    """A ``positions`` setting -> ``"all"``, ``"each"`` or a list of position names: from the
    command line's ``S2,END`` or the API's ``["S2", "END"]``. PositionError names a bad one."""
    if isinstance(value, str):
        if value.strip().lower() in RESERVED:
            return value.strip().lower()
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value or \
            not all(isinstance(v, str) for v in value):
        raise PositionError(f"positions must be 'all', 'each' or position names such as "
                            f"['S2', 'END'], got {value!r}")
    return list(dict.fromkeys(value))


def select(task, value: Any) -> str | dict:
    """What a ``positions`` setting asks of ``task``: ``"all"``; for ``"each"``, ``{"each":
    length}`` (every prompt must have that one length); else name -> ``[n]`` token indices from
    ``task.positions``. Raises PositionError, one line naming the unknown position or the
    lengths found, before any computation."""
    setting = parse_setting(value)
    if setting == "all":
        return "all"
    if setting == "each":
        lengths = sorted({int(p) + 1 for p in task.answer_pos.tolist()})
        if len(lengths) > 1:
            shown = ", ".join(map(str, lengths[:10])) + (", ..." if len(lengths) > 10 else "")
            raise PositionError(
                f"positions='each' needs prompts of one length, but task {task.name} has prompts "
                f"of {len(lengths)} lengths ({shown} tokens); use named positions instead: "
                f"{', '.join(task.positions) or 'END'}")
        return {"each": lengths[0]}
    unknown = [name for name in setting if name not in task.positions]
    if unknown:
        raise PositionError(f"unknown position(s) {unknown} for task {task.name}; it names "
                            f"{', '.join(task.positions)}")
    return {name: task.positions[name] for name in setting}
