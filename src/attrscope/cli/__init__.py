"""The ``attrscope`` command line: a thin shell over the API, one module per command.

:mod:`.app` holds the application and its one error handler, :mod:`.options` the options and
steps the commands share, :mod:`.settings` the options generated from the method registry.
Importing this package registers every command on :data:`app`.
"""

from __future__ import annotations

# in the order 'attrscope --help' lists the commands
from . import attribute, compare, listing  # noqa: F401,I001
from . import edges, path, counterfactual, scale, edit  # noqa: F401,I001
from .app import app


def main() -> None:  # pragma: no cover - console entry point
    app()


__all__ = ["app", "main"]
