"""Named positions: each generator's named token really is that word in that row's prompt (for
prompts of different lengths), every token where clean and corrupted differ is named, END is
the answer position; a task file's positions column and its one-line errors."""

import json
import re

import pytest
import torch

import attrscope
from attrscope.tasks import GENERATED_TASKS, TaskDataError, build_task
from attrscope.tasks.base import PromptPair

_models: dict = {}


def model_for(name):
    spec = GENERATED_TASKS[name]
    if spec.model not in _models:
        _models[spec.model] = attrscope.load_model(spec.model)
    return _models[spec.model]


# What each generator's names must read, from the generator's own row fields (not positions).
def expected_words(name, row):
    if name.startswith("ioi"):
        first, second = (row["io"], row["s"]) if row["order"] == "ABBA" else (row["s"], row["io"])
        after_s1 = re.match(r"\W*\w+|\W", row["clean"][row["clean"].index(row["s"]) + len(row["s"]):])
        return {"IO": row["io"], "S1": row["s"], "S2": row["s"], "S1+1": after_s1.group(0)}
    if name == "greater-than":
        return {"NOUN": row["item"].split()[0], "YY": f"{row['start_yy']:02d}"}
    if name == "capital-country":
        return {"CAP": row["item"]}
    if name == "gender":
        return {"PROF": row["item"]}
    if name == "sva":
        return {"SUBJ": row["item"]}
    if name == "planted":
        return {f"SLOT{i}": w for i, w in enumerate(("sunny", "happy", "hot", "nice", "quiet"), 1)}
    return {}


@pytest.mark.parametrize("name", list(GENERATED_TASKS))
def test_every_named_position_is_its_word_and_every_difference_is_named(name):
    model = model_for(name)
    spec = GENERATED_TASKS[name]
    n = 24
    task = attrscope.load_task(name, model, n=n, seed=9)
    rows = getattr(spec._module(), spec.function)(n, seed=9, split="all", **dict(spec.options))
    assert len(set(task.answer_pos.tolist())) > 1, "prompts of different lengths expected"
    assert "END" in task.positions
    torch.testing.assert_close(task.positions["END"], task.answer_pos)
    decode = model.tokenizer.decode
    for i, row in enumerate(rows):
        tokens = task.clean_tokens[i]
        here = {k: int(v[i]) for k, v in task.positions.items()}
        for pos_name, word in expected_words(name, row).items():
            token = decode([int(tokens[here[pos_name]])])
            assert word.strip().startswith(token.strip()) and token.strip(), (name, i, pos_name, token, word)
        if name.startswith("ioi"):
            assert here["S1"] < here["S1+1"] < here["S2"] and here["S1+1"] == here["S1"] + 1
            assert tokens[here["S1"]] == tokens[here["S2"]] != tokens[here["IO"]]
        if name == "hypernymy":
            assert here["H1"] < here["H2"] <= here["HLAST"] < here["END"]
        differ = (task.clean_tokens[i] != task.corrupted_tokens[i]).nonzero().flatten().tolist()
        assert differ and set(differ) <= set(here.values()), (name, i, differ, here)


def pair(clean, positions, corrupted=None):
    return PromptPair(clean, corrupted or clean.replace("John gave", "Mary gave"), " Mary", " John",
                      positions)


CLEAN = "When John and Mary went to the store, John gave a drink to"
LONGER = "When John and Mary went to the big store, John gave a drink to"


def test_position_values_of_every_form_resolve(random_model):
    task = build_task(random_model, [
        pair(CLEAN, {"S2": ["John", 2], "IO": "Mary", "D": {"char": CLEAN.index("drink")}, "T": 3}),
        pair(LONGER, {"S2": [" John", 2], "IO": " Mary", "D": {"char": LONGER.index("drink") - 1},
                      "T": -2}),
    ], name="t")
    decode = random_model.tokenizer.decode
    seen = {k: [decode([int(task.clean_tokens[i, v[i]])]) for i in range(2)]
            for k, v in task.positions.items()}
    assert seen["S2"] == [" John", " John"] and seen["IO"] == [" Mary", " Mary"]
    assert seen["D"] == [" drink", " drink"]  # the space before a word is folded into it
    assert task.positions["T"].tolist() == [3, int(task.answer_pos[1]) - 1]
    for i, text in enumerate((CLEAN, LONGER)):  # the prefix's length in tokens, BOS included
        prefix = random_model.to_tokens(text[:text.rindex(" John")])
        assert int(task.positions["S2"][i]) == prefix.shape[1]
    assert list(task.positions) == ["S2", "IO", "D", "T", "END"]


@pytest.mark.parametrize("positions, message", [
    ({"S2": "John"}, "row 1: position 'S2': the word 'John' occurs 2 times in the clean prompt; "
                     "give ['John', k]"),
    ({"S2": ["John", 3]}, "row 1: position 'S2': the word 'John' occurs 2 time(s) in the clean "
                          "prompt, not 3"),
    ({"X": "Alice"}, "row 1: position 'X': the word 'Alice' is not in the clean prompt"),
    ({"X": 99}, "row 1: position 'X': token index 99 is outside the prompt's 15 tokens"),
    ({"X": 1.5}, "row 1: position 'X': 1.5 is none of: a token index, a word"),
    ({"X": True}, "row 1: position 'X': True is none of"),
    ({"END": 3}, "row 1: position 'END': END is named automatically"),
    ({"each": 3}, "row 1: position 'each': the name is reserved"),
    ({"3.1@S2": 3}, "row 1: position '3.1@S2': a position name must start with a letter"),
])
def test_bad_positions_are_named_by_row_and_name(random_model, positions, message):
    with pytest.raises(TaskDataError) as err:
        build_task(random_model, [pair(CLEAN, positions)], name="t")
    assert message in str(err.value)


def test_every_row_must_name_the_same_positions(random_model):
    with pytest.raises(TaskDataError, match=r"row 2: no position 'IO', which other rows name"):
        build_task(random_model, [pair(CLEAN, {"IO": "Mary"}), pair(LONGER, None)], name="t")


def test_task_file_positions_column(random_model, tmp_path):
    rows = [{"clean": CLEAN, "corrupted": CLEAN.replace("John gave", "Mary gave"), "answer": " Mary",
             "distractor": " John", "positions": {"S2": ["John", 2], "IO": "Mary"}},
            {"clean": LONGER, "corrupted": LONGER.replace("John gave", "Mary gave"),
             "answer": " Mary", "distractor": " John", "positions": {"S2": ["John", 2], "IO": 4}}]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    csv_file = tmp_path / "pairs.csv"
    import csv

    with csv_file.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "positions": json.dumps(r["positions"])})
    for path in (jsonl, csv_file):
        task = attrscope.load_task(str(path), random_model)
        decode = random_model.tokenizer.decode
        for i in range(2):
            assert decode([int(task.clean_tokens[i, task.positions["S2"][i]])]) == " John"
            assert decode([int(task.clean_tokens[i, task.positions["IO"][i]])]) == " Mary"
    bad = tmp_path / "bad.csv"
    bad.write_text("clean,corrupted,answer,distractor,positions\n"
                   f'"{CLEAN}","{CLEAN}", Mary, John,"{{""S2"": ""John""}}"\n'
                   f'"{CLEAN}","{CLEAN}", Mary, John,not json\n'
                   f'"{CLEAN}","{CLEAN}", Mary, John,"[1, 2]"\n')
    with pytest.raises(TaskDataError) as err:
        attrscope.load_task(str(bad), random_model)
    text = str(err.value)
    assert "row 2: positions is not valid JSON" in text
    assert "row 3: positions must be a JSON object (name -> token index or word), got [1, 2]" in text


def test_positions_follow_the_task_to_a_device(random_model):
    task = build_task(random_model, [pair(CLEAN, {"IO": "Mary"})], name="t")
    moved = task.to("cpu")
    assert moved.positions["IO"].device.type == "cpu" and moved.positions["END"].tolist() == [14]


def test_positions_setting_selects_named_positions_or_refuses_in_one_line(embedded_model):
    from attrscope.tasks.positions import PositionError, select

    task = attrscope.load_task("ioi", embedded_model, n=6, seed=1)
    assert select(task, "all") == "all"
    chosen = select(task, "S2,END")
    assert list(chosen) == ["S2", "END"] and torch.equal(chosen["END"], task.answer_pos)
    assert list(select(task, ["IO", "S1+1"])) == ["IO", "S1+1"]
    lengths = sorted({int(p) + 1 for p in task.answer_pos})
    assert len(lengths) > 1
    with pytest.raises(PositionError) as err:
        select(task, "each")
    text = str(err.value)
    assert "\n" not in text and f"{len(lengths)} lengths ({', '.join(map(str, lengths))} tokens)" in text
    assert text.endswith("use named positions instead: IO, S1, S1+1, S2, END")
    with pytest.raises(PositionError, match=r"unknown position\(s\) \['S3'\] for task ioi; it names "
                                            r"IO, S1, S1\+1, S2, END"):
        select(task, "S2,S3")
    with pytest.raises(PositionError, match="positions must be 'all', 'each' or position names"):
        select(task, 3)
    one_length = build_task(embedded_model, [pair(CLEAN, None), pair(CLEAN.replace("John", "Tom"),
                                                                       None)], name="t")
    assert select(one_length, "each") == {"each": int(one_length.answer_pos[0]) + 1}
