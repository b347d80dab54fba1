"""Attribution methods, registered by name with one signature.

A method is ``fn(runner, kinds, settings, show_progress) -> (values, extras)`` where
``values[kind.name]`` is ``[n_samples, n_layers, n_units]``. Register it with :func:`register`,
giving every setting it accepts a default; :func:`attrscope.attribute` validates settings against
those defaults, so the CLI and the analyses never special-case a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

MethodFn = Callable[..., tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    summary: str
    sign: str
    defaults: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, Method] = {}


def register(name: str, summary: str, sign: str, **defaults: Any) -> Callable[[MethodFn], MethodFn]:
    def decorate(fn: MethodFn) -> MethodFn:
        if name in METHODS:
            raise ValueError(f"Method {name!r} is registered twice.")
        METHODS[name] = Method(name, fn, summary, sign, dict(defaults))
        return fn

    return decorate


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; available: {sorted(METHODS)}.")
    return METHODS[name]


# Importing the modules registers the methods.
from . import activation_patching, attribution_patching, integrated_gradients  # noqa: E402,F401
from . import atp_star  # noqa: E402,F401  (after atp, so it is listed after it)

__all__ = ["METHODS", "Method", "register", "get_method"]
