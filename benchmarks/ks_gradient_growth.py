"""How fast the KS physics' own gradient grows with the horizon, per domain length L.

For each L ∈ {22, 36, 60, 100} of the ``ks`` problem (field control, Δt = 0.5, N = 64 for
L ≤ 36 and 128 above) and T ∈ {10, 100, 400}: the gradient of the mean energy
(1/T) Σ_{n=1}^T ½⟨u_n²⟩ with respect to a constant force field f (held over all T steps, f = 0
where it is evaluated), from each of 8 initial states on the attractor (``sample_data`` seed 0),
one state at a time. Prints the geometric mean, min and max over the states of ‖dL/df‖₂ as a
Markdown table and writes it as JSON next to this script (``data/ks-gradient-growth.json``).
No controller is involved: a growth with T is the physics Jacobian's, the paper's "balanced
gradient flow" premise failing.

    python benchmarks/ks_gradient_growth.py [--states 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from stablebptt import problems

LENGTHS = (22, 36, 60, 100)
HORIZONS = (10, 100, 400)


def gradient_norms(L: int, horizon: int, states: int) -> tuple[np.ndarray, float]:
    """‖dL/df‖₂ per initial state (states,) and the seconds per state after compiling."""
    p = problems.get("ks", L=L, actuators=0, rc=0.0, steps=horizon)
    x0, _ = p.sample_data(0, states, 0)

    def loss(f, u0):
        def body(u, _):
            u = p.step(u, f[None])
            return u, 0.5 * jnp.mean(jnp.square(u))

        _, e = jax.lax.scan(body, u0[None], None, length=horizon)
        return jnp.mean(e)

    grad = jax.jit(jax.grad(loss))
    f0 = jnp.zeros(p.control_shape, jnp.float32)
    grad(f0, jnp.asarray(x0[0])).block_until_ready()
    t = time.perf_counter()
    norms = np.array([float(jnp.linalg.norm(grad(f0, jnp.asarray(u)))) for u in x0])
    return norms, (time.perf_counter() - t) / states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data" / "ks-gradient-growth.json")
    args = ap.parse_args()
    rows = []
    print("| L | N | " + " | ".join(f"T = {T}: ‖dL/df‖ geo-mean [min, max]" for T in HORIZONS) + " |")
    print("|---|---|" + "---|" * len(HORIZONS))
    for L in LENGTHS:
        cells = []
        for T in HORIZONS:
            norms, sec = gradient_norms(L, T, args.states)
            finite = norms[np.isfinite(norms)]
            gm = float(np.exp(np.mean(np.log(finite)))) if len(finite) else float("nan")
            rows.append(dict(L=L, T=T, norms=norms.tolist(), geomean=gm, seconds_per_state=sec))
            cells.append(f"{gm:.3g} [{norms.min():.3g}, {norms.max():.3g}]")
        n = 64 if L <= 36 else 128
        print(f"| {L} | {n} | " + " | ".join(cells) + " |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            dict(dt=0.5, states=args.states, jax=jax.__version__, device=str(jax.devices()[0]), rows=rows), indent=1
        )
    )
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
