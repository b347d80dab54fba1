"""Tasks: tokenization, validation errors that name the row, the metric read at the answer position."""

import json

import pytest
import torch

import attrscope
from attrscope.tasks import PromptPair, TaskDataError, build_task


def test_ioi_prompts_of_different_lengths_are_right_padded(random_model):
    task = attrscope.load_task("ioi", random_model, n=20, seed=0)
    lengths = task.answer_pos + 1
    assert lengths.unique().numel() > 1  # the batch really mixes lengths
    assert task.clean_tokens.dtype == torch.long and task.clean_tokens.shape == task.corrupted_tokens.shape
    for i in range(task.n):
        expected = random_model.to_tokens(task.pairs[i].clean)[0]  # TransformerLens adds BOS
        assert torch.equal(task.clean_tokens[i, : lengths[i]], expected)
        assert (task.clean_tokens[i, lengths[i]:] == task.pad_id).all()


def test_corruption_flips_the_answer(random_model):
    task = attrscope.load_task("ioi", random_model, n=5, seed=0)
    for pair in task.pairs:
        io, s = pair.answer.strip(), pair.distractor.strip()
        assert pair.clean.count(s) == 2 and pair.clean.count(io) == 1
        assert pair.corrupted.count(io) == 2 and pair.corrupted.count(s) == 1


def test_metric_reads_each_sample_at_its_own_last_real_token(random_model):
    task = attrscope.load_task("ioi", random_model, n=8, seed=1)
    n, seq = task.clean_tokens.shape
    vocab = random_model.cfg.d_vocab
    logits = torch.randn(n, seq, vocab) * 50  # noise everywhere, including padding
    expected = torch.empty(n)
    for i in range(n):
        p = int(task.answer_pos[i])
        logits[i, p, task.answer_ids[i]] = 3.0 + i
        logits[i, p, task.distractor_ids[i]] = 1.0
        expected[i] = 2.0 + i
    torch.testing.assert_close(task.metric(logits), expected)
    # rows: copies of the batch stacked along the batch dimension
    stacked = torch.cat([logits, logits])
    torch.testing.assert_close(task.metric(stacked, torch.arange(n).repeat(2)), expected.repeat(2))


def test_metric_never_reads_padding(random_model):
    task = attrscope.load_task("ioi", random_model, n=8, seed=1)
    with torch.no_grad():
        logits = random_model(task.clean_tokens)
    before = task.metric(logits)
    for i in range(task.n):
        logits[i, int(task.answer_pos[i]) + 1:] = 1e6
    torch.testing.assert_close(task.metric(logits), before)


def test_metric_of_batch_equals_metric_of_each_prompt_alone(random_model):
    task = attrscope.load_task("ioi", random_model, n=6, seed=2)
    with torch.no_grad():
        batched = task.metric(random_model(task.clean_tokens))
        for i in range(task.n):
            alone = random_model(random_model.to_tokens(task.pairs[i].clean))
            pos = int(task.answer_pos[i])
            diff = alone[0, pos, task.answer_ids[i, 0]] - alone[0, pos, task.distractor_ids[i, 0]]
            torch.testing.assert_close(batched[i], diff, atol=1e-4, rtol=0)


def test_length_mismatch_names_the_row_and_text(random_model):
    pairs = [
        PromptPair("When John and Mary went to the store, John gave a drink to",
                   "When John and Mary went to the store, Mary gave a drink to", " Mary", " John"),
        PromptPair("When John and Mary went to the store, John gave a drink to",
                   "When John and Mary went to the big old store, Mary gave a drink to", " Mary", " John"),
    ]
    with pytest.raises(TaskDataError) as err:
        build_task(random_model, pairs, name="t")
    message = str(err.value)
    assert "row 2" in message and "row 1" not in message
    assert "token length" in message and "big old store" in message


def test_multi_token_answer_names_the_row_and_suggests_leading_space(random_model):
    pairs = [PromptPair("When John and Mary went to the store, John gave a drink to",
                        "When John and Mary went to the store, Mary gave a drink to", "Mary", " John")]
    with pytest.raises(TaskDataError, match=r"row 1: answer 'Mary' must be a single token.*leading space"):
        build_task(random_model, pairs, name="t")


def test_empty_prompt_and_identical_answers_are_refused(random_model):
    pairs = [PromptPair("", "", " Mary", " John"),
             PromptPair("When John and Mary went", "When John and Mary went", " Mary", " Mary")]
    with pytest.raises(TaskDataError) as err:
        build_task(random_model, pairs, name="t")
    assert "row 1: clean prompt is empty" in str(err.value)
    assert "row 2: answer and distractor are the same token" in str(err.value)


def test_csv_and_jsonl_files(random_model, tmp_path):
    rows = [
        {"clean": "When John and Mary went to the store, John gave a drink to",
         "corrupted": "When John and Mary went to the store, Mary gave a drink to",
         "answer": " Mary", "distractor": " John"},
        {"clean": "Then Tom and Anna went to the park. Tom gave a ring to",
         "corrupted": "Then Tom and Anna went to the park. Anna gave a ring to",
         "answer": " Anna", "distractor": " Tom"},
    ]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("clean,corrupted,answer,distractor\n" + "\n".join(
        ",".join(f'"{r[c]}"' for c in ("clean", "corrupted", "answer", "distractor")) for r in rows))
    a = attrscope.load_task(str(jsonl), random_model)
    b = attrscope.load_task(str(csv_path), random_model)
    assert a.n == b.n == 2
    assert torch.equal(a.clean_tokens, b.clean_tokens)
    assert a.pairs[1].answer == " Anna"


def test_file_errors_are_clear(random_model, tmp_path):
    missing_col = tmp_path / "bad.csv"
    missing_col.write_text("clean,corrupted,answer\na,b,c\n")
    with pytest.raises(TaskDataError, match=r"missing column\(s\) \['distractor \(or incorrect_idx"):
        attrscope.load_task(str(missing_col), random_model)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TaskDataError, match="no rows"):
        attrscope.load_task(str(empty), random_model)
    with pytest.raises(FileNotFoundError):
        attrscope.load_task(str(tmp_path / "nope.csv"), random_model)
    with pytest.raises(ValueError, match="Unknown task 'nope'"):
        attrscope.load_task("nope", random_model)


GOOD_ROW = {"clean": "When John and Mary went to the store, John gave a drink to",
            "corrupted": "When John and Mary went to the store, Mary gave a drink to",
            "answer": " Mary", "distractor": " John"}


def _mixed_file(tmp_path):
    rows = [
        GOOD_ROW,
        {**GOOD_ROW, "corrupted": "When John and Mary went to the big store, Mary gave a drink to"},
        {**GOOD_ROW, "answer": "Mary"},  # no leading space: two tokens
        {k: v for k, v in GOOD_ROW.items() if k != "distractor"},  # missing value
        {**GOOD_ROW, "answer": " John", "distractor": " Mary"},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_skip_invalid_leaves_out_and_reports_every_bad_row(random_model, tmp_path):
    path = _mixed_file(tmp_path)
    with pytest.raises(TaskDataError, match="row 4: missing value"):
        attrscope.load_task(str(path), random_model)
    task = attrscope.load_task(str(path), random_model, skip_invalid=True)
    assert task.n == 2 and [p.answer for p in task.pairs] == [" Mary", " John"]
    skipped = task.info["skipped"]
    assert skipped["count"] == 3 and list(skipped["rows"]) == ["2", "3", "4"]
    assert "differ in token length" in skipped["rows"]["2"][0]
    assert "leading space" in skipped["rows"]["3"][0]
    assert task.describe()["skipped"]["count"] == 3  # recorded in every result's metadata
    assert attrscope.load_task(str(path), random_model, n=1, skip_invalid=True).n == 1
    with pytest.raises(TaskDataError, match="only 2 rows are valid"):
        attrscope.load_task(str(path), random_model, n=3, skip_invalid=True)


def test_skip_invalid_with_no_valid_row_is_an_error(random_model, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**GOOD_ROW, "answer": "Mary"}))
    with pytest.raises(TaskDataError, match="(?s)no valid prompt pair is left.*row 1: answer"):
        attrscope.load_task(str(path), random_model, skip_invalid=True)


def _ids(model, text):
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_seed_study_layout_with_token_ids_warns_and_matches_strings(random_model, tmp_path):
    """The seed study's columns: clean, corrupted_hard, correct_idx / incorrect_idx (token ids)."""
    path = tmp_path / "seed.csv"
    lines = ["clean,corrupted_hard,correct_idx,incorrect_idx"]
    for r in (GOOD_ROW, {**GOOD_ROW, "clean": "Then " + GOOD_ROW["clean"],
                         "corrupted": "Then " + GOOD_ROW["corrupted"]}):
        [a], [d] = _ids(random_model, r["answer"]), _ids(random_model, r["distractor"])
        lines.append(f'"{r["clean"]}","{r["corrupted"]}",{a},{d}')
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="tokenizer"):
        from_ids = attrscope.load_task(str(path), random_model)
    strings = tmp_path / "strings.csv"
    strings.write_text("clean,corrupted,answer,distractor\n" + "\n".join(
        f'"{c}","{k}"," Mary"," John"' for c, k in
        ((GOOD_ROW["clean"], GOOD_ROW["corrupted"]),
         ("Then " + GOOD_ROW["clean"], "Then " + GOOD_ROW["corrupted"]))) + "\n")
    from_strings = attrscope.load_task(str(strings), random_model)
    assert len(set(from_ids.answer_pos.tolist())) == 2  # mixed lengths
    for name in ("clean_tokens", "corrupted_tokens", "answer_ids", "distractor_ids"):
        assert torch.equal(getattr(from_ids, name), getattr(from_strings, name)), name
    assert from_ids.info["columns"]["corrupted"] == "corrupted_hard"


def test_bad_token_ids_name_the_row(random_model, tmp_path):
    path = tmp_path / "seed.csv"
    path.write_text("clean,corrupted_hard,correct_idx,incorrect_idx\n"
                    f'"{GOOD_ROW["clean"]}","{GOOD_ROW["corrupted"]}",99999999,5\n'
                    f'"{GOOD_ROW["clean"]}","{GOOD_ROW["corrupted"]}",x,5\n')
    with pytest.warns(UserWarning), pytest.raises(TaskDataError) as err:
        attrscope.load_task(str(path), random_model)
    assert "row 1: correct_idx: token id 99999999 is outside the tokenizer's vocabulary" in str(err.value)
    assert "row 2: correct_idx must hold token ids, got 'x'" in str(err.value)


def test_answer_sets_in_csv_and_jsonl_default_to_logprob_diff(random_model, tmp_path):
    row = {**GOOD_ROW, "answer": [" Mary", " Anna"], "distractor": [" John"]}
    jsonl = tmp_path / "sets.jsonl"
    jsonl.write_text(json.dumps(row) + "\n" + json.dumps(GOOD_ROW))
    csv_path = tmp_path / "sets.csv"
    csv_path.write_text('clean,corrupted,answer,distractor\n'
                        f'"{row["clean"]}","{row["corrupted"]}","["" Mary"", "" Anna""]"," John"\n'
                        f'"{row["clean"]}","{row["corrupted"]}"," Mary"," John"\n')
    a, b = (attrscope.load_task(str(p), random_model) for p in (jsonl, csv_path))
    assert a.metric_name == b.metric_name == "logprob_diff"
    assert a.pairs[0].answer == (" Mary", " Anna") and a.pairs[1].answer == " Mary"
    assert torch.equal(a.answer_ids, b.answer_ids)
    assert a.answer_ids[1, 1] == -1  # padding of the one-token set
    assert attrscope.load_task(str(jsonl), random_model, metric="prob_diff").metric_name == "prob_diff"
    with pytest.raises(TaskDataError, match="row 1: the logit difference needs one answer, got 2"):
        attrscope.load_task(str(jsonl), random_model, metric="logit_diff")


def test_missing_corrupted_column_and_explicit_column(random_model, tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("clean,corrupted_easy,answer,distractor\n"
                    f'"{GOOD_ROW["clean"]}","{GOOD_ROW["corrupted"]}"," Mary"," John"\n')
    with pytest.raises(TaskDataError, match=r"missing column\(s\) \['corrupted or corrupted_hard'\]"):
        attrscope.load_task(str(path), random_model)
    task = attrscope.load_task(str(path), random_model, corrupted_column="corrupted_easy")
    assert task.pairs[0].corrupted == GOOD_ROW["corrupted"]
    with pytest.raises(TaskDataError, match="no column 'nope'"):
        attrscope.load_task(str(path), random_model, corrupted_column="nope")


def test_jsonl_values_of_the_wrong_type_are_refused(random_model, tmp_path):
    [a] = _ids(random_model, " Mary")
    ids = tmp_path / "ids.jsonl"
    ids.write_text(json.dumps({"clean": GOOD_ROW["clean"], "corrupted_hard": GOOD_ROW["corrupted"],
                               "correct_idx": a + 0.5, "incorrect_idx": a + 1}))
    with pytest.warns(UserWarning), pytest.raises(TaskDataError,
                                                  match=f"row 1: correct_idx must hold token ids, got {a + 0.5!r}"):
        attrscope.load_task(str(ids), random_model)
    strings = tmp_path / "strings.jsonl"
    strings.write_text(json.dumps({**GOOD_ROW, "answer": 5}))
    with pytest.raises(TaskDataError, match=r"row 1: answer must be a string \(or a list of strings "
                                            r"for a set\), got 5"):
        attrscope.load_task(str(strings), random_model)


def test_generator_options_on_a_file_are_named(random_model, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD_ROW))
    with pytest.raises(ValueError, match=r"Option\(s\) \['split'\] do not apply to a task file"):
        attrscope.load_task(str(path), random_model, split="train")


def test_generated_tasks_honour_skip_invalid(random_model):
    """The random model's small tokenizer splits the suite's words: every row is invalid, and
    skip_invalid reports the skipped count instead of stopping at the first list of problems."""
    with pytest.raises(TaskDataError, match="problem"):
        attrscope.load_task("sva", random_model, n=10)
    with pytest.raises(TaskDataError, match="no valid prompt pair is left after skipping 10"):
        attrscope.load_task("sva", random_model, n=10, skip_invalid=True)
