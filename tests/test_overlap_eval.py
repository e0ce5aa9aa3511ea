"""Overlapped evaluation (train.OVERLAP_EVAL): evaluation on a second CPU device while the next
epoch trains gives exactly the numbers of the sequential loop, including divergence.

JAX's CPU device count is fixed when its backend starts, so the runs happen in a fresh
process with two CPU devices."""
import json
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent('''
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    import equinox as eqx, numpy as np
    from stablebptt import problems, train as T
    from stablebptt.config import RunConfig

    def run(overlap, prob, cfg):
        T.OVERLAP_EVAL = overlap
        calls = []
        made = []
        compiled_eval = []  # the evaluate flag of each stepper compilation
        orig_dev, orig_compile = T._OverlappedEvaluation.device, T._Stepper.compile
        T._OverlappedEvaluation.device = staticmethod(lambda K: made.append(orig_dev(K)) or made[-1])
        T._Stepper.compile = lambda self, *a, evaluate=True: compiled_eval.append(evaluate) or orig_compile(
            self, *a, evaluate=evaluate)
        try:
            (r,) = T.train(prob, cfg, 0, on_epoch=lambda e, rows: calls.append([e, rows[0] is None]))
        finally:
            T._OverlappedEvaluation.device, T._Stepper.compile = staticmethod(orig_dev), orig_compile
        leaves = jax.tree_util.tree_leaves(eqx.filter(r.model, eqx.is_inexact_array))
        return {"history": {k: v for k, v in r.history.items() if k != "wall_s"},
                "diverged_epoch": r.diverged_epoch, "params": [np.asarray(a).tolist() for a in leaves],
                "calls": calls, "overlapped": made[0] is not None, "initial": r.initial,
                "compiled_eval": compiled_eval}

    cases = {
        "cartpole_C": (problems.get("cartpole", steps=10),
                       RunConfig(problem="cartpole", problem_params={"steps": 10}, mode="C", epochs=5, n_train=32, n_test=16)),
        "cartpole_R_every2": (problems.get("cartpole", steps=10),
                              RunConfig(problem="cartpole", problem_params={"steps": 10}, mode="R", epochs=5,
                                        n_train=32, n_test=16, eval_every=2)),
        "linear_diverges": (problems.get("linear", a=1.0, theta0=0.1),
                            RunConfig(problem="linear", problem_params=dict(a=1.0, theta0=0.1), mode="R",
                                      optimizer="sgd", lr=0.3, batch_size=1, n_train=1, n_test=1, epochs=20)),
    }
    out = {name: {str(ov): run(ov, *c) for ov in (False, True)} for name, c in cases.items()}
    print(json.dumps(out))
''')


def test_overlapped_evaluation_gives_the_sequential_numbers():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, runs in out.items():
        seq, ov = runs["False"], runs["True"]
        assert not seq["overlapped"] and ov["overlapped"], name
        assert ov["history"] == seq["history"], name
        assert ov["diverged_epoch"] == seq["diverged_epoch"], name
        assert ov["params"] == seq["params"], name
        assert ov["calls"] == seq["calls"], name  # on_epoch: same epochs, same divergence reports
        # the untrained controller's losses, evaluated on the second device while epoch 1 trains
        assert ov["initial"] == seq["initial"], name
        assert all(np.isfinite(v) for v in ov["initial"].values()), name
        # overlapped: the training device compiles no evaluating program
        assert seq["compiled_eval"] == [True] and ov["compiled_eval"] == [False], name
    assert out["linear_diverges"]["True"]["diverged_epoch"] == 4
    assert out["cartpole_R_every2"]["True"]["history"]["epoch"] == [2, 4, 5]
    assert out["cartpole_C"]["True"]["history"]["epoch"] == [1, 2, 3, 4, 5]
