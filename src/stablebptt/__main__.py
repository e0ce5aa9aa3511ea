"""``python -m stablebptt``: the command-line interface (:mod:`stablebptt.cli`)."""

from .cli.app import app

app(prog_name="stablebptt")
