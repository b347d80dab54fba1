"""Property-based tests of the task-file loader: arbitrary bytes, encodings, unicode, sizes and
column sets either load as a Task or fail with the loader's own TaskDataError, never another
exception type."""

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from attrscope.tasks import Task, TaskDataError, check_task_file, load_task_file

pytestmark = pytest.mark.filterwarnings("ignore:.*token-id column")
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COLUMNS = ["clean", "corrupted", "corrupted_hard", "answer", "distractor", "correct_idx",
           "incorrect_idx", "notes", "", "Clean", "answer "]
# Prompts of IOI names (single tokens of the test tokenizer) mixed with any unicode text.
TEXT = st.one_of(st.sampled_from(["When John and Mary went to the store, John gave it to",
                                  "When John and Mary went to the store, Mary gave it to",
                                  " Mary", " John", "Mary", "", " ", "[\" Mary\", \" John\"]",
                                  "[1, 2]", "3", "-1", "99999999"]),
                 st.text(max_size=40))


def _load(model, suffix: str, data: bytes):
    """load_task_file on ``data`` written to a fresh file: the Task, or the TaskDataError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"task{suffix}"
        path.write_bytes(data)
        try:
            check_task_file(path)
        except TaskDataError as e:
            assert str(path) in str(e)
        try:
            return load_task_file(path, model)
        except TaskDataError as e:
            assert str(path) in str(e)  # every refusal names the file
            return e


def _csv(columns, rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


@SETTINGS
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".jsonl", ".json"]))
@example(data=b"clean,corrupted,answer,distractor\n\x00,b,c,d\n", suffix=".csv")
@example(data=b'{"clean": "a\xe9"}\n', suffix=".jsonl")
@example(data=b"\xef\xbb\xbfclean,corrupted,answer,distractor\n", suffix=".csv")
@example(data=b"[" * 5000, suffix=".jsonl")
def test_arbitrary_bytes_load_or_raise_the_loaders_error(random_model, data, suffix):
    assert isinstance(_load(random_model, suffix, data), (Task, TaskDataError))


@SETTINGS
@given(columns=st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=6),
       rows=st.lists(st.lists(TEXT, min_size=0, max_size=7), min_size=0, max_size=4),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]))
def test_any_columns_cells_and_encoding_load_or_raise_the_loaders_error(random_model, columns,
                                                                        rows, encoding):
    try:
        data = _csv(columns, rows).encode(encoding)
    except UnicodeEncodeError:
        data = _csv(columns, rows).encode("utf-8")
    assert isinstance(_load(random_model, ".csv", data), (Task, TaskDataError))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)


@SETTINGS
@given(rows=st.lists(st.dictionaries(st.sampled_from(COLUMNS), JSON_VALUES, max_size=6)
                     | JSON_VALUES, max_size=4))
def test_any_json_lines_load_or_raise_the_loaders_error(random_model, rows):
    data = "\n".join(json.dumps(r) for r in rows).encode()
    assert isinstance(_load(random_model, ".jsonl", data), (Task, TaskDataError))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_non_utf8_byte_is_named_by_file_line_and_column(random_model, tmp_path, suffix):
    good = ('{"clean": "When John and Mary went", "corrupted": "When John and John went", '
            '"answer": " Mary", "distractor": " John"}') if suffix == ".jsonl" else \
        "clean,corrupted,answer,distractor\nWhen John and Mary went,When John and John went, Mary, John"
    path = tmp_path / f"t{suffix}"
    path.write_bytes(good.encode() + "\nCaf\u00e9 au lait".encode("latin-1") + b"\n")
    line = good.count("\n") + 2
    with pytest.raises(TaskDataError, match=rf"{path.name}: line {line}, column 4: byte 0xe9"):
        load_task_file(path, random_model)
