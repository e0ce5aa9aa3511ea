"""Adapters: a problem from the engines JAX researchers already simulate with.

* :func:`brax_problem` (``stablebptt.problems.adapters.brax``, extra ``[brax]``): a Brax
  environment's physics pipeline, the state (q, q̇), a state loss or a reward to maximise.
* :func:`ode_problem` / :func:`ode_step` (``stablebptt.problems.adapters.diffrax``, extra
  ``[diffrax]``): a controlled ODE f(t, y, c), one ``diffeqsolve`` per step.
* :func:`phiflow_problem` (``stablebptt.problems.adapters.phiflow``, extra ``[phiflow]``): a
  PhiFlow step on fields (grids, tensors), JAX kept in float32.
* :func:`jax_cfd_problem` / :func:`navier_stokes_step` (``stablebptt.problems.adapters.jax_cfd``,
  extra ``[jax-cfd]``): a jax-cfd velocity step with a control, on current JAX.
* :func:`exponax_problem` / :func:`exponax_step` / :func:`gaussian_actuators`
  (``stablebptt.problems.adapters.exponax``, extra ``[exponax]``): a PDE of an exponax
  stepper with an additive control (a force field or K actuators).

Each returns a :class:`~stablebptt.problems.Problem` for :func:`stablebptt.value_and_update` and
:func:`stablebptt.training.runner.train`. The engines are imported when an adapter is first used, so this
package imports without them.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "brax_problem": ".brax",
    "ode_problem": ".diffrax",
    "ode_step": ".diffrax",
    "phiflow_problem": ".phiflow",
    "jax_cfd_problem": ".jax_cfd",
    "navier_stokes_step": ".jax_cfd",
    "exponax_problem": ".exponax",
    "exponax_step": ".exponax",
    "gaussian_actuators": ".exponax",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
