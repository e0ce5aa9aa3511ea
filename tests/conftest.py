import importlib
import json
import os
import sys
import tempfile
import textwrap
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


def tree_entries(tree, dtype=np.float64) -> np.ndarray:
    """All entries of an array or a pytree of arrays, flattened in leaf order, as ``dtype``."""
    return np.concatenate([np.ravel(np.asarray(x)).astype(dtype) for x in jax.tree_util.tree_leaves(tree)])


def rel_err(got, ref) -> float:
    """max |got − ref| / max |ref| over all entries of two arrays or pytrees with the same
    number of entries (an error relative to the reference's largest entry; complex entries
    compared as complex numbers)."""
    a, b = tree_entries(got, np.complex128), tree_entries(ref, np.complex128)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), 1e-30))


def assert_close(got, ref, rel: float, what: str = "") -> None:
    """max |got − ref| ≤ rel · max |ref|, over all entries of two arrays or pytrees: an error
    measured against the reference's scale, so that entries far smaller than the largest one
    (whose relative error float32 cannot bound) do not decide the test. ``rel = 0``: equal."""
    a, b = tree_entries(got, np.complex128), tree_entries(ref, np.complex128)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err, scale = float(np.max(np.abs(a - b), initial=0.0)), float(np.max(np.abs(b), initial=0.0))
    assert err <= rel * scale, f"{what}: max |difference| {err:.3g} > {rel:.3g} × max |reference| {scale:.3g}"


def local_minima(L) -> list[tuple[int, float]]:
    """(index, value) of the strict interior local minima of a sequence, in order."""
    return [(i, float(L[i])) for i in range(1, len(L) - 1) if L[i] < L[i - 1] and L[i] < L[i + 1]]


def reference_divergence_epoch(a, b, T, x0, theta, lr, epochs):
    """float64 SGD on L = ½x_T² for the linear problem; first epoch where a float32 run overflows."""
    f32max = float(np.finfo(np.float32).max)
    for e in range(1, epochs + 1):
        rho = a + b * theta
        xT = x0 * rho**T
        G = xT * T * rho ** (T - 1) * b * x0
        if not (abs(0.5 * xT**2) < f32max and abs(G) < f32max):
            return e
        theta = theta - lr * G
        rho = a + b * theta
        if not abs(0.5 * (x0 * rho**T) ** 2) < f32max:  # evaluation after the update
            return e
    return None


def overflowing_linear(**fields):
    """(problem, RunConfig) of the linear problem (a = 1, θ₀ = 0.1, T = 4, one state) trained
    with SGD at lr 0.3 for 20 epochs: it overflows float32 in epoch 4
    (:func:`reference_divergence_epoch`). ``fields`` replace the config's (e.g. ``lr=0.01``
    trains on, ``epochs=8``)."""
    from stablebptt import problems
    from stablebptt.training.config import RunConfig

    pp = dict(a=1.0, theta0=0.1)
    base = dict(
        problem="linear",
        problem_params=pp,
        mode="R",
        optimizer="sgd",
        lr=0.3,
        batch_size=1,
        n_train=1,
        n_test=1,
        epochs=20,
    )
    return problems.get("linear", **pp), RunConfig(**(base | fields))


@pytest.fixture
def workdir_tmp(tmp_path, monkeypatch):
    """tmp_path as the working folder (problem files given as ``FILE.py:make`` are found there),
    with the CLI's compile cache inside it; returns tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def pointmass_source(name="pointmass", steps=12, width=16, defaults="dict(epochs=3)") -> str:
    """The source of a problem file (``make(dt, steps)``): a point mass pushed to the origin,
    per-seed data and initial weights, an MLP controller of one hidden layer of ``width``;
    compiles in seconds. ``defaults``: the Problem's defaults, as Python source."""
    return textwrap.dedent(f'''
        """A point mass pushed to the origin (x = (position, velocity), c = acceleration)."""
        import jax.numpy as jnp
        import numpy as np
        from stablebptt import TrajectoryLoss
        from stablebptt.problems.controllers import MLP
        from stablebptt.problems import Problem

        PARAMS = {{"dt": (0.1, "time step [s]"), "steps": ({steps}, "horizon T")}}

        def make(dt=0.1, steps={steps}):
            def step(x, c):
                vel = x[:, 1] + dt * c[:, 0]
                return jnp.stack([x[:, 0] + dt * vel, vel], axis=1)

            def sample(seed, n_train, n_test):
                rng = np.random.default_rng(0 if seed == "paper" else seed)
                return tuple(rng.uniform(-1, 1, (n, 2)).astype(np.float32) for n in (n_train, n_test))

            return Problem(name="{name}", params=dict(dt=dt, steps=steps), step=step,
                           loss=TrajectoryLoss(lambda x: jnp.mean(x[:, 0] ** 2), on="every"), horizon=steps,
                           sample_data=sample, state_shape=(2,), control_shape=(1,), defaults={defaults},
                           make_controller=lambda key, zero_last=False: MLP(key, 2, (1,), widths=({width},),
                                                                            zero_last=zero_last))
    ''')


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
