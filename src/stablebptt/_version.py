"""The package version: the one place it is set. ``stablebptt.__version__`` re-exports it and
pyproject.toml reads it from here (setuptools' dynamic ``version = {attr =
"stablebptt._version.__version__"}``, read statically: this module imports nothing)."""

__version__ = "0.1.0"
