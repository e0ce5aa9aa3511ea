"""The training loop: one jit-compiled epoch (a scan over minibatches), metrics, a
divergence guard, and K seeds at once with ``vmap``.

Protocol (paper): minibatches in fixed data order (``shuffle=False``), the remainder of
``n_train / batch_size`` dropped; after each epoch the loss of the full training and test
sets is evaluated with the updated controller.

Per-epoch metrics (one row per epoch, epochs counted from 1):
  ``loss``        mean minibatch loss during the epoch
  ``train_loss``  loss of the full training set after the epoch
  ``test_loss``   loss of the full test set after the epoch
  ``update_norm`` mean L2 norm of the update before clipping (after combination for C)
  ``cos_mg``, ``sign_agree``  mean cos(M, G) and fraction of entries with equal signs
                  (C runs, or any mode with ``diagnostics=True``)
  ``wall_s``      wall time of the epoch (compile time is reported separately)

A non-finite loss or update stops that run: its parameters are frozen at the last finite
state, it is marked ``diverged`` with the epoch where it happened, and no row is written for
that epoch (all recorded metrics are finite).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import flow as flow_mod
from . import nets, optim
from .config import RunConfig
from .problems import Problem

METRICS = ("loss", "train_loss", "test_loss", "update_norm", "cos_mg", "sign_agree")


@dataclass
class TrainResult:
    """Outcome of one seed's run."""

    seed: int
    history: dict[str, list]  # metric name -> list over recorded epochs (+ "epoch", "wall_s")
    diverged: bool
    diverged_epoch: int | None
    initial: dict[str, float]  # train/test loss of the untrained controller
    model: Any  # trained controller (last finite parameters)
    compile_s: float
    train_s: float

    @property
    def epochs_done(self) -> int:
        return len(self.history["epoch"])

    def final(self, key: str = "test_loss") -> float:
        vals = self.history.get(key) or []
        return float(vals[-1]) if vals else float(self.initial.get(key, float("nan")))


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves]))


def make_data(problem: Problem, config: RunConfig, seed: int):
    """(train, test) numpy arrays: the authors' seed-42 data for ``data="paper"``, else seeded."""
    src = "paper" if config.data == "paper" else int(seed)
    return problem.sample_data(src, config.n_train, config.n_test)


def make_model(problem: Problem, config: RunConfig, seed: int):
    zero_last = problem.zero_last_default if config.zero_last is None else config.zero_last
    model = problem.make_controller(jax.random.PRNGKey(int(seed)), zero_last=zero_last)
    if config.init_weights:
        model = nets.load_weights(model, config.init_weights)
    return model


def build_epoch(problem: Problem, config: RunConfig, static, n_train: int):
    """Return ``epoch(params, opt_state, alive, train, test, key) -> (params, opt_state, alive, metrics)``.

    ``alive`` is a bool scalar; once False the parameters no longer change. Metrics are
    per-epoch scalars plus ``bad`` (index of the first non-finite minibatch or -1).
    """
    flow = config.flow()
    tx = optim.make(config.optimizer, config.lr, config.clip, config.clip_threshold, momentum=config.momentum)
    bs = config.batch_size
    nb = n_train // bs
    want_stats = flow.combined or config.diagnostics
    kw = dict(step=problem.step, loss=problem.loss, horizon=problem.horizon)

    def one_update(carry, xb):
        params, opt_state, alive, bad, idx = carry
        model = eqx.combine(params, static)
        val, upd, info = flow_mod.value_and_update(
            model, xb, flow=flow, diagnostics=config.diagnostics,
            checkpoint_every=config.checkpoint_every, validate=False, **kw)
        ok = alive & jnp.isfinite(val) & _all_finite(upd)
        steps, new_opt = tx.update(upd, opt_state, params)
        new_params = eqx.apply_updates(params, steps)
        ok = ok & _all_finite(new_params)
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
        params = keep(new_params, params)
        opt_state = keep(new_opt, opt_state)
        bad = jnp.where(alive & ~ok, idx, bad)
        stats = jnp.stack([val, info["update_norm"],
                           info.get("cos_mg", jnp.float32(0.0)), info.get("sign_agree", jnp.float32(0.0))])
        return (params, opt_state, ok, bad, idx + 1), stats

    def evaluate(params, xs):
        model = eqx.combine(params, static)
        return flow_mod.evaluate_loss(model, xs, **kw)

    def epoch(params, opt_state, alive, train, test, key):
        if config.shuffle:
            perm = jax.random.permutation(key, train.shape[0])
            train = train[perm]
        batches = train[: nb * bs].reshape((nb, bs) + train.shape[1:])
        (params, opt_state, alive, bad, _), stats = jax.lax.scan(
            one_update, (params, opt_state, alive, jnp.int32(-1), jnp.int32(0)), batches)
        tr = evaluate(params, train)
        te = evaluate(params, test)
        alive = alive & jnp.isfinite(tr) & jnp.isfinite(te)
        m = {
            "loss": jnp.mean(stats[:, 0]),
            "train_loss": tr,
            "test_loss": te,
            "update_norm": jnp.mean(stats[:, 1]),
            "cos_mg": jnp.mean(stats[:, 2]),
            "sign_agree": jnp.mean(stats[:, 3]),
            "bad": bad,
        }
        return params, opt_state, alive, m

    return epoch, tx, want_stats


def train(problem: Problem, config: RunConfig, seeds: int | Sequence[int] = 0, *,
          on_epoch: Callable[[int, list[dict]], None] | None = None,
          data: tuple | None = None) -> list[TrainResult]:
    """Train one controller per seed; K > 1 seeds run as one ``vmap``-ed program.

    Args:
      problem: from :func:`stablebptt.problems.get`.
      config: the run configuration (its ``problem`` field is informational here).
      seeds: an int or a list of ints. A seed sets the initial weights and, with
        ``config.data == "seeded"``, the data.
      on_epoch: called after each epoch with (epoch, [per-seed metric dicts]).
      data: optional ``(train, test)`` arrays overriding the sampler (same for all seeds).

    Returns: one :class:`TrainResult` per seed, in order.
    """
    single = isinstance(seeds, (int, np.integer))
    seeds = [int(seeds)] if single else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    models = [make_model(problem, config, s) for s in seeds]
    datasets = [data if data is not None else make_data(problem, config, s) for s in seeds]
    x_probe = jnp.asarray(datasets[0][0][: config.batch_size])
    flow_mod.check_problem_inputs(models[0], x_probe, problem.step, problem.horizon)
    for tr, te in datasets:
        for name, arr in (("train", tr), ("test", te)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} data contain non-finite values")
    n_train = datasets[0][0].shape[0]
    if config.batch_size > n_train:
        raise ValueError(f"batch_size={config.batch_size} is larger than the training set ({n_train})")

    split = [eqx.partition(m, eqx.is_inexact_array) for m in models]
    static = split[0][1]
    params = [p for p, _ in split]
    epoch_fn, tx, want_stats = build_epoch(problem, config, static, n_train)
    opt_states = [tx.init(p) for p in params]
    train_x = [jnp.asarray(d[0]) for d in datasets]
    test_x = [jnp.asarray(d[1]) for d in datasets]
    keys = [jax.random.PRNGKey(s + 1_000_003) for s in seeds]

    K = len(seeds)
    stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)
    if K == 1:
        P, O, TR, TE, KEY = params[0], opt_states[0], train_x[0], test_x[0], keys[0]
        fn = epoch_fn
        ALIVE = jnp.bool_(True)
    else:
        P, O, TR, TE, KEY = stack(params), stack(opt_states), stack(train_x), stack(test_x), stack(keys)
        fn = jax.vmap(epoch_fn)
        ALIVE = jnp.ones((K,), bool)

    def evaluate_initial(p, xs):
        return flow_mod.evaluate_loss(eqx.combine(p, static), xs, step=problem.step, loss=problem.loss,
                                      horizon=problem.horizon)

    init_eval = jax.jit(evaluate_initial)
    initial = [
        {"train_loss": float(init_eval(params[k], train_x[k])), "test_loss": float(init_eval(params[k], test_x[k]))}
        for k in range(K)
    ]

    t0 = time.perf_counter()
    epoch_key = lambda e: (jax.random.fold_in(KEY, e) if K == 1 else jax.vmap(lambda k: jax.random.fold_in(k, e))(KEY))
    compiled = jax.jit(fn).lower(P, O, ALIVE, TR, TE, epoch_key(1)).compile()
    compile_s = time.perf_counter() - t0

    histories = [{k: [] for k in ("epoch", *METRICS, "wall_s")} for _ in range(K)]
    diverged_epoch: list[int | None] = [None] * K
    last_good = [None] * K
    t_train = time.perf_counter()
    for e in range(1, config.epochs + 1):
        t = time.perf_counter()
        P, O, ALIVE, M = compiled(P, O, ALIVE, TR, TE, epoch_key(e))
        M = jax.device_get(M)
        alive_np = np.atleast_1d(np.asarray(jax.device_get(ALIVE)))
        wall = time.perf_counter() - t
        rows = []
        for k in range(K):
            if diverged_epoch[k] is not None:
                rows.append(None)
                continue
            vals = {name: float(np.atleast_1d(M[name])[k]) for name in METRICS}
            if not alive_np[k] or not all(np.isfinite(list(vals.values()))):
                diverged_epoch[k] = e
                rows.append(None)
                continue
            if not want_stats:
                vals["cos_mg"] = float("nan")
                vals["sign_agree"] = float("nan")
            h = histories[k]
            h["epoch"].append(e)
            for name in METRICS:
                h[name].append(vals[name])
            h["wall_s"].append(wall)
            rows.append(vals)
        if on_epoch is not None:
            on_epoch(e, rows)
        if all(d is not None for d in diverged_epoch):
            break
    train_s = time.perf_counter() - t_train

    results = []
    for k, s in enumerate(seeds):
        pk = P if K == 1 else jax.tree_util.tree_map(lambda a: a[k], P)
        h = histories[k]
        if not want_stats:
            h.pop("cos_mg")
            h.pop("sign_agree")
        results.append(TrainResult(
            seed=s, history=h, diverged=diverged_epoch[k] is not None, diverged_epoch=diverged_epoch[k],
            initial=initial[k], model=eqx.combine(pk, static), compile_s=compile_s, train_s=train_s))
    return results
