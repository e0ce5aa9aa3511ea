"""Validated run configuration: the one source of truth for defaults.

A :class:`RunConfig` is plain data (JSON/TOML serialisable). Together with a seed it fully
determines a run. Validation happens here, before any JAX work: a bad field names itself
and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import typing
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .. import problems
from ..core.backward import BACKWARDS
from ..core.gates import Flow
from . import optim


def _plain(x):
    """``x`` with NumPy/JAX scalars and arrays (also inside lists, tuples and dicts) replaced by
    the Python numbers and lists of the same value (``np.float32(0.05)`` -> 0.05000000074505806,
    ``np.int64(6)`` -> 6); anything else unchanged."""
    import numpy as np

    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    if isinstance(x, np.generic):
        return x.item()
    if hasattr(x, "__array__") and hasattr(x, "shape"):
        return np.asarray(x).tolist()
    return x


#: epochs of a quick run of a problem (``stablebptt train`` without ``--epochs``, ``compare --quick``):
#: short runs that visibly learn
QUICK_EPOCHS = {
    "cartpole": 40,
    "guidance": 10,
    "quantum": 5,
    "toy-field": 100,
    "toy-rotation": 200,
    "linear": 50,
    "cart-chain": 20,
    "ks": 10,
    "burgers": 1,
    "kolmogorov": 1,
    "hopper": 10,
}

#: RunConfig fields of a quick comparison of a built-in problem (``stablebptt compare --quick``,
#: :func:`stablebptt.analysis.comparison.quick_config`): minutes per run on 2 CPU cores; the
#: quick sweeps of the paper's figures and of the complexity ladder use the same settings
QUICK_SETTINGS: dict[str, dict[str, int]] = {
    "cartpole": {"epochs": 60, "n_train": 64, "n_test": 64},
    "guidance": {"epochs": 30, "n_train": 64, "n_test": 64},
    "quantum": {"epochs": 12, "n_train": 64, "n_test": 64},
    "toy-field": {"epochs": 60},
    "toy-rotation": {"epochs": 200},
    "linear": {"epochs": 60},
    "cart-chain": {"epochs": 60, "n_train": 64, "n_test": 64},
    "ks": {"epochs": 5, "n_train": 64, "n_test": 32},
    "burgers": {"epochs": 5, "n_train": 64, "n_test": 32},
    "kolmogorov": {"epochs": 5, "n_train": 64, "n_test": 32},
    "hopper": {"epochs": 10, "n_train": 32, "n_test": 32},
}


class RunConfig(BaseModel):
    """Everything that defines one training run except the seed.

    Defaults are the paper's protocol (Adam lr 1e-3 with ε 1e-7 in Keras form, batch 8 in
    data order, 256 train / 256 test states, no clipping).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: a built-in or registered name, ``FILE.py:FUNCTION``, ``module:FUNCTION`` or an installed
    #: entry point (:mod:`stablebptt.problems`)
    problem: str = "cartpole"
    problem_params: dict[str, Any] = Field(default_factory=dict)
    #: a gradient-flow mode ``R | M | S | N | C``, or a per-step schedule of R/M/S/N letters,
    #: stored as a list of letters (a string of several letters is turned into one)
    mode: str | list[str] = "C"
    combiner: str = "sign"
    truncate: int = 0
    decay: float = 1.0
    and_mask: float = 0.0
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    clip: Literal["none", "value", "norm"] = "none"
    clip_threshold: float = 1.0
    batch_size: int = 8
    epochs: int = 20
    n_train: int = 256
    n_test: int = 256
    data: Literal["paper", "seeded"] = "paper"
    shuffle: bool = False
    zero_last: bool | None = None
    diagnostics: bool = False
    checkpoint_every: int | Literal["auto"] | None = "auto"
    memory_budget: int | None = None
    init_weights: str | None = None
    #: evaluate the full train/test sets every k epochs and after the last one (paper: 1).
    #: Only evaluated epochs are recorded as rows; the others still train and are guarded.
    eval_every: int = 1
    #: the backward strategy: "auto" (the fastest, measured: ``core.engine.choose_backward``), "autodiff" (the
    #: reference: one complete pass per field), "batched" or "per_step" (the reverse sweep
    #: with that input Jacobian); the strategy that ran is recorded in the run's manifest
    backward: str = "auto"

    @field_validator("problem")
    @classmethod
    def _problem(cls, v):
        problems.param_spec(v)  # resolves the source; a bad one raises naming it and what is allowed
        return v

    @field_validator("problem_params")
    @classmethod
    def _plain_params(cls, v):
        # NumPy/JAX scalars and arrays become the Python numbers and lists of the same value, so
        # the config is JSON (config.json, run_id) and equals the config written with those
        return {k: _plain(x) for k, x in v.items()}

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v):
        # one form per schedule: "RRMM" is stored as ["R", "R", "M", "M"] (what the CLI passes),
        # so both spellings are one config with one run_id; a single letter stays a string
        return list(v) if isinstance(v, str) and len(v) > 1 else v

    @field_validator("clip", mode="before")
    @classmethod
    def _clip(cls, v):
        return str(v).lower() if isinstance(v, str) else v

    @field_validator("optimizer")
    @classmethod
    def _opt(cls, v):
        if v not in optim.OPTIMIZERS:
            raise ValueError(f"unknown optimizer {v!r}; allowed: {', '.join(optim.OPTIMIZERS)}")
        return v

    @field_validator("backward")
    @classmethod
    def _backward(cls, v):
        if v not in BACKWARDS:
            raise ValueError(f"backward={v!r}; allowed: {', '.join(BACKWARDS)}")
        return v

    @field_validator("lr")
    @classmethod
    def _lr(cls, v):
        if not v > 0:
            raise ValueError(f"lr={v!r}; must be > 0")
        return v

    @field_validator("clip_threshold")
    @classmethod
    def _thr(cls, v):
        if not v >= 0:
            raise ValueError(f"clip_threshold={v!r}; must be ≥ 0")
        return v

    @field_validator("batch_size", "epochs", "n_train", "n_test", "eval_every")
    @classmethod
    def _positive(cls, v, info):
        if v < 1:
            raise ValueError(f"{info.field_name}={v!r}; must be an int ≥ 1")
        return v

    @model_validator(mode="after")
    def _whole(self):
        Flow(
            mode=self.mode if isinstance(self.mode, str) else tuple(self.mode),
            combiner=self.combiner,
            truncate=self.truncate,
            decay=self.decay,
            and_mask=self.and_mask,
        )
        spec = problems.param_spec(self.problem)
        unknown = sorted(set(self.problem_params) - set(spec))
        if unknown:
            raise ValueError(f"problem {self.problem!r} has no parameter(s) {unknown}; allowed: {sorted(spec)}")
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size={self.batch_size} is larger than n_train={self.n_train}")
        if self.checkpoint_every not in (None, "auto") and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every={self.checkpoint_every!r}; must be ≥ 1, 'auto' or None")
        if self.memory_budget is not None and self.memory_budget < 1:
            raise ValueError(f"memory_budget={self.memory_budget!r}; must be a number of bytes ≥ 1")
        return self

    def flow(self) -> Flow:
        """The gradient flow of this run."""
        mode = self.mode if isinstance(self.mode, str) else tuple(self.mode)
        return Flow(mode=mode, combiner=self.combiner, truncate=self.truncate, decay=self.decay, and_mask=self.and_mask)

    def optimizer_setting(self) -> optim.Optimizer:
        """The optimizer and clipping of this run."""
        return optim.Optimizer(self.optimizer, self.lr, self.clip, self.clip_threshold, self.momentum)

    def mode_label(self) -> str:
        return self.flow().label()

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _fields_at(model: type[BaseModel], path) -> list[str] | None:
    """The field names of the (sub)model that ``path`` (an error location without its last
    entry) points into, or None when it does not lead to a model."""
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        while (
            typing.get_origin(ann) in (list, Union, typing.Union, Optional)
            or str(typing.get_origin(ann)) == "types.UnionType"
        ):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            ann = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), args[0] if args else ann)
            if typing.get_origin(ann) not in (list, Union, typing.Union, Optional):
                break
        model = ann  # type: ignore[assignment]  # any annotation; the checks above and below test for a model
    return sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else None


def describe_errors(e, model: type[BaseModel], where: str = "") -> str:
    """A pydantic ValidationError as one line: every bad field with its location (``where``
    prefixed), the value given and what is allowed; unknown fields with the allowed names."""
    parts = []
    for err in e.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        loc = f"{where}.{loc}" if where and loc else (where or loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, err["loc"][:-1])
            parent = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"][:-1]).lstrip(".")
            parent = ".".join(x for x in (where, parent) if x)
            msg = f"unknown field {err['loc'][-1]!r}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
            parts.append(f"{parent}: {msg}" if parent else msg)
            continue
        value = err.get("input")
        if isinstance(value, (str, int, float, bool)) and repr(value) not in msg:
            msg = f"got {value!r}; {msg[0].lower()}{msg[1:]}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


#: fields added after the first release, hashed only when not at their default so that
#: existing result folders keep their ids
_LATER_FIELDS = ("eval_every", "backward")


def run_id(config: RunConfig, seed: int) -> str:
    """Stable short hash of (config, seed): the name of the run's result folder."""
    d = config.to_dict()
    for k in _LATER_FIELDS:
        if d.get(k) == RunConfig.model_fields[k].default:
            d.pop(k)
    blob = json.dumps({"config": d, "seed": int(seed)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
