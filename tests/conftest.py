import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# the measured choices of backward="auto" are cached for this test session only (shared with
# the CLI subprocesses the tests start), never in the user's cache
os.environ.setdefault("STABLEBPTT_BACKWARD_CACHE", tempfile.mkdtemp(prefix="stablebptt-test-cache-"))


#: the benchmark scripts (not a package: tests import them by putting this folder on sys.path)
BENCHMARKS = REPO / "benchmarks"


@pytest.fixture()
def bench_module(monkeypatch):
    """bench_module('run_all') -> that script of ``benchmarks/`` imported as a module.

    The folder is on ``sys.path`` and the scripts' modules are loaded for this test only.
    ``benchmarks/_common`` sets ``XLA_FLAGS`` with ``setdefault`` on import; setting the
    variable to its present value (or empty) here means the change is undone after the test.
    """
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    loaded = []

    def load(name: str):
        loaded.append(name)
        return importlib.import_module(name)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


#: the authors' reference arrays, copied into the repository with their README
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixtures_dir() -> Path:
    """The authors' reference arrays: ``tests/fixtures`` (override with $STABLEBPTT_FIXTURES)."""
    d = Path(os.environ.get("STABLEBPTT_FIXTURES", FIXTURES))
    if not d.is_dir():
        raise FileNotFoundError(f"reference fixtures not found at {d} (STABLEBPTT_FIXTURES or tests/fixtures)")
    return d


@pytest.fixture(scope="session")
def fixture():
    """fixture('cartpole_1') -> dict of numpy arrays."""
    cache = {}

    def load(name: str) -> dict:
        if name not in cache:
            with np.load(fixtures_dir() / f"{name}.npz") as f:
                cache[name] = {k: f[k] for k in f.files}
        return cache[name]

    return load


#: float32's machine epsilon: tolerances are stated as a multiple of it (an amplification)
EPS32 = float(np.finfo(np.float32).eps)


def assert_close(got, ref, rel: float, what: str = "") -> None:
    """max |got − ref| ≤ rel · max |ref|, over all entries of two arrays or pytrees: an error
    measured against the reference's scale, so that entries far smaller than the largest one
    (whose relative error float32 cannot bound) do not decide the test."""

    def flat(tree):
        return np.concatenate([np.ravel(np.asarray(x)).astype(np.complex128) for x in jax.tree_util.tree_leaves(tree)])

    a, b = flat(got), flat(ref)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err, scale = float(np.max(np.abs(a - b), initial=0.0)), float(np.max(np.abs(b), initial=0.0))
    assert err <= rel * scale, f"{what}: max |difference| {err:.3g} > {rel:.3g} × max |reference| {scale:.3g}"


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (error relative to the reference's largest entry)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def fixed_control_rollout(step, s0, c, n):
    """(B, n+1, ...) of n steps with the same control c at every step; index 0 = s0 (the
    fixtures' rollout convention)."""

    def body(s, _):
        s = step(s, c)
        return s, s

    _, xs = jax.lax.scan(body, s0, None, length=n)
    return jnp.concatenate([s0[:, None], jnp.moveaxis(xs, 0, 1)], 1)


def fixed_control_loss(prob, s0, c, n):
    """L = Σ_k w_k state_loss(x_k) + control terms of the problem's TrajectoryLoss, over an
    n-step fixed-control rollout."""
    xs = fixed_control_rollout(prob.step, s0, c, n)
    per_step = jax.vmap(prob.loss.state_loss, in_axes=1)(xs[:, 1:])  # (n,)
    weights = prob.loss.step_weight(jnp.arange(1, n + 1), n)
    return jnp.sum(weights * per_step) + n * prob.loss.control_term(c, n)


def assert_leaves_global_rng_alone(sample_data):
    """The "paper" data mode must not advance NumPy's global legacy stream."""
    np.random.seed(7)
    a = np.random.rand()
    np.random.seed(7)
    sample_data("paper", 4, 4)
    assert np.random.rand() == a


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: compiles a large program (minutes on a CPU); deselect with -m 'not slow'")


#: the paper's claims, figures and scripts (not installed: tests import them with this folder on
#: ``sys.path``, as the scripts there import each other)
PAPER = REPO / "experiments" / "paper"


def paper_module(name: str):
    """paper_module('claims') -> ``experiments/paper/claims.py`` imported as the module ``claims``."""
    if str(PAPER) not in sys.path:
        sys.path.insert(0, str(PAPER))
    return importlib.import_module(name)


def fake_run(root, problem, params, mode, clip, seed, curve, update=None, diverged_epoch=None):
    """A result folder as the runner writes it; ``curve`` is the test loss per epoch."""
    from stablebptt.training.config import RunConfig, run_id

    cfg = RunConfig(problem=problem, problem_params=params, mode=mode, clip=clip, epochs=len(curve))
    d = root / run_id(cfg, seed)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "seed": seed}))
    upd = update if update is not None else np.ones(len(curve))
    rows = ["epoch,loss,train_loss,test_loss,update_norm,wall_s"]
    rows += [f"{i + 1},{v},{v},{v},{u},0.1" for i, (v, u) in enumerate(zip(curve, upd))]
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    (d / "result.json").write_text(
        json.dumps(
            {
                "run_id": d.name,
                "seed": seed,
                "status": "diverged" if diverged_epoch else "finished",
                "diverged_epoch": diverged_epoch,
                "epochs_done": len(curve),
                "initial": {"train_loss": 2.0, "test_loss": 2.0},
                "final": {},
                "compile_s": 0.0,
                "train_s": 0.0,
            }
        )
    )
