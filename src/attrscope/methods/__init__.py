"""Every attribution method: importing this package registers them all in
:mod:`attrscope.registry` (node methods here, edge methods in :mod:`attrscope.edges.methods`) and
lists them in the fixed :data:`ORDER` (methods registered later follow, by name)."""

from __future__ import annotations

from ..registry import (COMMON_HELP, GRANULARITIES, METHODS, SETTING_TYPES, DeclaredSetting,  # noqa: F401
                        Method, declared_settings, get_method, methods_of, register)
from . import activation_patching, attribution_patching, integrated_gradients  # noqa: E402,F401
from . import atp_star  # noqa: E402,F401
from ..edges import methods as _edge_methods  # noqa: E402,F401  (registers the edge methods)

# The order every listing, command and report shows the methods in, whatever the import order.
ORDER = ("ap", "atp", "ig", "atpstar", "eap", "eap-ig", "eap-ig-act", "exact")
_listed = {name: METHODS.pop(name) for name in ORDER if name in METHODS}
METHODS.update({**_listed, **dict(sorted(METHODS.items()))})

__all__ = ["METHODS", "Method", "register", "get_method", "methods_of", "declared_settings"]
