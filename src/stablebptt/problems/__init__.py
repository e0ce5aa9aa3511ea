"""Registry of problems: ``stablebptt.problems.get(name, **params)`` (like ``gymnasium.make``).

Each problem module defines ``make(**params) -> Problem`` and ``PARAMS``, a dict
``name -> (default, description)`` of its parameters; unknown parameters are an error.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from .base import Problem

# name -> module (relative to this package)
_REGISTRY: dict[str, str] = {
    "toy-field": "toys",
    "toy-rotation": "toys",
    "linear": "linear",
    "cartpole": "cartpole",
    "guidance": "guidance",
    "quantum": "quantum",
}


def names() -> list[str]:
    """All registered problem names."""
    return list(_REGISTRY)


def _module(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown problem {name!r}; available: {', '.join(_REGISTRY)}")
    return importlib.import_module(f".{_REGISTRY[name]}", __name__)


def param_spec(name: str) -> dict[str, tuple[Any, str]]:
    """``{param: (default, description)}`` for problem ``name``."""
    mod = _module(name)
    spec = getattr(mod, "PARAMS")
    return dict(spec[name]) if name in spec and isinstance(spec[name], dict) else dict(spec)


def get(name: str, **params) -> Problem:
    """Build problem ``name`` with the given parameters (others take their defaults)."""
    mod = _module(name)
    allowed = param_spec(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"problem {name!r} has no parameter(s) {unknown}; allowed: {sorted(allowed)}"
        )
    make = getattr(mod, "make")
    if "name" in inspect.signature(make).parameters:
        return make(name=name, **params)
    return make(**params)


__all__ = ["Problem", "get", "names", "param_spec"]
