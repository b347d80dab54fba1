"""Every attribution method: importing this package registers them all in
:mod:`attrscope.registry` (node methods here, edge methods in :mod:`attrscope.edges.methods`), in
a fixed order: ap, atp, ig, atpstar, then the edge methods."""

from __future__ import annotations

from ..registry import (COMMON_HELP, GRANULARITIES, METHODS, SETTING_TYPES, DeclaredSetting,  # noqa: F401
                        Method, declared_settings, get_method, methods_of, register)
from . import activation_patching, attribution_patching, integrated_gradients  # noqa: E402,F401
from . import atp_star  # noqa: E402,F401  (after atp, so it is listed after it)
from ..edges import methods as _edge_methods  # noqa: E402,F401  (registers the edge methods)

__all__ = ["METHODS", "Method", "register", "get_method", "methods_of", "declared_settings"]
