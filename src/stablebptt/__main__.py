"""``python -m stablebptt``: the command-line interface (:mod:`stablebptt.cli`)."""

from stablebptt.cli import app

app(prog_name="stablebptt")
