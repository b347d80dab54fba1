"""Command-line options generated from the methods' declared settings.

:func:`with_method_settings` gives a command one option per setting that any registered method
of the chosen granularities declares (``--n-steps``, ``--qk-fix/--no-qk-fix``, ``--units``, ...),
typed from the registry, defaulting to "the method's own default". The command receives the
options the user gave as ``method_settings``; :func:`settings_for` picks one method's share, and
:func:`check_given` refuses a setting that none of the chosen methods takes. No method is named
here: a new method's settings appear on the command line by registering it.
"""

from __future__ import annotations

import functools
import inspect
from typing import Optional, Sequence

import typer

from ..methods import METHODS, declared_settings
from ..registry import RENAMED_SETTINGS, current_names

# Settings given as text on the command line and parsed before they reach the method.
PARSERS = {"units": "parse_unit_spec"}


def _option(setting) -> typer.models.OptionInfo:
    flag = "--" + setting.name.replace("_", "-")
    if setting.type is bool:
        flag = f"{flag}/--no-{setting.name.replace('_', '-')}"
    who = ", ".join(setting.methods)
    return typer.Option(None, flag, help=f"{who}: {setting.help}. Default: each method's own.")


def with_method_settings(*granularities: str):
    """Add the declared settings of the methods of ``granularities`` as options of a command
    whose function takes ``method_settings: dict``."""
    declared = declared_settings(granularities)
    # a renamed setting keeps its old option, hidden, under the old name (current_names warns)
    old_names = {old: declared[new] for old, new in RENAMED_SETTINGS.items() if new in declared}

    def decorate(fn):
        signature = inspect.signature(fn)
        params = [p for p in signature.parameters.values() if p.name != "method_settings"]
        for setting in declared.values():
            params.append(inspect.Parameter(setting.name, inspect.Parameter.KEYWORD_ONLY,
                                            default=_option(setting),
                                            annotation=Optional[setting.type]))
        for old, setting in old_names.items():
            flag = "--" + old.replace("_", "-")
            params.append(inspect.Parameter(old, inspect.Parameter.KEYWORD_ONLY,
                                            default=typer.Option(None, flag, hidden=True),
                                            annotation=Optional[setting.type]))

        @functools.wraps(fn)
        def command(**kwargs):
            given = {name: kwargs.pop(name) for name in [*declared, *old_names]}
            given = current_names({k: v for k, v in given.items() if v is not None})
            return fn(**kwargs, method_settings=given)

        command.__signature__ = signature.replace(parameters=params)
        return command

    return decorate


def parse_given(given: dict) -> dict:
    """The given settings with text forms parsed (``--units`` to ``{kind: indices}``)."""
    from .. import components

    return {k: getattr(components, PARSERS[k])(v) if k in PARSERS else v for k, v in given.items()}


def check_given(given: dict, methods: Sequence[str]) -> None:
    """Refuse settings that none of ``methods`` takes, naming the option and who takes it."""
    for key in given:
        if not any(key in METHODS[m].defaults for m in methods):
            takers = [m.name for m in METHODS.values() if key in m.defaults]
            raise typer.BadParameter(
                f"a setting of {', '.join(takers)}, none of which is among the chosen methods "
                f"({', '.join(methods)}).", param_hint="--" + key.replace("_", "-"))


def settings_for(method: str, given: dict) -> dict:
    """The share of the given settings that ``method`` declares."""
    return {k: v for k, v in given.items() if k in METHODS[method].defaults}
