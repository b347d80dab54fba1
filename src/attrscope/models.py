"""Loading models as TransformerLens 4 ``TransformerBridge`` objects.

- ``None``: the embedded default model shipped in this package (a small GPT-2-architecture model
  trained by ``scripts/train_default_model.py`` on synthetic IOI data); no network needed.
- ``"attrscope-tasks"``: the embedded task-suite model (same architecture, trained by
  ``scripts/train_task_model.py`` on six synthetic tasks: IOI, greater-than, capital-country,
  gender, subject-verb agreement, hypernymy); no network needed.
- a local folder in Hugging Face format: loaded offline.
- any other string: a Hugging Face / TransformerLens model name (e.g. ``"gpt2"``), loaded from the
  hub (needs network access to it).

Model objects are accepted too (see :func:`as_bridge`): a loaded Hugging Face
``PreTrainedModel`` (its tokenizer passed as ``tokenizer=`` or found from its ``name_or_path``
folder), an nnsight ``LanguageModel`` (its underlying Hugging Face model is used) or a
``TransformerBridge`` (used as it is).
"""

from __future__ import annotations

import json
import os
import warnings
import weakref
from pathlib import Path

import torch

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
DEFAULT_MODEL_NAME = "attrscope-default-ioi"
TASK_MODEL_DIR = Path(__file__).parent / "task_model"
TASK_MODEL_NAME = "attrscope-tasks"
PLANTED_MODEL_DIR = Path(__file__).parent / "planted_model"
PLANTED_MODEL_NAME = "attrscope-planted"

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


class UnsupportedModelError(ValueError):
    """A model attrscope cannot attribute: not a decoder-only causal language model, a config
    its weights disagree with, or a feature no forward of attrscope runs correctly. Raised by
    :func:`check_model_config` before any computation; the message names the feature."""


# Features of a family that neither the block adapters nor the TransformerLens fallback run
# correctly (the fallback crashes on OPT-350m's projected embedding and misreads its d_mlp):
# (model_type, config test, what the feature is). Refused by every method and command.
UNRUNNABLE_FEATURES = (
    ("opt", lambda c: c.get("do_layer_norm_before") is False,
     "post-LayerNorm blocks (do_layer_norm_before=False, the OPT-350m style)"),
    ("opt", lambda c: c.get("word_embed_proj_dim") not in (None, c.get("hidden_size")),
     "a projected embedding (word_embed_proj_dim {word_embed_proj_dim} != hidden_size "
     "{hidden_size}, the OPT-350m style)"),
)


def check_model_config(config: dict, source: str) -> None:
    """The one model check, made before any computation on every model (folder, hub name or
    object): ``config`` (a ``config.json`` as a dict) must describe a decoder-only causal
    language model without a feature in :data:`UNRUNNABLE_FEATURES`. ``source`` names the model
    in the message. Raises :class:`UnsupportedModelError`."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    model_type = config.get("model_type")
    archs = ", ".join(config.get("architectures") or []) or "no architectures listed"
    if (config.get("is_encoder_decoder") or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES):
        raise UnsupportedModelError(
            f"{source} is a {model_type!r} model ({archs}), not a decoder-only causal language "
            "model; attrscope attributes next-token predictions of decoder-only models (GPT-2, "
            "GPT-NeoX, Llama, Qwen, Gemma, OPT, ...).")
    for family, present, feature in UNRUNNABLE_FEATURES:
        if model_type == family and present(config):
            raise UnsupportedModelError(
                f"{source} has {feature.format(**config)}: not supported by any method or "
                "command of attrscope.")


# Names (suffixes) of the token embedding matrix [vocab, d] in the families' weights.
_EMBEDDING_NAMES = ("wte.weight", "embed_tokens.weight", "embed_in.weight",
                    "word_embeddings.weight")


def _check_config_matches_weights(folder: Path, config: dict, weights: list[Path]) -> None:
    """Refuse a config whose vocab_size disagrees with the token embedding in the weights
    (read from the safetensors headers, nothing loaded), naming both values."""
    from safetensors import safe_open

    vocab = config.get("vocab_size")
    if vocab is None:
        return
    for file in (f for f in weights if f.suffix == ".safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name.endswith(_EMBEDDING_NAMES):
                    rows = f.get_slice(name).get_shape()[0]
                    if rows != vocab:
                        raise UnsupportedModelError(
                            f"{folder}: config.json and the weights disagree on vocab_size: "
                            f"config.json says {vocab}, {file.name} has {rows} rows in {name}; "
                            "save the model and its config together (model.save_pretrained).")
                    return


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
    config = _check_config(folder / "config.json")
    check_model_config(config, f"model folder {folder}")
    weights = sorted(f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern))
    if not weights:
        raise ModelFolderError(f"model folder {folder} has no weights (model.safetensors or "
                               "pytorch_model.bin).")
    for file in weights:
        _check_weights_file(file)
    _check_config_matches_weights(folder, config, weights)
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise ModelFolderError(f"model folder {folder} has no tokenizer (none of "
                               f"{', '.join(TOKENIZER_FILES)}); save one with "
                               "tokenizer.save_pretrained(folder).")
    return folder.resolve()


def _check_config(config: Path) -> dict:
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
    return parsed


def check_loaded_model(model, source: str) -> None:
    """:func:`check_model_config` on a loaded model (a bridge or a Hugging Face model)."""
    hf = getattr(model, "original_model", model)
    config = getattr(hf, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        check_model_config(config.to_dict(), source)


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


def load_model(name_or_path=None, device: str | torch.device | None = "cpu",
               dtype: str | torch.dtype = "float32", *, tokenizer=None,
               compute_dtype: str | torch.dtype | None = None,
               cache_device: str | torch.device | None = None):
    """Return a ready ``TransformerBridge`` in eval mode (see the module docstring).

    ``name_or_path`` may also be a model object (see :func:`as_bridge`): a Hugging Face model is
    moved to ``device`` and cast to ``dtype``; a ``TransformerBridge`` is returned as it is.
    compute_dtype: the dtype attrscope's fast forwards compute in (default: float32 for a
    float16 / bfloat16 model, see :func:`attrscope.arch.compute_dtype`); cache_device: where
    their run caches live (see :func:`attrscope.arch.set_cache_device`)."""
    if not isinstance(name_or_path, (str, os.PathLike, type(None))):
        return as_bridge(name_or_path, tokenizer=tokenizer, device=device, dtype=dtype)
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
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
    elif name_or_path == PLANTED_MODEL_NAME:  # hand-set weights, ground_truth.json beside them
        model = _boot_local(PLANTED_MODEL_DIR, PLANTED_MODEL_NAME, dev, dt)
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
    check_loaded_model(model, f"model {name_or_path!r}")  # a hub model: its config is known now
    model.eval()
    from .arch import set_cache_device, set_compute_dtype

    set_compute_dtype(model, compute)
    set_cache_device(model, caches)
    return model


ACCEPTED_MODELS = (
    "None (the embedded model), a model name or a local Hugging Face folder (str or Path), a "
    "loaded Hugging Face PreTrainedModel (tokenizer= or a name_or_path folder with one), an "
    "nnsight LanguageModel, or a TransformerLens TransformerBridge"
)
# The bridge built around each Hugging Face model, so that load_task(hf) and attribute(hf, ...)
# share one instead of wrapping the model twice; weak, and kept here rather than on the user's
# model object (a bridge holds its model, so the value is weak too: the entry lives as long as
# someone holds the bridge).
_BRIDGES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def as_bridge(model, tokenizer=None, device: str | torch.device | None = None,
              dtype: str | torch.dtype | None = None):
    """The ``TransformerBridge`` every attrscope function works on, from any accepted model:

    - a ``TransformerBridge``: returned as it is;
    - ``None``, a ``str`` or a path: :func:`load_model` (embedded model, folder or hub name);
    - a Hugging Face ``PreTrainedModel``: wrapped in a bridge, in place (no copy of the weights;
      kept on its device and dtype unless ``device``/``dtype`` are given). Its tokenizer is
      ``tokenizer``, else loaded from ``model.name_or_path``. The bridge is remembered on the
      model, so passing the same object again reuses it;
    - an nnsight ``LanguageModel`` (anything with a ``_model`` attribute holding a Hugging Face
      model): its underlying model, with its ``tokenizer`` unless one is passed.

    Anything else raises ``TypeError`` listing what is accepted.
    """
    from transformer_lens import TransformerBridge
    from transformers import PreTrainedModel

    if isinstance(model, TransformerBridge):
        check_loaded_model(model, f"model {model.cfg.model_name!r}")
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return load_model(model, device="cpu" if device is None else device,
                          dtype="float32" if dtype is None else dtype)
    inner = getattr(model, "_model", None)
    if not isinstance(model, PreTrainedModel) and isinstance(inner, PreTrainedModel):
        tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        model = inner  # an nnsight LanguageModel (duck-typed: nnsight is not a dependency)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"Cannot use a {type(model).__module__}.{type(model).__name__} as a "
                        f"model; attrscope accepts {ACCEPTED_MODELS}.")
    check_loaded_model(model, f"the {type(model).__name__} from "
                              f"{getattr(model, 'name_or_path', '') or 'memory'!r}")
    return _bridge_of_hf(model, tokenizer, device, dtype)


def _bridge_of_hf(hf_model, tokenizer, device, dtype):
    """A bridge around a loaded Hugging Face causal LM (the one made before, if any)."""
    from transformer_lens import TransformerBridge

    cached = _BRIDGES.get(hf_model)
    cached = cached() if cached is not None else None
    if cached is not None and (tokenizer is None or tokenizer is cached.tokenizer):
        if device is None and dtype is None:
            return cached
        moves = {"device": resolve_device(device) if device is not None else None,
                 "dtype": resolve_dtype(dtype) if dtype is not None else None}
        return cached.to(**{k: v for k, v in moves.items() if v is not None},
                         print_details=False)
    name = str(getattr(hf_model, "name_or_path", "") or type(hf_model).__name__)
    if tokenizer is None:
        tokenizer = _tokenizer_for(hf_model, name)
    if device is not None or dtype is not None:  # boot_transformers leaves a given model as is
        hf_model.to(**{k: v for k, v in (("device", device and resolve_device(device)),
                                         ("dtype", dtype and resolve_dtype(dtype))) if v})
    param = next(hf_model.parameters())
    dev, dt = param.device, param.dtype
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer,
                                                 device=dev, dtype=dt)
    bridge.cfg.model_name = name
    bridge.eval()
    _BRIDGES[hf_model] = weakref.ref(bridge)
    return bridge


def _tokenizer_for(hf_model, name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=Path(name).is_dir())
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(
            f"No tokenizer found for the {type(hf_model).__name__} from {name!r} ({e}); pass "
            "one: attrscope.load_model(model, tokenizer=tokenizer) or attribute(as_bridge("
            "model, tokenizer=tokenizer), ...)."
        ) from None


def default_model_info() -> dict:
    """Training record of the embedded model (seed, hyper-parameters, measured quality)."""
    path = DEFAULT_MODEL_DIR / "training.json"
    return json.loads(path.read_text()) if path.exists() else {}
