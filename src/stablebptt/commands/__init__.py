"""CLI command modules: every module here registers its commands on ``stablebptt.cli.app``
(``from ..cli import app`` then ``@app.command()``); ``cli.py`` imports them all."""
