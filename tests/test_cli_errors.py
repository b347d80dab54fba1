"""Every bad input or fault a user might try ends in a clear message naming the input, a non-zero
exit code and no traceback - and, where the input can be checked before the work, before any
model is loaded. One table, run in-process on the small random model (the bad files are made
from its folder); the API rows check the exception type and message instead of an exit code."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import attrscope
from attrscope import Scores
from attrscope.cli import app

GOOD_ROW = {"clean": "When John and Mary went to the store, John gave a drink to",
            "corrupted": "When John and Mary went to the store, Mary gave a drink to",
            "answer": " Mary", "distractor": " John"}
CSV_HEADER = "clean,corrupted,answer,distractor\n"


def _csv_row(row: dict) -> str:
    return ",".join(json.dumps(row[c]) for c in ("clean", "corrupted", "answer", "distractor"))


def _model_copy(source, folder, change=None):
    shutil.copytree(source, folder)
    if change is not None:
        change(folder)
    return folder


def _nan_weights(folder):
    weights = load_file(folder / "model.safetensors")
    weights["transformer.ln_f.weight"].fill_(float("nan"))
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _garbled_header(folder):
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[8:40] = b"\xff" * 32
    (folder / "model.safetensors").write_bytes(bytes(data))


@pytest.fixture(scope="module")
def files(tmp_path_factory, random_model_dir):
    """Every bad (and a few good) input of the table, by name."""
    d = tmp_path_factory.mktemp("bad_inputs")
    f = {"dir": d, "model": random_model_dir, "afile": d / "afile.txt", "ro": "/proc/attrscope-out"}
    f["afile"].write_text("not a folder")
    m = lambda name, change=None: _model_copy(random_model_dir, d / name, change)  # noqa: E731
    f["m_empty"] = d / "m_empty"
    f["m_empty"].mkdir()
    f["m_config"] = m("m_config", lambda p: (p / "config.json").write_text("{model_type: gpt2"))
    f["m_noweights"] = m("m_noweights", lambda p: (p / "model.safetensors").unlink())
    f["m_truncated"] = m("m_truncated", lambda p: (p / "model.safetensors").write_bytes(
        (p / "model.safetensors").read_bytes()[:-1000]))
    f["m_header"] = m("m_header", _garbled_header)
    f["m_notok"] = m("m_notok", lambda p: (p / "tokenizer.json").unlink())
    f["m_nan"] = m("m_nan", _nan_weights)
    tasks = {
        "latin1.csv": CSV_HEADER.encode() + "Caf\u00e9,b,c,d\n".encode("latin-1"),
        "empty.csv": b"",
        "header_only.csv": CSV_HEADER.encode(),
        "nocols.csv": b"prompt,answer\nx,y\n",
        "nul.csv": CSV_HEADER.encode() + b"a\x00,b,c,d\n",
        "badjson.jsonl": (json.dumps(GOOD_ROW) + "\n{clean: 1}\n").encode(),
        "notobj.jsonl": b"[1, 2]\n",
        "one_bad_row.csv": (CSV_HEADER + _csv_row({**GOOD_ROW, "answer": " Mary Mary"})).encode(),
        "one_row.csv": (CSV_HEADER + _csv_row(GOOD_ROW) + "\n").encode(),
        "notes.txt": b"hello",
    }
    for name, data in tasks.items():
        (d / name).write_bytes(data)
    (d / "folder.csv").mkdir()
    scores = Scores(values={"heads": torch.randn(2, 3, 4)}, meta={"method": "atp"})
    good = scores.save(d / "good.safetensors")
    f["flipped"] = d / "flipped.safetensors"
    data = bytearray(good.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    f["flipped"].write_bytes(bytes(data))
    f["truncated"] = d / "truncated.safetensors"
    f["truncated"].write_bytes(good.read_bytes()[:-30])
    (d / "empty.safetensors").write_bytes(b"")
    return f


SMALL = ["--n", "2", "--method", "atp", "--direction", "noising", "--components", "heads",
         "--no-progress"]
# (id, command line with {placeholders} from `files`, text the message must contain)
CASES = [
    # the table
    ("out unwritable", "attribute --out {ro}/r", "--out {ro}/r is not writable"),
    ("out unwritable, compare --no-cache", "compare --no-cache --out {ro}/r", "is not writable"),
    ("out is a file, attribute", "attribute --out {afile}", "--out {afile} is an existing file"),
    ("out is a file, edges", "edges --out {afile}", "is an existing file"),
    ("out is a file, compare", "compare --out {afile}", "is an existing file"),
    ("out is a file, path", "path --component 0.1 --out {afile}", "is an existing file"),
    ("out is a file, counterfactual", "counterfactual --component 0.1 --prompt a --answer b "
     "--distractor c --out {afile}", "is an existing file"),
    ("out under a file", "attribute --out {afile}/sub", "{afile} is a file"),
    ("model: truncated safetensors", "attribute --model {m_truncated} --out {dir}/o",
     "m_truncated/model.safetensors is corrupt or truncated"),
    ("model: garbled safetensors header", "compare --model {m_header} --out {dir}/o",
     "m_header/model.safetensors is corrupt or truncated"),
    ("model: /nonexistent", "attribute --model /nonexistent --out {dir}/o",
     "model folder /nonexistent does not exist"),
    ("model: relative missing", "edges --model ./no/such/model --out {dir}/o",
     "no/such/model does not exist"),
    ("show a folder", "show {dir}", "is not a file"),
    ("show a missing file", "show {dir}/missing.safetensors", "missing.safetensors: no such"),
    ("show a CSV", "show {dir}/one_row.csv", "one_row.csv is not a readable safetensors"),
    ("show an empty file", "show {dir}/empty.safetensors", "empty.safetensors is not a readable"),
    ("non-UTF-8 task file", "attribute --task {dir}/latin1.csv --out {dir}/o",
     "latin1.csv: line 2, column 4: byte 0xe9 is not UTF-8"),
    ("float16 on the CPU warns", "attribute --dtype float16 --task {dir}/empty.csv --out {dir}/o",
     "warning: float16 on the CPU"),
    ("show a corrupt result (full size)", "show {flipped}", "flipped.safetensors is corrupt"),
    ("show a truncated result", "show {truncated}", "truncated.safetensors is not a readable"),
    # more model faults
    ("model: empty folder", "attribute --model {m_empty} --out {dir}/o", "m_empty is empty"),
    ("model: a file", "attribute --model {afile} --out {dir}/o", "afile.txt is a file"),
    ("model: bad config.json", "path --component 0.1 --model {m_config} --out {dir}/o",
     "m_config/config.json is not valid JSON"),
    ("model: no weights", "attribute --model {m_noweights} --out {dir}/o", "m_noweights has no weights"),
    ("model: no tokenizer", "counterfactual --component 0.1 --prompt a --answer b --distractor c "
     "--model {m_notok} --out {dir}/o", "m_notok has no tokenizer"),
    ("model: NaN outputs", "attribute --model {m_nan} " + " ".join(SMALL) + " --out {dir}/o",
     "is NaN or infinite"),
    ("model: NaN outputs, compare", "compare --model {m_nan} --n 2 --method atp,ig --n-steps 2 "
     "--components heads --no-progress --out {dir}/o", "is NaN or infinite"),
    # task files and names
    ("task: unknown name", "attribute --task ioj --out {dir}/o", "Unknown task 'ioj'"),
    ("task: missing file", "attribute --task {dir}/none.csv --out {dir}/o", "none.csv does not exist"),
    ("task: empty file", "compare --task {dir}/empty.csv --out {dir}/o", "empty.csv: the file has no rows"),
    ("task: header only", "attribute --task {dir}/header_only.csv --out {dir}/o", "has no rows"),
    ("task: missing columns", "edges --task {dir}/nocols.csv --out {dir}/o", "nocols.csv: missing column"),
    ("task: NUL byte", "attribute --model {model} --task {dir}/nul.csv --out {dir}/o",
     "nul.csv': 1 problem(s)"),
    ("task: bad JSON line", "attribute --task {dir}/badjson.jsonl --out {dir}/o",
     "badjson.jsonl: line 2 is not valid JSON"),
    ("task: JSON line not an object", "path --component 0.1 --task {dir}/notobj.jsonl --out {dir}/o",
     "notobj.jsonl: line 1 is not a JSON object"),
    ("task: unsupported file type", "attribute --task {dir}/notes.txt --out {dir}/o",
     "unsupported file type '.txt'"),
    ("task: a folder named .csv", "attribute --task {dir}/folder.csv --out {dir}/o",
     "folder.csv: cannot read"),
    ("task: its one row invalid", "attribute --model {model} --task {dir}/one_bad_row.csv --out {dir}/o",
     "row 1"),
    ("task: one row, --n 5", "attribute --model {model} --task {dir}/one_row.csv --n 5 --out {dir}/o",
     "asked for n=5"),
    ("n 0", "attribute --model {model} --n 0 --out {dir}/o", "n must be at least 1"),
    # options
    ("unknown metric", "attribute --metric logit_dif --out {dir}/o", "logit_dif"),
    ("unknown method", "attribute --method ap,magic --out {dir}/o", "magic"),
    ("unknown direction", "compare --direction sideways --out {dir}/o", "sideways"),
    ("unknown component kind", "attribute --components paths --out {dir}/o", "paths"),
    ("unknown dtype", "attribute --dtype float8 --out {dir}/o", "float8"),
    ("bad device", "attribute --device tpu:banana --out {dir}/o", "tpu:banana"),
    ("bad --max-memory", "compare --max-memory lots --out {dir}/o", "lots"),
    ("bad --units syntax", "attribute --units neurons=a --out {dir}/o", "neurons=a"),
    ("--units out of range", "attribute --model {model} --units heads=9 --out {dir}/o",
     "head index 9 is out of range"),
    ("--units huge range", "attribute --units neurons=0:99999999999 --out {dir}/o",
     "neurons=0:99999999999"),
    ("--top-k 0", "compare --top-k 0 --out {dir}/o", "--top-k"),
    ("bad --ablation", "compare --ablation magic --out {dir}/o", "magic"),
    ("edges --top 0", "edges --top 0 --out {dir}/o", "--top"),
    ("edges --threshold -1", "edges --threshold -1 --out {dir}/o", "--threshold"),
    ("conflicting atpstar options", "attribute --model {model} --method atpstar --head-score paths "
     "--no-qk-fix --out {dir}/o", "head_score='paths'"),
    ("path: wrong kind", "path --component 0.1 --kind layers --out {dir}/o", "layers"),
    ("path: neuron label as a head", "path --model {model} --component 0.50 --kind heads "
     "--no-survey --out {dir}/o", "head 50 does not exist"),
    ("path: malformed label", "path --model {model} --component L0H1 --out {dir}/o", "L0H1"),
    ("counterfactual: layer out of range", "counterfactual --model {model} --component 7.1 "
     "--prompt a --answer b --distractor c --out {dir}/o", "layer 7 does not exist"),
]


@pytest.mark.parametrize("args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_ends_in_a_clear_message_and_non_zero_exit(files, args, expected):
    line = args.format(**files).split()
    result = CliRunner().invoke(app, line)
    output = " ".join(result.output.split())  # usage errors wrap the message in a box
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert " ".join(expected.format(**files).split()) in output.replace("│ ", ""), result.output


def test_the_table_covers_at_least_forty_faults():
    assert len(CASES) + len(API_CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, files):
    import attrscope.api as api

    def refuse(*args, **kwargs):
        raise RuntimeError("sliding-window attention is not supported by edge methods")

    monkeypatch.setattr(api, "attribute_edges", refuse)
    line = ["edges", "--model", str(files["model"]), "--n", "2", "--out", str(files["dir"] / "e")]
    result = CliRunner().invoke(app, line)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("error: RuntimeError: sliding-window attention is not supported by edge methods "
            "(run 'attrscope --debug ...' for the traceback)") in result.output
    debug = CliRunner().invoke(app, ["--debug", *line])
    assert isinstance(debug.exception, RuntimeError)  # --debug lets the exception through


def test_input_errors_come_before_the_model_is_loaded(monkeypatch, files):
    import attrscope.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input check")

    monkeypatch.setattr(attrscope.models, "load_model", no_loading)
    for args in ("attribute --model {m_truncated} --out {dir}/o",
                 "compare --task {dir}/latin1.csv --out {dir}/o",
                 "compare --out {ro}/x", "edges --out {afile}"):
        result = CliRunner().invoke(app, args.format(**files).split())
        assert result.exit_code == 2 and "error:" in result.output, result.output


# (id, call, exception type, text the message must contain); `m`, `t`: the random model, task
API_CASES = [
    ("method not a name", lambda m, t: attrscope.attribute(m, t, 3), ValueError, "Unknown method 3"),
    ("direction not a name", lambda m, t: attrscope.attribute(m, t, "atp", 1), ValueError,
     "Unknown direction 1"),
    ("components an int", lambda m, t: attrscope.attribute(m, t, "atp", "noising", 5), TypeError,
     "components must be names"),
    ("n a string", lambda m, t: attrscope.load_task("ioi", m, n="5"), TypeError, "n must be"),
    ("task an int", lambda m, t: attrscope.load_task(5, m), TypeError, "task must be"),
    ("unknown setting", lambda m, t: attrscope.attribute(m, t, "atp", steps=3), ValueError,
     "no setting(s) ['steps']"),
    ("max_batch_rows 0", lambda m, t: attrscope.attribute(m, t, "atp", max_batch_rows=0),
     ValueError, "max_batch_rows"),
    ("Scores of a list", lambda m, t: Scores(values={"heads": [[1.0]]}), TypeError,
     "scores['heads'] must be a torch.Tensor"),
    ("Scores.load of an int", lambda m, t: Scores.load(123), TypeError, "path must be"),
    ("top with k a string", lambda m, t: Scores(values={"heads": torch.zeros(1, 2, 3)}).top(
        "heads", "3"), TypeError, "k must be"),
]


@pytest.mark.parametrize("call, error, expected", [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])
def test_wrong_api_arguments_are_named(random_model, random_task, call, error, expected):
    with pytest.raises(error) as raised:
        call(random_model, random_task)
    assert expected in str(raised.value)
