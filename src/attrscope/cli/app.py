"""The ``attrscope`` Typer application: one error handler for every command (one line
``error: ...``, exit 2 for bad input and bad option values, 1 otherwise; ``--debug`` for the
traceback), the one option check before every command, one-line warnings, and what Ctrl-C or
SIGTERM kept (exit 130 / 143). The commands register themselves on :data:`app` in their own
modules."""

from __future__ import annotations

import functools
import os
import signal
import warnings
from pathlib import Path

import typer
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

SIGNS = (
    "Sign conventions: 'denoising' runs the corrupted prompt and patches in clean activations "
    "(a positive score means the component restores the clean behaviour); 'noising' runs the "
    "clean prompt and patches in corrupted activations (a negative score means the component is "
    "needed for the behaviour). Every score is a change of the task's metric (by default "
    "logit(answer) - logit(distractor); see 'attrscope tasks'), the answer being the clean "
    "prompt's."
)


# Errors that mean the input (or the environment) is wrong: said in one line, exit code 2.
BAD_INPUT = (ValueError, OSError, ImportError)


class _ErrorReportingGroup(TyperGroup):
    """Runs a command so that any exception ends in one line ``error: ...`` on stderr and a
    non-zero exit code (2 for bad input: ValueError/OSError, or ImportError of an optional
    dependency; 1 otherwise), and any warning in
    one line ``warning: ...``. ``attrscope --debug`` (or ATTRSCOPE_DEBUG=1) shows tracebacks."""

    def invoke(self, ctx):
        from ..checkpoint import Terminated, sigterm_as_interrupt

        debug = bool(ctx.params.get("debug")) or os.environ.get("ATTRSCOPE_DEBUG") == "1"
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _one_line_warning
            # the command name and its arguments (typer's vendored click keeps them private)
            args = [*getattr(ctx, "protected_args", getattr(ctx, "_protected_args", [])), *ctx.args]
            try:
                with sigterm_as_interrupt():  # a scheduler's SIGTERM ends a run like Ctrl-C
                    return super().invoke(ctx)
            except KeyboardInterrupt as e:
                terminated = isinstance(e, Terminated)
                typer.echo(self._interrupted(ctx, args, "terminated (SIGTERM)" if terminated
                                             else "interrupted"), err=True)
                raise typer.Exit(128 + signal.SIGTERM if terminated else 130) from None
            except UsageError as e:  # a bad option value: one line naming the option
                if debug:
                    raise
                typer.echo(f"error: {_usage_line(e, args)}", err=True)
                raise typer.Exit(e.exit_code) from None
            except Exception as e:
                # typer.Exit keeps typer's handling (typer vendors click since 0.20, so its
                # exception classes live in typer.* or click.*)
                if debug or type(e).__module__.split(".")[0] in ("typer", "click"):
                    raise
                typer.echo(f"error: {_describe(e)}", err=True)
                raise typer.Exit(2 if isinstance(e, BAD_INPUT) else 1) from None


    def resolve_command(self, ctx, args):
        """The command, its callback preceded by the one option check
        (:func:`attrscope.cli.options.check_options`) so that every command gets it."""
        name, command, rest = super().resolve_command(ctx, args)
        callback = getattr(command, "callback", None)
        if callback is not None and not getattr(callback, "checks_options", False):
            @functools.wraps(callback)
            def checked(*a, **params):
                from .options import check_options

                check_options(params)
                return callback(*a, **params)

            checked.checks_options = True
            command.callback = checked
        return name, command, rest

    def _interrupted(self, ctx, args: list[str], how: str) -> str:
        """What a Ctrl-C or SIGTERM (``how``) kept: the finished results and chunks in the
        command's --out."""
        from ..checkpoint import kept_in

        command = self.get_command(ctx, args[0]) if args else None
        out = next((p.default for p in getattr(command, "params", []) if p.name == "out"), None)
        for i, arg in enumerate(args):
            if arg == "--out" and i + 1 < len(args):
                out = args[i + 1]
            elif arg.startswith("--out="):
                out = arg.split("=", 1)[1]
        if out is None:
            return f"{how}."
        results, chunks = kept_in(Path(out))
        return (f"{how}: {results} finished result(s) and {chunks} finished chunk(s) of "
                f"the interrupted method are kept in {out}; run the same command again to "
                "resume (only unfinished chunks are computed).")


def _usage_line(e, args: list[str]) -> str:
    """A usage error in one line, with the value the user gave when the message lacks it."""
    line = " ".join(e.format_message().split())
    for opt in getattr(getattr(e, "param", None), "opts", []):
        for i in reversed(range(len(args))):  # the last occurrence is the one used
            arg = args[i]
            given = (args[i + 1] if arg == opt and i + 1 < len(args) else
                     arg.split("=", 1)[1] if arg.startswith(opt + "=") else None)
            if given is None:
                continue
            if any(form in line for form in (f"'{given}'", f"{given}:", f"{given!r}")):
                return line  # the message quotes the value already
            return f"{line} (got {opt} {given!r})"
    return line


def _describe(e: Exception) -> str:
    """The message of ``e``; unexpected exception types are named, with the --debug hint."""
    if isinstance(e, BAD_INPUT):
        return str(e) or type(e).__name__
    return f"{type(e).__name__}: {e} (run 'attrscope --debug ...' for the traceback)"


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"warning: {message}", err=True)


app = typer.Typer(
    cls=_ErrorReportingGroup,
    help="attrscope: which attention heads and MLP neurons drive a behaviour, by exact activation "
    "patching (ap), attribution patching (atp) and layer integrated gradients (ig). " + SIGNS,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(debug: bool = typer.Option(False, "--debug", help="Show the full traceback "
                                               "of an error instead of one line.")) -> None:
    """Options before the command name (read by _ErrorReportingGroup)."""
