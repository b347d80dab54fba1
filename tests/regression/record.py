"""Record every method's scores as regression files (run once, before an engine change):

    PYTHONPATH=src python tests/regression/record.py

Each file ``<model>.safetensors`` holds, for every method and direction, the scores of the
embedded IOI model and of two tiny random family models (GPT-NeoX: parallel blocks, partial
rotary; Gemma-2: post-norms, soft-capping, sliding window, grouped-query attention), all in
float64 so that the comparison (tests/test_regression.py, 1e-6) is far above any machine's
rounding. ``CASES`` says what is recorded; the test recomputes the same."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

MODELS = ("embedded", "gpt_neox", "gemma2")
N_PROMPTS = 4
NODE = {"ap": {}, "atp": {}, "ig": {"n_steps": 4}, "atpstar": {}}
EDGE = {"eap": {}, "eap-ig": {"n_steps": 3}, "eap-ig-act": {"n_steps": 3},
        "eap-ig-act/eap-ig": {"n_steps": 3, "definition": "eap-ig"}, "exact": {}}
DIRECTIONS = ("denoising", "noising")


def load(name: str, folder: Path | None = None):
    import attrscope

    if name == "embedded":
        return attrscope.load_model(dtype="float64")
    from families import build

    build(name, folder)
    return attrscope.load_model(str(folder), dtype="float64")


def node_settings(method: str, model) -> dict:
    settings = dict(NODE[method])
    if method == "ap":  # every 16th neuron keeps the run short; every head
        settings["units"] = {"neurons": list(range(0, int(model.cfg.d_mlp), 16))}
    return settings


def compute(model) -> dict[str, torch.Tensor]:
    """``{"<method>/<direction>/<kind>": scores}`` for every case, and the run metrics."""
    import attrscope

    task = attrscope.load_task("ioi", model, n=N_PROMPTS, seed=0)
    out = {}
    for direction in DIRECTIONS:
        for method in NODE:
            s = attrscope.attribute(model, task, method, direction, ("heads", "neurons"),
                                    show_progress=False, **node_settings(method, model))
            for kind, value in s.values.items():
                out[f"{method}/{direction}/{kind}"] = value.double()
            out[f"metric.run/{direction}"] = s.extras["metric.run"].double()
        for case, settings in EDGE.items():
            method = case.split("/")[0]
            s = attrscope.attribute(model, task, method, direction, "edges",
                                    show_progress=False, **settings)
            out[f"{case}/{direction}/edges"] = s.values["edges"].double()  # [n, n_edges]
    return {k: v.contiguous() for k, v in out.items()}


def recorded(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(HERE / f"{name}.safetensors"))


def main() -> None:
    for name in MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            values = compute(load(name, Path(tmp)))
        save_file(values, str(HERE / f"{name}.safetensors"))
        print(name, len(values), "entries")


if __name__ == "__main__":
    main()
