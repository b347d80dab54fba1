"""Every bad input or fault a user might try, as one table (listed in docs/errors.md).

Each row runs a command line in-process (``cli``), an API call (``api``) or a fault injected into
a real run (``fault``: SIGINT, SIGTERM, a full disk, a model whose outputs turn NaN mid-run), and
asserts the same four things: a non-zero exit (an exception for the API), one line naming the
input (the expected text, on a single line; the API's message has no line break), no traceback,
and nothing partial left behind (no temporary file, every result and chunk file whole and
verified). Rows that do not need a model run with model loading forbidden, so they show that the
input is refused before any model is loaded; the others use the small random model of
``conftest.py``.

Below the table: hypothesis fuzzing of the command line's options end to end on the embedded
model, and the Done-when check of issue 21 (a SIGTERM during ``compare``, then the same command,
gives tables and results bit-identical to an uninterrupted run).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

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


def _config_change(**changes):
    def change(folder):
        config = json.loads((folder / "config.json").read_text())
        config.update({k: (v(config) if callable(v) else v) for k, v in changes.items()})
        (folder / "config.json").write_text(json.dumps(config))
    return change


def _bert(folder):
    from transformers import BertConfig, BertForMaskedLM

    from families import save_tokenizer

    tok = save_tokenizer(folder)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)


@pytest.fixture(scope="module")
def files(tmp_path_factory, random_model_dir):
    """Every bad (and a few good) input of the table, by name."""
    from families import build

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
    f["m_vocab"] = m("m_vocab", _config_change(vocab_size=lambda c: c["vocab_size"] + 7))
    f["m_t5"] = m("m_t5", _config_change(model_type="t5", is_encoder_decoder=True))
    f["m_unknown"] = m("m_unknown", _config_change(model_type="no-such-family"))
    f["m_bert"] = d / "m_bert"
    _bert(f["m_bert"])
    f["m_opt350"] = d / "m_opt350"
    f["m_opt350"].mkdir()
    build("opt350m_style", f["m_opt350"])
    long = "and then " * 40
    tasks = {
        "latin1.csv": CSV_HEADER.encode() + "Caf\u00e9,b,c,d\n".encode("latin-1"),
        "utf16.csv": (CSV_HEADER + _csv_row(GOOD_ROW) + "\n").encode("utf-16"),
        "empty.csv": b"",
        "header_only.csv": CSV_HEADER.encode(),
        "nocols.csv": b"prompt,answer\nx,y\n",
        "dupcols.csv": ("clean," + CSV_HEADER + json.dumps(GOOD_ROW["clean"]) + ","
                        + _csv_row(GOOD_ROW) + "\n").encode(),
        "ragged.csv": (CSV_HEADER + _csv_row(GOOD_ROW) + ",extra\n").encode(),
        "short_row.csv": (CSV_HEADER + json.dumps(GOOD_ROW["clean"]) + "\n").encode(),
        "open_quote.csv": (CSV_HEADER + '"When John and Mary,b,c,d\n').encode(),
        "empty_cell.csv": (CSV_HEADER + _csv_row({**GOOD_ROW, "clean": ""}) + "\n").encode(),
        "unequal.csv": (CSV_HEADER + _csv_row({**GOOD_ROW, "corrupted": "Mary gave a drink to"})
                        + "\n").encode(),
        "too_long.csv": (CSV_HEADER + _csv_row({**GOOD_ROW, "clean": long + GOOD_ROW["clean"],
                                                "corrupted": long + GOOD_ROW["corrupted"]})
                         + "\n").encode(),
        "nul.csv": CSV_HEADER.encode() + b"a\x00,b,c,d\n",
        "badjson.jsonl": (json.dumps(GOOD_ROW) + "\n{clean: 1}\n").encode(),
        "notobj.jsonl": b"[1, 2]\n",
        "num_answer.jsonl": (json.dumps({**GOOD_ROW, "answer": 5}) + "\n").encode(),
        "no_distractor.jsonl": (json.dumps({k: v for k, v in GOOD_ROW.items()
                                            if k != "distractor"}) + "\n").encode(),
        "same.jsonl": (json.dumps({**GOOD_ROW, "corrupted": GOOD_ROW["clean"]}) + "\n").encode(),
        "one_bad_row.csv": (CSV_HEADER + _csv_row({**GOOD_ROW, "answer": " Mary Mary"})).encode(),
        "one_row.csv": (CSV_HEADER + _csv_row(GOOD_ROW) + "\n").encode(),
        "half_valid.csv": (CSV_HEADER + "".join(
            _csv_row({**GOOD_ROW, "answer": " Mary Mary"} if i % 2 else GOOD_ROW) + "\n"
            for i in range(10))).encode(),
        "notes.txt": b"hello",
        "grid.toml": b"models = [\n",
    }
    for name, data in tasks.items():
        (d / name).write_bytes(data)
    (d / "folder.csv").mkdir()
    scores = Scores(values={"heads": torch.randn(2, 3, 4)}, meta={"method": "atp"})
    good = scores.save(d / "good.safetensors")
    data = bytearray(good.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    (d / "flipped.safetensors").write_bytes(bytes(data))
    (d / "truncated.safetensors").write_bytes(good.read_bytes()[:-30])
    (d / "empty.safetensors").write_bytes(b"")
    header_len = int.from_bytes(good.read_bytes()[:8], "little")
    header = good.read_bytes()[8:8 + header_len].replace(b'"atp', b'"ap ')  # same length
    (d / "tampered.safetensors").write_bytes(good.read_bytes()[:8] + header
                                             + good.read_bytes()[8 + header_len:])
    save_file({"weight": torch.ones(2, 2)}, str(d / "foreign.safetensors"))
    return f


SMALL = "--n 2 --method atp --direction noising --components heads --no-progress"
CF = "counterfactual --component 0.1 --prompt a --answer b --distractor c"


@dataclass(frozen=True)
class Case:
    """One row: ``kind`` "cli" (``spec`` a command line with {placeholders} from ``files`` and
    {out}), "api" (``spec(model, task, files)``) or "fault" (``spec(files, out, monkeypatch)``
    returning (exit code, output)); ``expected``: text the one line must contain; ``model``:
    whether a model may be loaded (otherwise loading it fails the row); ``exit``: the exit code."""

    id: str
    kind: str
    spec: object
    expected: str
    model: bool = False
    exit: int = 2  # bad input; 130 after SIGINT, 143 after SIGTERM


def cli(id, line, expected, model=False):
    return Case(id, "cli", line, expected, model)


def api(id, call, expected, model=True):
    return Case(id, "api", call, expected, model)


def fault(id, run, expected, exit=2):
    return Case(id, "fault", run, expected, True, exit)


# -- runtime faults, injected into real runs ----------------------------------------------------
def _signal_after_first_chunk(sig: int):
    """A fault: a real ``ap`` run that receives ``sig`` once its first chunk is written."""
    def run(files, out, monkeypatch):
        from attrscope.checkpoint import Checkpoint

        put = Checkpoint.put

        def put_then_signal(self, name, tensors):
            put(self, name, tensors)
            os.kill(os.getpid(), sig)

        monkeypatch.setattr(Checkpoint, "put", put_then_signal)
        # Ctrl-C as a fresh `attrscope` process gets it, whatever handler an earlier test left
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        line = (f"attribute --model {files['model']} --n 2 --method ap --direction noising "
                f"--components heads --no-progress --out {out}")
        try:
            result = CliRunner().invoke(app, line.split())
        finally:
            signal.signal(signal.SIGINT, previous)
        assert list(out.glob("results/*.parts/*.safetensors")), "the finished chunk was not kept"
        return result.exit_code, result.output
    return run


def _disk_full(command: str):
    """A fault: the disk is full when the result (or a chunk) is written."""
    def run(files, out, monkeypatch):
        import attrscope.scores

        def full(path, data):
            with open(path, "wb") as f:
                f.write(data[: len(data) // 3])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(attrscope.files, "_write_file", full)
        result = CliRunner().invoke(app, command.format(**files, out=out).split())
        return result.exit_code, result.output
    return run


def _full_tmpfs(files, out, monkeypatch):
    """A fault: ``--out`` on a real 64 KB tmpfs, filled up before the run (skipped where this
    process may not mount one)."""
    disk = out.parent / "tiny"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); the injected "
                    "ENOSPC rows check the same")
    try:
        with open(disk / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 1024)
            except OSError:  # full
                pass
        line = (f"attribute --model {files['model']} {SMALL} --out {disk / 'out'}")
        result = CliRunner().invoke(app, line.split())
        assert_nothing_partial(disk)
        return result.exit_code, result.output
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _nan_mid_run(files, out, monkeypatch):
    """A fault: the model's outputs turn NaN in a patched pass (one that stacks several patched
    copies of the 2 samples), after the unpatched runs and their checks went well."""
    from attrscope.arch.core import BlockAdapter

    final, calls = BlockAdapter.final, [0]

    def sometimes_nan(self, *args, **kwargs):
        metric = final(self, *args, **kwargs)
        if metric.shape[0] <= 2:  # an unpatched run of the 2 samples
            return metric
        calls[0] += 1
        return metric * float("nan")

    monkeypatch.setattr(BlockAdapter, "final", sometimes_nan)
    line = (f"attribute --model {files['model']} --n 2 --method ap --direction noising "
            f"--components heads --no-progress --out {out}")
    result = CliRunner().invoke(app, line.split())
    assert calls[0] > 0, "no patched pass ran"
    return result.exit_code, result.output


CASES = [
    # -- model folders -------------------------------------------------------------------------
    cli("model: /nonexistent", "attribute --model /nonexistent --out {out}",
        "model folder /nonexistent does not exist"),
    cli("model: relative missing", "edges --model ./no/such/model --out {out}",
        "no/such/model does not exist"),
    cli("model: empty folder", "attribute --model {m_empty} --out {out}", "m_empty is empty"),
    cli("model: a file", "attribute --model {afile} --out {out}", "afile.txt is a file"),
    cli("model: bad config.json", "path --component 0.1 --model {m_config} --out {out}",
        "m_config/config.json is not valid JSON"),
    cli("model: no weights", "attribute --model {m_noweights} --out {out}",
        "m_noweights has no weights"),
    cli("model: truncated safetensors", "attribute --model {m_truncated} --out {out}",
        "m_truncated/model.safetensors is corrupt or truncated"),
    cli("model: garbled safetensors header", "compare --model {m_header} --out {out}",
        "m_header/model.safetensors is corrupt or truncated"),
    cli("model: no tokenizer", CF + " --model {m_notok} --out {out}", "m_notok has no tokenizer"),
    cli("model: BERT masked LM (attribute)", "attribute --model {m_bert} --out {out}",
        "m_bert is a 'bert' model (BertForMaskedLM), not a decoder-only causal language model"),
    cli("model: BERT masked LM (edges)", "edges --model {m_bert} --out {out}",
        "not a decoder-only causal language model"),
    cli("model: encoder-decoder", "compare --model {m_t5} --out {out}",
        "m_t5 is a 't5' model"),
    cli("model: unknown model_type", "attribute --model {m_unknown} --out {out}",
        "'no-such-family' model"),
    cli("model: config and weights disagree on vocab_size", "compare --model {m_vocab} --out {out}",
        "disagree on vocab_size: config.json says"),
    cli("model: OPT-350m style (attribute)", "attribute --model {m_opt350} --out {out}",
        "post-LayerNorm blocks (do_layer_norm_before=False, the OPT-350m style)"),
    cli("model: OPT-350m style (compare)", "compare --model {m_opt350} --out {out}",
        "post-LayerNorm blocks"),
    cli("model: OPT-350m style (edges)", "edges --model {m_opt350} --out {out}",
        "post-LayerNorm blocks"),
    cli("model: OPT-350m style (path)", "path --component 0.1 --model {m_opt350} --out {out}",
        "post-LayerNorm blocks"),
    cli("model: OPT-350m style (counterfactual)", CF + " --model {m_opt350} --out {out}",
        "post-LayerNorm blocks"),
    cli("model: NaN outputs", "attribute --model {m_nan} " + SMALL + " --out {out}",
        "is NaN or infinite", model=True),
    # -- task files and names ------------------------------------------------------------------
    cli("float16 on the CPU warns, then the task is refused", "attribute --dtype float16 "
        "--task {dir}/empty.csv --out {out}", "warning: float16 on the CPU"),
    cli("task: unknown name", "attribute --task ioj --out {out}", "Unknown task 'ioj'"),
    cli("task: missing file", "attribute --task {dir}/none.csv --out {out}",
        "none.csv does not exist"),
    cli("task: empty file", "compare --task {dir}/empty.csv --out {out}",
        "empty.csv: the file has no rows"),
    cli("task: header only", "attribute --task {dir}/header_only.csv --out {out}", "has no rows"),
    cli("task: missing columns", "edges --task {dir}/nocols.csv --out {out}",
        "nocols.csv: missing column"),
    cli("task: non-UTF-8 (latin-1)", "attribute --task {dir}/latin1.csv --out {out}",
        "latin1.csv: line 2, column 4: byte 0xe9 is not UTF-8"),
    cli("task: UTF-16", "compare --task {dir}/utf16.csv --out {out}",
        "utf16.csv: line 1, column 1: byte 0xff is not UTF-8"),
    cli("task: duplicated column", "attribute --task {dir}/dupcols.csv --out {out}",
        "dupcols.csv: duplicated column(s) ['clean']"),
    cli("task: more cells than the header", "attribute --task {dir}/ragged.csv --out {out}",
        "ragged.csv: row 1 has 5 cells but the header has 4 columns"),
    cli("task: fewer cells than the header", "attribute --model {model} --task "
        "{dir}/short_row.csv --out {out}", "short_row.csv: 1 problem(s); row 1: missing value(s)",
        model=True),
    cli("task: unclosed quote", "attribute --model {model} --task {dir}/open_quote.csv "
        "--out {out}", "open_quote.csv: 1 problem(s); row 1: missing value(s)", model=True),
    cli("task: empty cell", "attribute --model {model} --task {dir}/empty_cell.csv --out {out}",
        "row 1: clean prompt is empty", model=True),
    cli("task: unequal token lengths", "attribute --model {model} --task {dir}/unequal.csv "
        "--out {out}", "row 1: clean and corrupted prompts differ in token length", model=True),
    cli("task: prompt longer than the context", "attribute --model {model} --task "
        "{dir}/too_long.csv --out {out}", "more than the model's context of 64", model=True),
    cli("task: multi-token answer", "attribute --model {model} --task {dir}/one_bad_row.csv "
        "--out {out}", "row 1: answer ' Mary Mary' must be a single token", model=True),
    cli("task: NUL byte", "attribute --model {model} --task {dir}/nul.csv --out {out}",
        "nul.csv': 1 problem(s)", model=True),
    cli("task: bad JSON line", "attribute --task {dir}/badjson.jsonl --out {out}",
        "badjson.jsonl: line 2 is not valid JSON"),
    cli("task: JSON line not an object", "path --component 0.1 --task {dir}/notobj.jsonl "
        "--out {out}", "notobj.jsonl: line 1 is not a JSON object"),
    cli("task: JSON answer a number", "attribute --model {model} --task {dir}/num_answer.jsonl "
        "--out {out}", "row 1: answer must be a string", model=True),
    cli("task: JSON key missing", "attribute --task {dir}/no_distractor.jsonl --out {out}",
        "no_distractor.jsonl: missing column(s) ['distractor"),
    cli("task: unsupported file type", "attribute --task {dir}/notes.txt --out {out}",
        "unsupported file type '.txt'"),
    cli("task: a folder named .csv", "attribute --task {dir}/folder.csv --out {out}",
        "folder.csv: cannot read"),
    cli("task: one row, --n 50 (the user's n)", "attribute --task {dir}/one_row.csv --n 50 "
        "--out {out}", "one_row.csv: asked for n=50 pairs but the file has 1 row(s)"),
    cli("task: --skip-invalid leaves fewer rows than --n", "attribute --model {model} --task "
        "{dir}/half_valid.csv --skip-invalid --n 9 --out {out}",
        "half_valid.csv: asked for n=9 pairs but only 5 rows are valid", model=True),
    cli("task: no gap to normalise by", "attribute --model {model} --task {dir}/same.jsonl "
        "--method atp --normalize gap --no-progress --out {out}",
        "same.jsonl has no gap to normalise by", model=True),
    cli("task: no gap to normalise by (compare)", "compare --model {model} --task "
        "{dir}/same.jsonl --method atp --components heads --normalize gap --no-progress "
        "--out {out}", "same.jsonl has no gap to normalise by", model=True),
    # -- numeric options -----------------------------------------------------------------------
    cli("--n 0", "attribute --n 0 --out {out}", "--n: 0: must be at least 1"),
    cli("--n negative", "compare --n -5 --out {out}", "--n: -5: must be at least 1"),
    cli("--n not a number", "attribute --n abc --out {out}", "(got --n 'abc')"),
    cli("--n huge", "edges --n 99999999999999 --out {out}", "--n: 99999999999999: give a finite"),
    cli("--n too large for memory", "attribute --n 100000000 --out {out}",
        "Use --n", model=True),
    cli("--seed negative", "attribute --seed -1 --out {out}", "--seed: -1: must be at least 0"),
    cli("--top 0", "attribute --top 0 --out {out}", "--top: 0: must be at least 1"),
    cli("edges --top 0", "edges --top 0 --out {out}", "--top"),
    cli("--top-k 0", "compare --top-k 0 --out {out}", "--top-k: 0.0: must be above 0"),
    cli("--top-k 1.5", "compare --top-k 1.5 --out {out}", "give a whole number >= 1 or a fraction"),
    cli("--n-boot 0", "compare --n-boot 0 --out {out}", "--n-boot: 0: must be at least 1"),
    cli("--n-random -1", "compare --n-random -1 --out {out}", "--n-random: -1: must be at least 1"),
    cli("--min-asymmetry negative", "compare --min-asymmetry -0.5 --out {out}",
        "--min-asymmetry: -0.5"),
    cli("--n-steps 0", "attribute --method ig --n-steps 0 --out {out}",
        "--n-steps: 0: must be at least 1"),
    cli("--n-steps not a number", "compare --n-steps many --out {out}", "(got --n-steps 'many')"),
    cli("--steps negative", "edges --steps -2 --out {out}", "--steps: -2: must be at least 1"),
    cli("--max-batch-rows 0", "attribute --max-batch-rows 0 --out {out}",
        "--max-batch-rows: 0: must be at least 1"),
    cli("--max-batch-rows not a number, given twice", "attribute --max-batch-rows 4 "
        "--max-batch-rows=a --out {out}", "(got --max-batch-rows 'a')"),
    cli("--max-memory not a size", "compare --max-memory lots --out {out}", "lots"),
    cli("--max-memory 0", "attribute --max-memory 0 --out {out}", "max_memory must be positive"),
    cli("--max-memory 1KB: below one row", "attribute --model {model} " + SMALL +
        " --max-memory 1KB --out {out}", "max_memory 1 KB is less than one row of this run's "
        "largest pass", model=True),
    cli("edges --threshold -1", "edges --threshold -1 --out {out}", "--threshold: -1.0"),
    cli("path --split-r nan", "path --component 0.1 --split-r nan --out {out}", "--split-r: nan"),
    cli("counterfactual --beam 0", CF + " --beam 0 --out {out}", "--beam: 0: must be at least 1"),
    cli("counterfactual --max-perplexity-ratio 0.5", CF + " --max-perplexity-ratio 0.5 "
        "--out {out}", "--max-perplexity-ratio: 0.5: must be at least 1"),
    cli("counterfactual --n-iters huge", CF + " --n-iters 10000000000000 --out {out}",
        "--n-iters: 10000000000000"),
    cli("shard --actors 0", "shard --actors 0 --out {out}", "--actors: 0: must be at least 1"),
    cli("sweep --num-cpus 0", "sweep --num-cpus 0 --out {out}", "--num-cpus: 0.0: must be above 0"),
    cli("sweep --n 0", "sweep --n 0 --out {out}", "--n: 0: must be at least 1"),
    # -- names and choices ---------------------------------------------------------------------
    cli("unknown metric", "attribute --metric logit_dif --out {out}", "logit_dif"),
    cli("unknown method", "attribute --method ap,magic --out {out}", "magic"),
    cli("unknown direction", "compare --direction sideways --out {out}", "sideways"),
    cli("unknown component kind", "attribute --components paths --out {out}", "paths"),
    cli("unknown dtype", "attribute --dtype float8 --out {out}", "float8"),
    cli("bad device", "attribute --device tpu:banana --out {out}", "tpu:banana"),
    cli("unknown --normalize", "attribute --normalize gaps --out {out}", "gaps"),
    cli("bad --ablation", "compare --ablation magic --out {out}", "magic"),
    cli("bad --units syntax", "attribute --units neurons=a --out {out}", "neurons=a"),
    cli("--units out of range", "attribute --model {model} --units heads=9 --out {out}",
        "head index 9 is out of range", model=True),
    cli("--units huge range", "attribute --units neurons=0:99999999999 --out {out}",
        "neurons=0:99999999999"),
    cli("conflicting atpstar options", "attribute --model {model} --method atpstar "
        "--head-score paths --no-qk-fix --out {out}", "head_score='paths'", model=True),
    cli("path: wrong kind", "path --component 0.1 --kind layers --out {out}", "layers"),
    cli("path: neuron label as a head", "path --model {model} --component 0.50 --kind heads "
        "--no-survey --out {out}", "head 50 does not exist", model=True),
    cli("path: malformed label", "path --model {model} --component L0H1 --out {out}", "L0H1",
        model=True),
    cli("counterfactual: layer out of range", "counterfactual --model {model} --component 7.1 "
        "--prompt a --answer b --distractor c --out {out}", "layer 7 does not exist", model=True),
    cli("unknown option", "attribute --bogus 1 --out {out}", "No such option: --bogus"),
    # -- path options --------------------------------------------------------------------------
    cli("out unwritable", "attribute --out {ro}/r", "--out {ro}/r is not writable"),
    cli("out unwritable, compare --no-cache", "compare --no-cache --out {ro}/r", "is not writable"),
    cli("out is a file, attribute", "attribute --out {afile}", "--out {afile} is an existing file"),
    cli("out is a file, edges", "edges --out {afile}", "is an existing file"),
    cli("out is a file, compare", "compare --out {afile}", "is an existing file"),
    cli("out is a file, path", "path --component 0.1 --out {afile}", "is an existing file"),
    cli("out is a file, counterfactual", CF + " --out {afile}", "is an existing file"),
    cli("out under a file", "attribute --out {afile}/sub", "{afile} is a file"),
    cli("compare --from-sweep missing folder", "compare --from-sweep {dir}/no-sweep --out {out}",
        "--from-sweep: {dir}/no-sweep: no such folder"),
    cli("compare --from-sweep a file", "compare --from-sweep {afile} --out {out}",
        "--from-sweep: {afile} is a file; give a folder"),
    cli("sweep --grid missing", "sweep --grid {dir}/none.toml --out {out}",
        "--grid: {dir}/none.toml: no such file"),
    cli("sweep --grid a folder", "sweep --grid {dir} --out {out}", "is a folder; give a file"),
    # -- result files --------------------------------------------------------------------------
    cli("show a folder", "show {dir}", "is not a file"),
    cli("show a missing file", "show {dir}/missing.safetensors", "missing.safetensors: no such"),
    cli("show a CSV", "show {dir}/one_row.csv", "one_row.csv is not a readable safetensors"),
    cli("show an empty file", "show {dir}/empty.safetensors", "empty.safetensors is not a readable"),
    cli("show a corrupt result (full size)", "show {dir}/flipped.safetensors",
        "flipped.safetensors is corrupt"),
    cli("show a truncated result", "show {dir}/truncated.safetensors",
        "truncated.safetensors is not a readable"),
    cli("show a tampered header", "show {dir}/tampered.safetensors",
        "tampered.safetensors is corrupt"),
    cli("show another program's safetensors", "show {dir}/foreign.safetensors",
        "foreign.safetensors is a safetensors file but not an attrscope result"),
    cli("show --top 0", "show {dir}/good.safetensors --top 0", "--top: 0: must be at least 1"),
    # -- runtime faults ------------------------------------------------------------------------
    fault("SIGINT mid-run keeps the finished chunk", _signal_after_first_chunk(signal.SIGINT),
          "interrupted: 0 finished result(s) and 1 finished chunk(s)", exit=130),
    fault("SIGTERM mid-run keeps the finished chunk", _signal_after_first_chunk(signal.SIGTERM),
          "terminated (SIGTERM): 0 finished result(s) and 1 finished chunk(s)", exit=143),
    fault("disk full writing a result", _disk_full(
        "attribute --model {model} " + SMALL + " --out {out}"),
        "safetensors: no space left on its disk"),
    fault("disk full writing a chunk", _disk_full(
        "attribute --model {model} --n 2 --method ap --components heads --direction noising "
        "--no-progress --out {out}"), "no space left on its disk"),
    fault("disk full on a real 64 KB tmpfs", _full_tmpfs,
          "safetensors: no space left on its disk"),
    fault("model outputs turn NaN mid-run", _nan_mid_run, "ap noising produced"),
    # -- the API -------------------------------------------------------------------------------
    api("method not a name", lambda m, t, f: attrscope.attribute(m, t, 3), "Unknown method 3"),
    api("direction not a name", lambda m, t, f: attrscope.attribute(m, t, "atp", 1),
        "Unknown direction 1"),
    api("components an int", lambda m, t, f: attrscope.attribute(m, t, "atp", "noising", 5),
        "components must be names"),
    api("n a string", lambda m, t, f: attrscope.load_task("ioi", m, n="5"), "n must be"),
    api("task an int", lambda m, t, f: attrscope.load_task(5, m), "task must be"),
    api("unknown setting", lambda m, t, f: attrscope.attribute(m, t, "atp", steps=3),
        "no setting(s) ['steps']"),
    api("max_batch_rows 0", lambda m, t, f: attrscope.attribute(m, t, "atp", max_batch_rows=0),
        "max_batch_rows"),
    api("max_memory below one row", lambda m, t, f: attrscope.attribute(
        m, t, "atp", max_memory="1KB", show_progress=False), "is less than one row"),
    api("normalize a task without gap", lambda m, t, f: attrscope.attribute(
        m, attrscope.load_task(str(f["dir"] / "same.jsonl"), m), "atp", normalize="gap",
        show_progress=False), "has no gap to normalise by"),
    api("load_task n above the file's rows", lambda m, t, f: attrscope.load_task(
        str(f["dir"] / "one_row.csv"), m, n=50), "asked for n=50 pairs but the file has 1"),
    api("load_model a BERT folder", lambda m, t, f: attrscope.load_model(str(f["m_bert"])),
        "not a decoder-only causal language model", model=False),
    api("load_model an OPT-350m folder", lambda m, t, f: attrscope.load_model(
        str(f["m_opt350"])), "post-LayerNorm", model=False),
    api("load_model vocab mismatch", lambda m, t, f: attrscope.load_model(str(f["m_vocab"])),
        "disagree on vocab_size", model=False),
    api("Scores of a list", lambda m, t, f: Scores(values={"heads": [[1.0]]}),
        "scores['heads'] must be a torch.Tensor", model=False),
    api("Scores.load of an int", lambda m, t, f: Scores.load(123), "path must be", model=False),
    api("Scores.load another program's file", lambda m, t, f: Scores.load(
        f["dir"] / "foreign.safetensors"), "not an attrscope result", model=False),
    api("top with k a string", lambda m, t, f: Scores(values={"heads": torch.zeros(1, 2, 3)}).top(
        "heads", "3"), "k must be", model=False),
]


# -- every numeric option of every command at 0 (where 0 is out of range), negative, huge and
# non-numeric: generated from the commands themselves, so a new numeric option is covered.
REQUIRED = {"path": "--component 0.1", "counterfactual": "--component 0.1 --prompt a --answer b "
            "--distractor c"}


def numeric_option_cases() -> list[Case]:
    import typer.main

    from attrscope.cli.options import NUMBER_RANGES

    cases = []
    for command_name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            if param.name not in NUMBER_RANGES:
                continue
            option = param.opts[0]
            least, exclusive = NUMBER_RANGES[param.name]
            values = {"-1": f"{option}: -1", "1e30" if "float" in str(param.type_descriptor)
                      else "10" + "0" * 30: "give a finite number",
                      "abc": f"(got {option} 'abc')"}
            if least > 0 or exclusive:
                values["0"] = f"{option}: 0"
            start = f"{command_name} {REQUIRED.get(command_name, '')}".split()
            arguments = (["{dir}/good.safetensors"] if command_name == "show" else [])
            for value, expected in values.items():
                line = " ".join([*start, *arguments, f"{option}={value}"] +
                                (["--out", "{out}"] if any(q.name == "out" for q in
                                                           command.params) else []))
                cases.append(cli(f"{command_name} {option}={value}", line, expected))
    return cases


CASES += numeric_option_cases()


@pytest.fixture
def no_model_loading(monkeypatch):
    """Model loading fails the row: its input must be refused before any model is loaded."""
    import attrscope.models

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(attrscope.models, "_boot_local", no_loading)


def assert_nothing_partial(folder: Path) -> None:
    """No temporary file under ``folder``, and every result or chunk file there whole and
    verified (a chunk kept by an interrupted run is whole: it is not partial)."""
    from attrscope.scores import read_verified

    if not folder.exists():
        return
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    for path in folder.rglob("*.safetensors"):
        read_verified(path)  # raises on a truncated or corrupt file


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_or_fault_ends_in_one_line_naming_it(case, files, random_model, random_task,
                                                       tmp_path, monkeypatch, request):
    out = tmp_path / "out"
    expected = " ".join(case.expected.format(**files, out=out).split())
    if not case.model:
        request.getfixturevalue("no_model_loading")
    if case.kind == "api":
        with pytest.raises(Exception) as raised:
            case.spec(random_model, random_task, files)
        message = str(raised.value)
        assert not isinstance(raised.value, AssertionError), message
        assert "\n" not in message.strip() and expected in message, message
        assert_nothing_partial(tmp_path)
        return
    if case.kind == "cli":
        result = CliRunner().invoke(app, case.spec.format(**files, out=out).split())
        code, output = result.exit_code, result.output
    else:
        code, output = case.spec(files, out, monkeypatch)
    assert code == case.exit, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if expected in " ".join(line.split())]
    assert len(lines) == 1, output  # the message, named in one line
    assert sum(line.startswith("error:") for line in output.splitlines()) <= 1, output
    assert "AssertionError" not in output, output  # e.g. a model loaded before the refusal
    assert_nothing_partial(out)
    if not case.model:
        assert not out.exists(), sorted(out.rglob("*"))  # refused before anything was written


def test_the_table_has_at_least_sixty_rows_of_every_kind():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.kind for c in CASES} == {"cli", "api", "fault"}
    commands = {c.spec.split()[0] for c in CASES if c.kind == "cli"}
    assert {"attribute", "compare", "edges", "path", "counterfactual", "show", "sweep",
            "shard"} <= commands
    assert sum(not c.model for c in CASES) > len(CASES) / 2  # most fail before loading a model


def test_every_row_is_listed_in_the_docs():
    listed = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    numeric = {c.id for c in numeric_option_cases()}
    missing = [c.id for c in CASES if c.id not in numeric and f"| {c.id} |" not in listed]
    for case in numeric:  # listed per command: | command | `--option`, ... |
        command, option = case.split("=")[0].split(" ", 1)
        row = next((line for line in listed.splitlines() if line.startswith(f"| {command} |")), "")
        if f"`{option}`" not in row:
            missing.append(case)
    assert not missing, f"rows not in docs/errors.md: {missing}"


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, files,
                                                                       tmp_path):
    import attrscope.api as api

    def refuse(*args, **kwargs):
        raise RuntimeError("sliding-window attention is not supported by edge methods")

    monkeypatch.setattr(api, "attribute_edges", refuse)
    line = ["edges", "--model", str(files["model"]), "--n", "2", "--out", str(tmp_path / "e")]
    result = CliRunner().invoke(app, line)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("error: RuntimeError: sliding-window attention is not supported by edge methods "
            "(run 'attrscope --debug ...' for the traceback)") in result.output
    debug = CliRunner().invoke(app, ["--debug", *line])
    assert isinstance(debug.exception, RuntimeError)  # --debug lets the exception through


# -- fuzzing the command line end to end --------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Option values, valid and not, as a user might type them (the embedded model: 4 layers).
FUZZ_OPTIONS = {
    "--n": ["1", "2", "0", "-3", "x", "1e3", "99999999999999"],
    "--method": ["atp", "ap", "ig", "atp,ig", "eap", "magic", "", "ap,,atp"],
    "--direction": ["noising", "denoising", "sideways", "noising,denoising"],
    "--components": ["heads", "neurons", "heads,neurons", "edges", ""],
    "--max-memory": ["1GB", "1KB", "lots", "0", "-1MB", "infGB"],
    "--max-batch-rows": ["1", "3", "0", "-2", "a"],
    "--n-steps": ["1", "2", "0", "-1"],
    "--top": ["1", "3", "0", "-1"],
    "--normalize": ["gap", "gap-batch", "gaps"],
    "--units": ["heads=0:2", "neurons=0", "heads=99", "heads=a", "neurons=0:99999999999"],
    "--seed": ["0", "7", "-1", "x"],
    "--dtype": ["float32", "float64", "float8"],
    "--task": ["ioi", "ioj", "/no/such/task.csv"],
    "--metric": ["logit_diff", "prob_diff", "nope"],
}
FUZZ = st.dictionaries(st.sampled_from(sorted(FUZZ_OPTIONS)), st.just(None), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: st.sampled_from(FUZZ_OPTIONS[k]) for k in keys}))


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=FUZZ)
def test_random_option_combinations_run_or_fail_in_one_line(options, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz")
    options = {"--n": "2", "--method": "atp", "--components": "heads", **options}
    line = ["attribute", "--no-progress", "--out", str(out)]
    for option, value in options.items():
        line += [f"{option}={value}"]  # = keeps values such as -3 from reading as options
    result = CliRunner().invoke(app, line)
    errors = [entry for entry in result.output.splitlines() if entry.startswith("error:")]
    assert "Traceback" not in result.output, result.output
    if result.exit_code == 0:
        assert not errors and list(out.glob("results/*.safetensors")), result.output
    else:
        # bad input: exit 2 and one line; exit 1 would be an unexpected exception (a bug)
        assert result.exit_code == 2 and len(errors) == 1, (line, result.output)
    assert_nothing_partial(out)


# -- the Done-when check: SIGTERM during compare, then the same command --------------------------
def _compare_line(model: Path, out: Path) -> list[str]:
    return ["compare", "--model", str(model), "--n", "3", "--method", "ap,atp", "--components",
            "heads", "--n-boot", "10", "--n-random", "3", "--no-progress", "--out", str(out)]


def _same_tensors(a: Scores, b: Scores) -> bool:
    tensors = lambda s: {**{f"v.{k}": v for k, v in s.values.items()},  # noqa: E731
                         **{f"e.{k}": v for k, v in s.extras.items()}}
    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_sigterm_during_compare_then_the_same_command_is_bit_identical(random_model_dir,
                                                                       tmp_path, monkeypatch):
    """The process running ``compare`` receives SIGTERM (from itself, once ap's first chunk is
    written: a scheduler's signal at a known point, without a second process's start-up)."""
    from attrscope.checkpoint import Checkpoint

    reference, out = tmp_path / "reference", tmp_path / "terminated"
    done = CliRunner().invoke(app, _compare_line(random_model_dir, reference))
    assert done.exit_code == 0, done.output

    put, sent = Checkpoint.put, []

    def put_then_terminate(self, name, tensors):
        put(self, name, tensors)
        if not sent:
            sent.append(name)
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(Checkpoint, "put", put_then_terminate)
        stopped = CliRunner().invoke(app, _compare_line(random_model_dir, out))
    assert sent and stopped.exit_code == 128 + signal.SIGTERM, stopped.output
    assert "Traceback" not in stopped.output
    kept = [line for line in stopped.output.splitlines()
            if line.startswith("terminated (SIGTERM): ")]
    assert len(kept) == 1 and "1 finished chunk(s)" in kept[0] and str(out) in kept[0], kept
    assert not (out / "tables").exists()  # stopped before the report
    assert_nothing_partial(out)

    again = CliRunner().invoke(app, _compare_line(random_model_dir, out))
    assert again.exit_code == 0, again.output
    assert "resuming the interrupted run from 1 finished chunk(s)" in again.output
    results = sorted(p.name for p in (reference / "results").glob("*.safetensors"))
    assert results and results == sorted(p.name for p in (out / "results").glob("*.safetensors"))
    for name in results:
        assert _same_tensors(Scores.load(reference / "results" / name),
                             Scores.load(out / "results" / name)), name
    tables = sorted(p.name for p in (reference / "tables").glob("*.csv"))
    assert tables and tables == sorted(p.name for p in (out / "tables").glob("*.csv"))
    for name in tables:
        assert (reference / "tables" / name).read_bytes() == (out / "tables" / name).read_bytes(), name
