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
import os
import warnings
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


class ModelFolderError(ValueError):
    """A model path that cannot be loaded: missing, not a model folder, or unreadable weights.
    The message names the folder or file and what to do."""


WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.pt", "*.pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


def looks_like_path(name_or_path: str) -> bool:
    """Whether a --model value names a local path rather than a hub model: it exists, or starts
    like a path (``/``, ``./``, ``../``, ``~``) - hub names (``gpt2``, ``org/name``) do not."""
    return (Path(name_or_path).expanduser().exists()
            or name_or_path.startswith(("/", "./", "../", "~", ".\\"))
            or name_or_path in (".", ".."))


def check_model_folder(path: str | os.PathLike) -> Path:
    """Check, without loading it, that ``path`` is a readable Hugging Face model folder: it exists,
    is a folder, has a valid config.json, weights whose safetensors headers read (each file
    named if not) and tokenizer files. Returns the resolved folder; raises ModelFolderError."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelFolderError(f"model folder {folder} does not exist.")
    if not folder.is_dir():
        raise ModelFolderError(f"--model {folder} is a file; give the model's folder (with "
                               "config.json, weights and tokenizer files).")
    if not any(folder.iterdir()):
        raise ModelFolderError(f"model folder {folder} is empty; save a model there with "
                               "model.save_pretrained(folder) and tokenizer.save_pretrained(folder).")
    _check_config(folder / "config.json")
    weights = sorted(f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern))
    if not weights:
        raise ModelFolderError(f"model folder {folder} has no weights (model.safetensors or "
                               "pytorch_model.bin).")
    for file in weights:
        _check_weights_file(file)
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise ModelFolderError(f"model folder {folder} has no tokenizer (none of "
                               f"{', '.join(TOKENIZER_FILES)}); save one with "
                               "tokenizer.save_pretrained(folder).")
    return folder.resolve()


def _check_config(config: Path) -> None:
    if not config.exists():
        raise ModelFolderError(
            f"{config.parent} is not a Hugging Face model folder (no config.json). Save one with "
            "model.save_pretrained(folder) and tokenizer.save_pretrained(folder).")
    try:
        parsed = json.loads(config.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{config} is not valid JSON ({e}).") from None
    if not isinstance(parsed, dict) or "model_type" not in parsed:
        raise ModelFolderError(f"{config} has no model_type; it is not a transformers config.")


def _check_weights_file(file: Path) -> None:
    """Open a weights file far enough to know it is whole: a safetensors header (its tensor
    offsets must fit in the file), or a non-empty .bin/.pt."""
    if file.stat().st_size == 0:
        raise ModelFolderError(f"weights file {file} is empty.")
    if file.suffix != ".safetensors":
        return
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except Exception as e:  # SafetensorError, OSError: incomplete or overwritten header
        raise ModelFolderError(f"weights file {file} is corrupt or truncated "
                               f"({type(e).__name__}: {e}).") from None


def check_dtype_device(dtype: str | torch.dtype, device: str | torch.device | None) -> None:
    """Refuse unknown dtypes/devices; warn that float16 on the CPU is slow and imprecise."""
    dt, dev = resolve_dtype(dtype), resolve_device(device)
    if dt == torch.float16 and dev.type == "cpu":
        warnings.warn("float16 on the CPU is slow and loses precision (gradients and patching "
                      "differences underflow); use float32 or bfloat16 on the CPU.", stacklevel=2)


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
               dtype: str | torch.dtype = "float32"):
    """Return a ready ``TransformerBridge`` in eval mode (see the module docstring)."""
    dev, dt = resolve_device(device), resolve_dtype(dtype)
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
    elif looks_like_path(str(name_or_path)):
        folder = check_model_folder(name_or_path)
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
    return model


def default_model_info() -> dict:
    """Training record of the embedded model (seed, hyper-parameters, measured quality)."""
    path = DEFAULT_MODEL_DIR / "training.json"
    return json.loads(path.read_text()) if path.exists() else {}
