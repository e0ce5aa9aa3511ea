r"""Choosing a backward strategy by measurement.

Every strategy of :mod:`stablebptt.core.backward` computes the same update up to float32
round-off; which one is fastest depends on the controller, the simulator, the flow, the batch
and the machine, in ways no fixed rule captures (a user's convolutional controller and the
paper's MLPs prefer different strategies). :func:`choose` therefore compiles every candidate's
program, runs each a few times on the same inputs and keeps the fastest.

The decision is cached under a *signature*: a hash of what determines the programs' cost —
the jaxprs of one controller call and of one simulator step with its loss term at the given
shapes, the horizon, the gates, the candidates, the JAX version and the device. A later run, a
resumed run or the other runs of a sweep with the same signature reuse the decision (in this
process, and across processes through one small JSON file per signature in
:func:`cache_dir`, ``~/.cache/stablebptt/backward`` or ``$STABLEBPTT_BACKWARD_CACHE``) without
measuring again.

The record of a choice (``choice["chosen"]``, ``choice["candidates"]`` = {strategy: seconds
per program call}, ``choice["measure_s"]`` = wall time spent measuring, ``choice["cached"]``)
is what the trainer writes to a run's manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

#: environment variable naming the folder of the decision cache ("off": no disk cache)
CACHE_ENV = "STABLEBPTT_BACKWARD_CACHE"
#: calls of each compiled candidate that are timed (after one untimed call); the minimum counts
REPEATS = 3
#: the share of a run's time (with the first candidate) that compiling and timing the other
#: candidates may cost (``choose``'s ``calls``). A shorter run keeps the first candidate (unless
#: a decision for its signature is cached); the decision is cached, so only the first run of a
#: signature pays.
WORTH = 0.1
#: bump when the measurement itself changes, so that older decisions are not reused
_VERSION = 1

#: decisions of this process, by signature
_MEMORY: dict[str, dict] = {}


def forget() -> None:
    """Drop this process's decisions (the disk cache stays): the next choice reads the cache
    folder again, as a new process would."""
    _MEMORY.clear()


def cache_dir() -> Path | None:
    """The folder of the decision cache: ``$STABLEBPTT_BACKWARD_CACHE`` if set (``off``: None,
    no disk cache), else ``$XDG_CACHE_HOME/stablebptt/backward`` or ``~/.cache/stablebptt/backward``."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stablebptt" / "backward"


def signature(parts: Sequence[Any]) -> str:
    """A hex digest of ``parts`` (strings, numbers, arrays) with the JAX version and device."""
    h = hashlib.sha256()
    dev = jax.devices()[0]
    for p in [_VERSION, jax.__version__, jax.default_backend(), getattr(dev, "device_kind", ""), *parts]:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode() + str(p.shape).encode() + np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _load(key: str) -> dict | None:
    if key in _MEMORY:
        return _MEMORY[key]
    d = cache_dir()
    if d is None:
        return None
    try:
        rec = json.loads((d / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "chosen" in rec else None


def _store(key: str, rec: dict) -> None:
    _MEMORY[key] = rec
    d = cache_dir()
    if d is None:
        return
    try:  # atomic: a concurrent reader sees the old file or the new one
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(rec, f, indent=1, sort_keys=True)
        os.replace(tmp, d / f"{key}.json")
    except OSError:
        pass  # a read-only or missing home: the decision lives in this process only


def choose(
    candidates: Sequence[Any],
    program: Callable[[Any], Callable],
    args: Sequence[Any],
    key_parts: Sequence[Any],
    first: Sequence[Any] | None = None,
    neighbours: Callable[[Any], Sequence[Any]] | None = None,
    calls: float | None = None,
    timed: tuple[float, float] | None = None,
) -> tuple[Any, dict]:
    """The fastest of ``candidates`` and the record of the decision.

    Args:
      candidates: strategy objects (their ``repr`` names them in the record).
      program: ``program(candidate) -> f`` where ``f(*args)`` is the work to time (a pure
        function; it is jitted and compiled here).
      args: concrete arguments of ``f`` (the same for every candidate).
      key_parts: what, besides the candidates, determines the cost (see :func:`signature`).
      first, neighbours: a search in two rounds instead of timing every candidate (each costs
        a compilation): round one times ``first`` (one candidate of each family), round two
        the best of them again beside ``neighbours(best)`` (the candidates that differ from
        it in one option); the candidate with the least recorded time is kept.
      calls: how often the run will call the timed work (None: unknown, measure now). When
        compiling the others is expected to cost more than :data:`WORTH` of the run's time with
        the first candidate (the reference), the reference is kept without timing them (the
        record says so under ``skipped``; it is cached with the reference's seconds per call and
        compile seconds, so that a later run of the signature decides from them without
        compiling, and measures once its run is long enough).
      timed: ``(seconds per call, compile seconds)`` of the reference as the caller measured
        them (its own first epoch); with ``calls`` and no cached record and no ``timed``, the
        reference is returned at once, its record marked ``pending`` (not cached): the caller
        runs it, times it and calls again with ``timed`` and the calls that remain.

    Returns:
      ``(strategy, record)``; a single candidate is returned unmeasured. The record's
      ``candidates`` holds the seconds per call of every candidate timed (round two's time for
      the one timed twice).
    """
    names = [repr(c) for c in candidates]
    if len(candidates) == 1:
        return candidates[0], {"chosen": names[0], "candidates": {names[0]: None}, "measure_s": 0.0, "cached": False}
    key = signature([*key_parts, *names])
    rec = _load(key)
    round1 = list(first) if first is not None else list(candidates)
    ref = round1[0]
    others = len(round1) - 1 + (2 if neighbours is not None else 0)
    if rec is not None and rec["chosen"] in names:
        if "skipped" not in rec:
            rec = dict(rec, cached=True)
            _MEMORY[key] = rec
            return candidates[names.index(rec["chosen"])], rec
        if calls is not None and not _worth(others, rec["compile_s"], calls * rec["ref_s"]):
            return ref, _skip(repr(ref), rec["ref_s"], rec["compile_s"], others, calls, 0.0, key, cached=True)
        timed = timed or (rec["ref_s"], rec["compile_s"])  # a long run of a signature that was skipped
    if calls is not None and timed is None:  # the caller times the reference in its own run first
        return ref, {
            "chosen": repr(ref),
            "candidates": {repr(ref): None},
            "measure_s": 0.0,
            "cached": False,
            "signature": key,
            "pending": True,
        }
    if calls is not None and not _worth(others, timed[1], calls * timed[0]):  # type: ignore[index]  # not None when calls is not (above)
        rec = _skip(repr(ref), timed[0], timed[1], others, calls, 0.0, key, cached=False)  # type: ignore[index]
        _store(key, rec)
        return ref, rec
    t0 = time.perf_counter()
    compiled: dict[str, Any] = {}
    times = dict(zip(map(repr, round1), measure(round1, program, args, compiled)))
    best = min(round1, key=lambda c: times[repr(c)])
    if neighbours is not None:
        round2 = [best] + [c for c in neighbours(best) if repr(c) in names and repr(c) not in times]
        if len(round2) > 1:
            times |= dict(zip(map(repr, round2), measure(round2, program, args, compiled)))
            best = min((c for c in candidates if repr(c) in times), key=lambda c: times[repr(c)])
    rec = {
        "chosen": repr(best),
        "candidates": times,
        "measure_s": round(time.perf_counter() - t0, 3),
        "cached": False,
        "signature": key,
    }
    _store(key, rec)
    return best, rec


def _worth(others: int, compile_s: float, run_s: float) -> bool:
    """Is compiling and timing ``others`` candidates (``compile_s`` each) at most WORTH of a
    run that takes ``run_s`` with the reference?"""
    return others * compile_s <= WORTH * run_s


def _skip(
    ref: str, ref_s: float, compile_s: float, others: int, calls: float, spent: float, key: str, cached: bool
) -> dict:
    """The record of a run that keeps the reference without timing the others. It is cached
    with the reference's seconds per call (``ref_s``) and its compile time, so that a later run
    of the same signature decides without compiling anything (and measures once a run is long
    enough)."""
    return {
        "chosen": ref,
        "candidates": {ref: ref_s},
        "ref_s": ref_s,
        "compile_s": compile_s,
        "measure_s": round(spent, 3),
        "cached": cached,
        "signature": key,
        "skipped": f"timing {others} more candidates would take ~{others * compile_s:.0f} s, "
        f"over {WORTH:.0%} of the run's ~{calls * ref_s:.0f} s",
    }


def measure(
    candidates: Sequence[Any], program: Callable[[Any], Callable], args: Sequence[Any], compiled: dict | None = None
) -> list[float]:
    """Seconds per call of each candidate's compiled program: the minimum of :data:`REPEATS`
    calls after one untimed call, the candidates interleaved (compiled two at a time: XLA
    compiles without the GIL; ``compiled``: programs already compiled, by name, extended here)."""
    compiled = {} if compiled is None else compiled
    abstract = [jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), a) for a in args]

    def compile_one(c):
        with jax.default_matmul_precision("highest"):
            return jax.jit(program(c)).lower(*abstract).compile()

    todo = [c for c in candidates if repr(c) not in compiled]
    if len(todo) == 1:
        compiled[repr(todo[0])] = compile_one(todo[0])
        todo = []
    with ThreadPoolExecutor(2) as pool:
        compiled |= dict(zip(map(repr, todo), pool.map(compile_one, todo)))
    with jax.ensure_compile_time_eval():  # run now, also when the caller is being traced
        return _time([compiled[repr(c)] for c in candidates], args)


def _time(compiled, args) -> list[float]:
    for f in compiled:
        jax.block_until_ready(f(*args))
    best = [float("inf")] * len(compiled)
    for _ in range(REPEATS):
        for i, f in enumerate(compiled):
            t = time.perf_counter()
            jax.block_until_ready(f(*args))
            best[i] = min(best[i], time.perf_counter() - t)
    return best
