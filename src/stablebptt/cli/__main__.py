"""``python -m stablebptt.cli``: the command line with every command."""

from stablebptt.cli import app

app(prog_name="stablebptt")
