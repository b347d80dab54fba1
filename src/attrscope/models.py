"""Loading models as TransformerLens 4 ``TransformerBridge`` objects.

- ``None``: the embedded default model shipped in this package (a small GPT-2-architecture model
  trained by ``scripts/train_default_model.py`` on synthetic IOI data); no network needed.
- ``"attrscope-tasks"``: the embedded task-suite model (same architecture, trained by
  ``scripts/train_task_model.py`` on six synthetic tasks: IOI, greater-than, capital-country,
  gender, subject-verb agreement, hypernymy); no network needed.
- a local folder in Hugging Face format: loaded offline.
- any other string: a Hugging Face / TransformerLens model name (e.g. ``"gpt2"``), loaded from the
  hub (needs network access to it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
DEFAULT_MODEL_NAME = "attrscope-default-ioi"
TASK_MODEL_DIR = Path(__file__).parent / "task_model"
TASK_MODEL_NAME = "attrscope-tasks"

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}.")
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"Invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was requested but CUDA is not available here.")
    return dev


def _boot_local(folder: Path, name: str, device: torch.device, dtype: torch.dtype):
    from transformer_lens import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"{folder} is not a Hugging Face model folder (no config.json). Save one with "
            "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)."
        )
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    bridge = TransformerBridge.boot_transformers(
        str(folder), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    bridge.cfg.model_name = name
    return bridge


def load_model(name_or_path: str | None = None, device: str | torch.device | None = "cpu",
               dtype: str | torch.dtype = "float32", compute_dtype: str | torch.dtype | None = None,
               cache_device: str | torch.device | None = None):
    """Return a ready ``TransformerBridge`` in eval mode (see the module docstring).

    compute_dtype: the dtype attrscope's fast forwards compute in (default: float32 for a
    float16 / bfloat16 model, see :func:`attrscope.arch.compute_dtype`); cache_device: where
    their run caches live (see :func:`attrscope.arch.set_cache_device`)."""
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    compute = None if compute_dtype is None else resolve_dtype(compute_dtype)
    caches = None if cache_device is None else resolve_device(cache_device)
    if name_or_path is None:
        if not (DEFAULT_MODEL_DIR / "config.json").exists():
            raise FileNotFoundError(
                f"The embedded model is missing from {DEFAULT_MODEL_DIR}; reinstall attrscope or "
                "run scripts/train_default_model.py."
            )
        model = _boot_local(DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, dev, dt)
    elif name_or_path == TASK_MODEL_NAME:
        if not (TASK_MODEL_DIR / "config.json").exists():
            raise FileNotFoundError(
                f"The embedded task-suite model is missing from {TASK_MODEL_DIR}; reinstall "
                "attrscope or run scripts/train_task_model.py."
            )
        model = _boot_local(TASK_MODEL_DIR, TASK_MODEL_NAME, dev, dt)
    elif Path(name_or_path).expanduser().is_dir():
        folder = Path(name_or_path).expanduser().resolve()
        model = _boot_local(folder, str(folder), dev, dt)
    else:
        from transformer_lens import TransformerBridge

        try:
            model = TransformerBridge.boot_transformers(name_or_path, device=dev, dtype=dt)
        except OSError as e:
            raise OSError(
                f"Could not load model {name_or_path!r} from the Hugging Face hub ({e}). Without "
                "network access, pass a local Hugging Face folder, or no model for the embedded one."
            ) from e
    model.eval()
    _sizes_from_weights(model)
    from .arch import set_cache_device, set_compute_dtype

    set_compute_dtype(model, compute)
    set_cache_device(model, caches)
    return model


def _sizes_from_weights(model) -> None:
    """Correct the bridge's configured sizes from the weights where they differ (OPT's config
    gives d_mlp = 4 d_model whatever its ffn_dim): unit counts come from these sizes."""
    from .arch import Unsupported, adapter_for, model_dtype

    try:
        adapter = adapter_for(model, model_dtype(model))  # sizes only: no compute-dtype copy
    except Unsupported:
        return
    model.cfg.d_mlp = adapter.d_mlp


def default_model_info() -> dict:
    """Training record of the embedded model (seed, hyper-parameters, measured quality)."""
    path = DEFAULT_MODEL_DIR / "training.json"
    return json.loads(path.read_text()) if path.exists() else {}
