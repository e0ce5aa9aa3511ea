"""Regression guards for the engine's structure. No timing here: the guards count primitives in
the traced programs and check memory planning and equivalences, so they are deterministic on
any machine. Timings live in benchmarks/ (results.md).

What is guarded:
* the reverse sweep runs the controller's forward once per step and the simulator as often for
  C as for one field (the authors' two-pass C, Autodiff, twice as often);
* both adjoints of C go through one tridiagonal solve with two right-hand sides (quantum);
* parameter gradients are deferred out of the loops: with the batched input Jacobian no loop
  contains a controller backward; with the per-step Jacobian the loops of R contain only the
  forward and the controller's input-vjp matmuls, M's loops no controller backward at all,
  and C's loops only R's input-vjp (no dead work for the M field);
* remat segments under jit and the memory estimate agree with the plain paths and XLA.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stablebptt as sb
from stablebptt import problems
from stablebptt.core import Autodiff, ReverseSweep, candidates
from stablebptt.core import backward as B

LOOPS = ("scan", "while")


def sub_jaxprs(eqn):
    """The jaxprs nested in ``eqn`` that run. A ``custom_linear_solve`` carries four (matvec,
    vecmat, solve, transpose_solve) but runs only ``solve`` (its transpose swaps them)."""
    if eqn.primitive.name == "custom_linear_solve":
        candidates = [eqn.params["jaxprs"].solve]
    else:
        candidates = [j for p in eqn.params.values() for j in (p if isinstance(p, (list, tuple)) else [p])]
    for j in candidates:
        inner = getattr(j, "jaxpr", None)
        sub = inner if (inner is not None and hasattr(inner, "eqns")) else (j if hasattr(j, "eqns") else None)
        if sub is not None:
            yield sub


def count(jaxpr, name, *, in_loops_only=False, _in_loop=False):
    """Occurrences of primitive ``name`` in ``jaxpr`` and all sub-jaxprs that run."""
    n = 0
    for eqn in jaxpr.eqns:
        loop = _in_loop or eqn.primitive.name in LOOPS
        if eqn.primitive.name == name and (_in_loop or not in_loops_only):
            n += 1
        for sub in sub_jaxprs(eqn):
            n += count(sub, name, in_loops_only=in_loops_only, _in_loop=loop)
    return n


def eqns_named(jaxpr, name):
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            out.append(eqn)
        for sub in sub_jaxprs(eqn):
            out += eqns_named(sub, name)
    return out


def paper(name, batch=8, **params):
    prob = problems.get(name, **params)
    model = prob.make_controller(jax.random.PRNGKey(0), zero_last=False)
    x0 = jnp.asarray(prob.sample_data("paper", batch, batch)[0])
    return prob, model, x0


def traced(prob, model, x0, mode, backward):
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon, validate=False)
    return jax.make_jaxpr(lambda m: sb.value_and_update(m, x0, flow=mode, backward=backward, **kw)[1])(model).jaxpr


#: the two ways the sweep brings in K_nᵀ·ac_n
PATHS = ("batched", "per_step")


def sweep(name, path):
    """The sweep with ``path``'s input Jacobian: activations kept where the batched Jacobian
    reads them, the simulator's linearisation saved where the step has a solve (quantum)."""
    return ReverseSweep(path, keep_activations=path == "batched", save_linearization=name == "quantum")


@pytest.fixture(scope="module", params=[(n, p) for n in ("cartpole", "guidance", "quantum") for p in PATHS])
def programs(request):
    name, path = request.param
    prob, model, x0 = paper(name)
    chosen = sweep(name, path)
    out = {m: traced(prob, model, x0, m, chosen) for m in ("R", "M", "S", "C")}
    out["ad-R"], out["ad-C"] = (traced(prob, model, x0, m, Autodiff()) for m in ("R", "C"))
    return name, path, out


@pytest.mark.slow
def test_fused_C_runs_controller_and_simulator_once(programs):
    name, path, j = programs
    # the controller runs once per step in the loops (the parameter gradients outside them
    # may use kept activations or recompute them on the rows)
    t = {m: count(j[m], "tanh", in_loops_only=True) for m in j}
    assert t["R"] >= 1
    assert t["C"] == t["R"] == t["M"] == t["S"], t
    assert t["ad-C"] == 2 * t["ad-R"], t
    if name == "quantum":
        s = {m: count(j[m], "tridiagonal_solve") for m in j}
        # the forward solve and its transpose in the sweep (the step's linearisation is saved,
        # not solved again)
        assert s["R"] == s["M"] == 2, s
        assert s["C"] == s["R"], s  # both adjoints share the simulator's linearisation
        assert s["ad-C"] == 2 * s["ad-R"], s


@pytest.mark.parametrize("path", PATHS)
def test_C_solves_both_adjoints_as_two_right_hand_sides(path):
    prob, model, x0 = paper("quantum")
    chosen = sweep("quantum", path)
    j = traced(prob, model, x0, "C", chosen)
    rhs_cols = sorted(e.invars[3].aval.shape[-1] for e in eqns_named(j, "tridiagonal_solve"))
    # forward: 1 column; reverse: M and R together (on the CPU the two columns of one solve;
    # off it every system keeps one column, see test_quantum.py)
    assert rhs_cols == [1, 2], rhs_cols


def test_parameter_gradients_are_deferred_out_of_the_loops(programs):
    name, path, j = programs
    loop = {m: count(j[m], "dot_general", in_loops_only=True) for m in j}  # convs are matmuls too
    fwd = loop["M"]  # M's loops: the forward controller only (no controller backward)
    assert fwd >= 1
    assert loop["S"] == fwd, loop
    if path == "per_step":
        assert loop["R"] == 2 * fwd, loop  # forward + input-vjp; no per-step parameter products
    else:  # no controller backward in any loop: at most the contraction J_nᵀ·ac (m > 1)
        assert loop["R"] - fwd == (1 if name == "guidance" else 0), loop
    assert loop["C"] == loop["R"], loop  # only the R field needs the controller's input-vjp


def test_segments_under_jit_match_plain():
    prob, model, x0 = paper("cartpole", steps=20)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon, flow="C", validate=False)

    def upd(p, backward):
        return sb.value_and_update(eqx.combine(p, static), x0, backward=backward, **kw)[1]

    ref = jax.jit(lambda p: upd(p, ReverseSweep(keep_activations=True)))(params)
    for ce in (5, 4):
        got = jax.jit(lambda p, ce=ce: upd(p, ReverseSweep(keep_activations=True, checkpoint_every=ce)))(params)
        for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-7 * float(np.max(np.abs(b))))


@pytest.mark.parametrize("mode", ["C", "M"])
def test_memory_estimate_is_within_a_factor_two_of_xla(mode):
    """The estimate of the sweep against XLA's buffer assignment, per step (T vs 2T)."""
    prob, model, x0 = paper("cartpole")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    live = sb.Flow(mode).gates(prob.horizon).live
    chosen = sweep("cartpole", "batched")
    temps = []
    for steps in (50, 100):
        p2 = problems.get("cartpole", steps=steps)
        f = jax.jit(
            lambda p: sb.value_and_update(
                eqx.combine(p, static),
                x0,
                step=p2.step,
                loss=p2.loss,
                horizon=steps,
                flow=mode,
                backward=chosen,
                validate=False,
            )[1]
        )
        temps.append(f.lower(params).compile().memory_analysis().temp_size_in_bytes)
    measured = (temps[1] - temps[0]) / 50
    est = B.memory_estimate(chosen, model, x0, step=prob.step, loss=prob.loss, horizon=prob.horizon, live_ctrl=live)[
        "per_step"
    ]
    assert 0.5 * measured <= est <= 2.0 * measured, (est, measured)


def test_auto_segments_follow_the_budget():
    prob, model, x0 = paper("cartpole")
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon, gates=sb.Flow("C").gates(prob.horizon).fields)
    sweeps = lambda **o: [c for c in candidates(model, x0, **kw, **o) if isinstance(c, ReverseSweep)]
    assert all(c.checkpoint_every is None for c in sweeps())  # the paper setting fits the default
    for c in sweeps(memory_budget=100_000):
        assert c.checkpoint_every is not None and prob.horizon % c.checkpoint_every == 0
        assert 1 <= c.checkpoint_every < prob.horizon
    assert {c.checkpoint_every for c in sweeps(checkpoint_every=7)} == {7}


@pytest.mark.slow
def test_a_saved_linearization_gives_the_same_bits_as_a_recomputed_one():
    """Saved or recomputed, the simulator's linearisation gives the same update bits, with
    and without segments (quantum: a solve per step)."""
    prob, model, x0 = paper("quantum", steps=16)
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon, validate=False)
    for mode in ("R", "C"):
        for seg in (None, 4):
            base = ReverseSweep(keep_activations=True, checkpoint_every=seg)
            saved = sb.value_and_update(
                model, x0, flow=mode, backward=dataclasses.replace(base, save_linearization=True), **kw
            )[1]
            again = sb.value_and_update(model, x0, flow=mode, backward=base, **kw)[1]
            for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(again)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{mode} seg={seg}")


def test_the_cli_reaches_the_reverse_loop_through_six_functions(tmp_path):
    """``stablebptt train --mode C`` reaches the strategy's reverse loop through at most six of
    the library's functions: the stack of library frames when the training program traces the
    reverse sweep, between the command (``cli.train``) and the sweep's ``backward``."""
    import sys

    from typer.testing import CliRunner

    from stablebptt import core
    from stablebptt.cli.app import app

    stacks = []
    sweep_backward = core.backward._Sweep.backward.__code__

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is sweep_backward:
            names, f = [], frame
            while f is not None:
                if "stablebptt" in f.f_code.co_filename:
                    names.append(f.f_code.co_qualname)
                f = f.f_back
            stacks.append(names[::-1])

    sys.setprofile(profile)
    try:
        res = CliRunner().invoke(
            app,
            [
                "train",
                "cartpole",
                "-p",
                "steps=4",
                "--mode",
                "C",
                "--epochs",
                "1",
                "--n-train",
                "8",
                "--n-test",
                "8",
                "--backward",
                "per_step",
                "--no-overlap-eval",
                "--out",
                str(tmp_path),
            ],
        )
    finally:
        sys.setprofile(None)
    assert res.exit_code == 0, res.output
    training = [s for s in stacks if "make_train.<locals>.updates_fn" in s]
    assert training, stacks
    for s in training:
        between = s[s.index("train") + 1 : -1]
        assert len(between) <= 6, between
