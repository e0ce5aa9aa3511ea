"""The command line, ``stablebptt``: a thin layer that parses and validates options and calls
the library. :mod:`.app` holds the application and ``train`` / ``evaluate`` / ``problems``;
each ``*_cmd`` module registers further commands on it (``sweep``, ``results``, ``compare``,
``diagnose``, ``animate``, ``plot``). Every command reports a bad
input as one line naming the value and what is allowed (``--debug`` shows the traceback)."""

from . import compare_cmd, diagnose_cmd, plot_cmd, sweep_cmd  # noqa: F401  (they register their commands)
from .app import app, cli_errors

for _cmd in app.registered_commands:  # one-line errors for every command
    _cmd.callback = cli_errors(_cmd.callback)


def main():  # pragma: no cover
    """The console entry point: run :data:`app`."""
    app()


__all__ = ["app", "main"]
