"""The registry of attribution methods, node and edge alike, by name with one signature.

It declares and imports no method: importing :mod:`attrscope.methods` registers them all.

A method is ``fn(run, kinds, settings, show_progress) -> (values, extras)``:

- ``granularity="node"``: ``run`` is an :class:`attrscope.engine.Runner`, ``values[kind.name]``
  is ``[n_samples, n_layers, n_units]``;
- ``granularity="edge"``: ``run`` is an :class:`attrscope.edges.methods.EdgeRun`, ``kinds`` is
  empty, ``values["edges"]`` is ``[n_samples, n_edges]`` (``[n_samples, n_edges, n_pos]`` with
  positions).

Register it with :func:`register`, giving every setting it accepts a default (and, in
``help``, a line for the command line) and, in ``passes``, its cost in sample-passes (one of
:mod:`attrscope.estimate`'s cost functions); :func:`attrscope.attribute` validates settings
against those defaults, so the CLI and the analyses never special-case a method.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

MethodFn = Callable[..., tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]


GRANULARITIES = ("node", "edge")
# Settings shared by several methods: what they mean, for the command line.
COMMON_HELP = {
    "max_memory": "peak memory the batched passes may use, e.g. 4GB or 512MiB (default: half "
                  "the memory free on the device)",
    "max_batch_rows": "rows (patched copies x samples) per pass, overriding max_memory",
}


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    summary: str
    sign: str
    defaults: dict[str, Any] = field(default_factory=dict)
    granularity: str = "node"
    help: dict[str, str] = field(default_factory=dict)
    # sample-passes of a run: passes(settings, shape, n, kinds) (see attrscope.estimate)
    passes: Callable[..., int] | None = None
    # check(resolved settings): raises ValueError naming a bad setting, before any run
    check: Callable[[dict], None] | None = None

    def setting_help(self, key: str) -> str:
        return self.help.get(key) or COMMON_HELP.get(key, "")


METHODS: dict[str, Method] = {}


def register(name: str, summary: str, sign: str, granularity: str = "node",
             help: dict[str, str] | None = None, passes: Callable[..., int] | None = None,
             check: Callable[[dict], None] | None = None, **defaults: Any
             ) -> Callable[[MethodFn], MethodFn]:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")

    def decorate(fn: MethodFn) -> MethodFn:
        if name in METHODS:
            raise ValueError(f"Method {name!r} is registered twice.")
        METHODS[name] = Method(name, fn, summary, sign, dict(defaults), granularity, dict(help or {}),
                               passes, check)
        return fn

    return decorate


# The type of settings whose default is None (the rest take their default's type).
SETTING_TYPES = {"units": str, "max_memory": str, "max_batch_rows": int, "screen": str}


@dataclass(frozen=True)
class DeclaredSetting:
    """A setting as the command line offers it: its type, help and the methods that take it."""

    name: str
    type: type
    help: str
    methods: tuple[str, ...]


def declared_settings(granularities: tuple[str, ...] = GRANULARITIES) -> dict[str, DeclaredSetting]:
    """Every setting declared by the methods of ``granularities``, by name."""
    out: dict[str, DeclaredSetting] = {}
    for m in METHODS.values():
        if m.granularity not in granularities:
            continue
        for key, default in m.defaults.items():
            kind = SETTING_TYPES.get(key, type(default))
            known = out.get(key)
            if known is not None and known.type is not kind:
                raise TypeError(f"Setting {key!r} has type {kind.__name__} in {m.name!r} but "
                                f"{known.type.__name__} in {known.methods}.")
            methods = (known.methods if known else ()) + (m.name,)
            out[key] = DeclaredSetting(key, kind, (known and known.help) or m.setting_help(key), methods)
    return out


# Settings renamed so that one thing has one name across methods: old name -> new name. The old
# name is still accepted, with a FutureWarning (shown to users, unlike a DeprecationWarning).
RENAMED_SETTINGS = {"steps": "n_steps"}


def current_names(given: dict, accepted=None) -> dict:
    """``given`` settings with renamed ones (:data:`RENAMED_SETTINGS`) under their new name
    (only where ``accepted``, the names a method takes, has the new one; None: everywhere),
    each rename warned about; a setting given under both names is refused."""
    out = dict(given)
    for old, new in RENAMED_SETTINGS.items():
        if old not in out or (accepted is not None and new not in accepted):
            continue
        if new in out:
            raise ValueError(f"Setting {old!r} is the old name of {new!r}; give only {new!r}.")
        warnings.warn(f"the setting {old!r} is now called {new!r} (the same name for every "
                      f"integration method); {old!r} will be removed.", FutureWarning,
                      stacklevel=3)
        out[new] = out.pop(old)
    return out


def check_method_settings(name: str, given: dict) -> dict:
    """``name``'s settings with ``given`` on top of its defaults, refused (ValueError naming the
    setting) if it has no such setting or its own check rejects them; before any run. Renamed
    settings are taken under their old name too (:func:`current_names`)."""
    spec = get_method(name)
    given = current_names(given, spec.defaults)
    unknown = sorted(set(given) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"Method {name!r} has no setting(s) {unknown}; its settings are {sorted(spec.defaults)}.")
    resolved = {**spec.defaults, **given}
    if spec.check is not None:
        spec.check(resolved)
    return resolved


def methods_of(granularity: str) -> dict[str, Method]:
    return {name: m for name, m in METHODS.items() if m.granularity == granularity}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; available: {sorted(METHODS)}.")
    return METHODS[name]


__all__ = ["METHODS", "Method", "register", "get_method", "methods_of", "declared_settings",
           "DeclaredSetting", "SETTING_TYPES", "COMMON_HELP", "GRANULARITIES", "RENAMED_SETTINGS",
           "current_names", "check_method_settings"]
