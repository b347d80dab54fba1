"""Facts to edit: a rewrite (prompt, true answer, new answer) with the prompts that score it.

A :class:`Fact` is one CounterFact-style record:

- ``prompt``: the rewrite prompt with the subject filled in (``"We visited Paris, the capital
  of"``), ``target_true`` (``" France"``) and ``target_new`` (``" Germany"``), each ONE token with
  its leading space;
- ``paraphrases``: other prompts of the same fact (generalisation);
- ``neighbourhood``: ``(prompt, answer)`` pairs of other subjects of the same relation with their
  own true answers (specificity);
- ``corrupted``: the prompt with the subject replaced by one whose answer is ``target_new`` (the
  clean/corrupted pair attribution methods score to choose the components to edit), or "".

Sources: :func:`capital_facts` builds facts from the embedded task model's capital-country data
(the rewrite prompt in a training template, the two held-out templates as paraphrases, other
capitals in the rewrite template as the neighbourhood), and :func:`read_facts` reads a
CounterFact-format JSON file (a list of records, or JSON lines) with ``case_id``,
``requested_rewrite`` (``prompt`` with ``{}`` for the subject, ``subject``, ``target_new.str``,
``target_true.str``), ``paraphrase_prompts`` and ``neighborhood_prompts`` (strings, whose answer
is ``target_true`` as in CounterFact, or attrscope's ``{"prompt": ..., "target": ...}`` objects
for neighbours with their own answers) and, optionally, attrscope's ``corrupted_prompt``.
:func:`write_facts` writes that format back. Answers are validated against a tokenizer by
:func:`check_facts`: one token each, with a leading space (CounterFact's own files store answers
without it; ``add_space=True`` adds it, explicitly).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_bytes
from .base import TaskDataError
from .capital_country_data import CAPITALS, HELDOUT_TEMPLATES, TRAIN_TEMPLATES

__all__ = ["Fact", "FACT_SETS", "capital_facts", "read_facts", "write_facts", "check_facts",
           "fact_task", "load_facts", "NEUTRAL_TASKS"]


@dataclass(frozen=True)
class Fact:
    """One rewrite and the prompts that score it (see the module docstring)."""

    case_id: str
    prompt: str
    subject: str
    target_true: str
    target_new: str
    paraphrases: tuple[str, ...] = ()
    neighbourhood: tuple[tuple[str, str], ...] = ()
    corrupted: str = ""
    template: str = field(default="", compare=False)  # the prompt with {} for the subject


def capital_facts(n: int = 20, seed: int = 0, n_neighbours: int = 5) -> list[Fact]:
    """``n`` capital-country rewrites (at most one per capital): "We visited Paris, the capital
    of" -> " Germany" instead of " France". The new country is another capital's (``corrupted``
    names that capital, so the attribution pair is the capital-country task's); the rewrite
    template is a training template, the paraphrases are the held-out templates, and the
    neighbourhood is ``n_neighbours`` other capitals (not the new one) in the rewrite template
    with their own countries. Deterministic in (n, seed, n_neighbours)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(CAPITALS):
        raise ValueError(f"n must be a whole number of facts from 1 to {len(CAPITALS)} (one per "
                         f"capital), got {n!r}.")
    if not 0 <= n_neighbours <= len(CAPITALS) - 2:
        raise ValueError(f"n_neighbours must be 0..{len(CAPITALS) - 2}, got {n_neighbours!r}.")
    rng = random.Random(seed)
    facts = []
    for i, (capital, country) in enumerate(rng.sample(CAPITALS, n)):
        others = [c for c in CAPITALS if c[0] != capital]
        new_capital, new_country = rng.choice(others)
        template = rng.choice(TRAIN_TEMPLATES).replace("{CAP}", "{}")
        neighbours = rng.sample([c for c in others if c[0] != new_capital], n_neighbours)
        facts.append(Fact(
            case_id=str(i), prompt=template.format(capital), subject=capital,
            target_true=" " + country, target_new=" " + new_country,
            paraphrases=tuple(t.replace("{CAP}", capital) for t in HELDOUT_TEMPLATES),
            neighbourhood=tuple((template.format(c), " " + k) for c, k in neighbours),
            corrupted=template.format(new_capital), template=template))
    return facts


# Built-in fact sets by name: function(n, seed) -> facts, and the embedded model that knows them.
FACT_SETS = {"capital": (capital_facts, "attrscope-tasks")}
DEFAULT_N_FACTS = 20


def load_facts(name_or_file: str, n: int | None = None, seed: int = 0,
               add_space: bool = False) -> list[Fact]:
    """A built-in fact set by name (:data:`FACT_SETS`; ``n`` facts, default 20, from ``seed``)
    or a CounterFact-format file (:func:`read_facts`; its first ``n`` facts, default all)."""
    if name_or_file in FACT_SETS:
        return FACT_SETS[name_or_file][0](DEFAULT_N_FACTS if n is None else n, seed=seed)
    facts = read_facts(name_or_file, add_space=add_space)
    if n is not None and n > len(facts):
        raise TaskDataError(f"{name_or_file}: asked for {n} facts but the file has "
                            f"{len(facts)}.")
    return facts if n is None else facts[:n]


# -- CounterFact-format files --------------------------------------------------------------------
def _records(path: Path) -> list:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise TaskDataError(f"{path}: cannot read the fact file ({e.strerror or e}).") from None
    except UnicodeDecodeError as e:
        raise TaskDataError(f"{path}: byte {e.start} is not UTF-8 text.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for i, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TaskDataError(f"{path}: line {i} is not valid JSON ({e.msg}); a fact "
                                        "file is a JSON list of CounterFact records or JSON "
                                        "lines.") from None
    data = [data] if isinstance(data, dict) else data
    if not isinstance(data, list) or not data:
        raise TaskDataError(f"{path}: no fact records (a JSON list of CounterFact records with "
                            "requested_rewrite, paraphrase_prompts, neighborhood_prompts).")
    return data


def _field(record: dict, keys: tuple, row: str, kind=str):
    value = record
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise TaskDataError(f"{row}: missing {'.'.join(keys)}.")
        value = value[key]
    if not isinstance(value, kind):
        raise TaskDataError(f"{row}: {'.'.join(keys)} must be a {kind.__name__}, got "
                            f"{type(value).__name__}.")
    return value


def _space(answer: str, add_space: bool) -> str:
    return " " + answer if add_space and not answer.startswith(" ") else answer


def _fact_of(record, row: str, add_space: bool) -> Fact:
    if not isinstance(record, dict):
        raise TaskDataError(f"{row}: a fact record must be a JSON object.")
    _field(record, ("requested_rewrite",), row, dict)
    template = _field(record, ("requested_rewrite", "prompt"), row)
    subject = _field(record, ("requested_rewrite", "subject"), row)
    if template.count("{}") != 1:
        raise TaskDataError(f"{row}: requested_rewrite.prompt must contain '{{}}' (the subject) "
                            f"exactly once, got {template!r}.")
    true = _space(_field(record, ("requested_rewrite", "target_true", "str"), row), add_space)
    new = _space(_field(record, ("requested_rewrite", "target_new", "str"), row), add_space)
    paraphrases = record.get("paraphrase_prompts", [])
    if not isinstance(paraphrases, list) or not all(isinstance(p, str) for p in paraphrases):
        raise TaskDataError(f"{row}: paraphrase_prompts must be a list of strings.")
    neighbours = []
    for j, item in enumerate(record.get("neighborhood_prompts", [])):
        if isinstance(item, str):
            neighbours.append((item, true))
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str) and isinstance(
                item.get("target"), str):
            neighbours.append((item["prompt"], _space(item["target"], add_space)))
        else:
            raise TaskDataError(f"{row}: neighborhood_prompts[{j}] must be a string (answered "
                                "by target_true) or {\"prompt\": ..., \"target\": ...}.")
    corrupted = record.get("corrupted_prompt", "")
    if not isinstance(corrupted, str):
        raise TaskDataError(f"{row}: corrupted_prompt must be a string.")
    return Fact(case_id=str(record.get("case_id", row.split()[-1])),
                prompt=template.format(subject), subject=subject, target_true=true,
                target_new=new, paraphrases=tuple(paraphrases), neighbourhood=tuple(neighbours),
                corrupted=corrupted, template=template)


def read_facts(path: str | os.PathLike, add_space: bool = False) -> list[Fact]:
    """Facts from a CounterFact-format JSON (or JSON lines) file; a TaskDataError naming the
    file and record (numbered from 1) for anything malformed. ``add_space``: prepend the leading
    space CounterFact's answers lack (to answers without one)."""
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"{path}: no such fact file.")
    facts = [_fact_of(record, f"{path}: record {i}", add_space)
             for i, record in enumerate(_records(path), start=1)]
    seen: dict[str, int] = {}
    for i, fact in enumerate(facts, start=1):
        if fact.case_id in seen:
            raise TaskDataError(f"{path}: record {i} repeats case_id {fact.case_id!r} (record "
                                f"{seen[fact.case_id]}).")
        seen[fact.case_id] = i
    return facts


def fact_record(fact: Fact) -> dict:
    """A fact as a CounterFact-format record (answers as stored: with their leading space)."""
    template = fact.template or fact.prompt.replace(fact.subject, "{}", 1)
    record = {
        "case_id": fact.case_id,
        "requested_rewrite": {"prompt": template, "subject": fact.subject,
                              "target_true": {"str": fact.target_true},
                              "target_new": {"str": fact.target_new}},
        "paraphrase_prompts": list(fact.paraphrases),
        "neighborhood_prompts": [p if a == fact.target_true else {"prompt": p, "target": a}
                                 for p, a in fact.neighbourhood],
    }
    if fact.corrupted:
        record["corrupted_prompt"] = fact.corrupted
    return record


def write_facts(facts: list[Fact], path: str | os.PathLike) -> Path:
    """Write facts as a CounterFact-format JSON list, atomically; :func:`read_facts` reads it
    back to equal facts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [fact_record(fact) for fact in facts]
    return write_bytes(path, json.dumps(records, indent=1, ensure_ascii=False).encode("utf-8"))


# -- validation against a tokenizer ----------------------------------------------------------
def _answer_problem(answer: str, tokenizer) -> str | None:
    if not answer.startswith(" "):
        return (f"answer {answer!r} has no leading space (it would be glued to the prompt's last "
                "word; CounterFact files store answers without it: pass add_space / --add-space)")
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        return (f"answer {answer!r} is {len(ids)} tokens "
                f"{[tokenizer.decode([t]) for t in ids]}; an edit is scored on one next token")
    return None


def check_facts(facts: list[Fact], tokenizer, source: str = "facts") -> None:
    """Refuse, in one line naming the fact, an answer that is not one token with a leading space
    (true, new, or a neighbour's), a fact whose new answer equals its true one, and empty
    prompts."""
    if not facts:
        raise TaskDataError(f"{source}: no facts.")
    for fact in facts:
        row = f"{source}: fact {fact.case_id!r}"
        if fact.target_true == fact.target_new:
            raise TaskDataError(f"{row}: target_new {fact.target_new!r} is its true answer.")
        answers = [("target_true", fact.target_true), ("target_new", fact.target_new)]
        answers += [(f"neighbourhood prompt {p!r}", a) for p, a in fact.neighbourhood]
        for role, answer in answers:
            problem = _answer_problem(answer, tokenizer)
            if problem:
                raise TaskDataError(f"{row}: {role}: {problem}.")
        for prompt in (fact.prompt, *fact.paraphrases, *(p for p, _ in fact.neighbourhood)):
            if not prompt.strip():
                raise TaskDataError(f"{row}: an empty prompt.")


def fact_task(model, facts: list[Fact], source: str = "facts"):
    """The clean/corrupted task attribution methods score to choose edit targets: per fact,
    clean = the rewrite prompt, corrupted = its ``corrupted`` prompt, answer = the true answer,
    distractor = the new one (metric: logit(true) - logit(new)). A fact without a corrupted
    prompt is refused naming it."""
    from .base import PromptPair, build_task

    missing = [f.case_id for f in facts if not f.corrupted]
    if missing:
        raise TaskDataError(f"{source}: fact {missing[0]!r} has no corrupted_prompt (the prompt "
                            "with a subject whose answer is target_new), which attribution "
                            "targets need; add one, or use --target random:N / all.")
    pairs = [PromptPair(f.prompt, f.corrupted, f.target_true, f.target_new) for f in facts]
    return build_task(model, pairs, name=f"facts:{source}", info={"source": source},
                      metric="logit_diff")


# Neutral text for the fluency score: the other tasks' clean prompts (the embedded task model
# was trained on them, so a change of its loss there is collateral damage of an edit).
NEUTRAL_TASKS = ("ioi", "greater_than", "gender", "sva", "hypernymy")


def neutral_texts(n_per_task: int = 8, seed: int = 0) -> list[str]:
    """Clean prompts of the generated tasks other than capital-country (:data:`NEUTRAL_TASKS`),
    each with its (first) answer appended, so that the answer token's loss counts too."""
    import importlib

    texts = []
    for name in NEUTRAL_TASKS:
        module = importlib.import_module(f"{__package__}.{name}_data")
        for row in getattr(module, f"generate_{name}_pairs")(n_per_task, seed=seed):
            answer = row["answer"] if isinstance(row["answer"], str) else row["answer"][0]
            texts.append(row["clean"] + answer)
    return texts
