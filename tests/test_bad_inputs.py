"""Bad input, table-driven: every row is a command line that must end, before anything
compiles, in exit code 2 and ONE line ``error: …`` that names the bad value (the option, the
file, or the user's file and line), without a traceback. ``--debug`` shows the traceback.

Covers mistakes in a user's own problem file (syntax, imports, exceptions in make /
sample_data / make_controller / step, states and controls of the wrong shape or dtype), every
path option (unwritable, a file where a folder belongs, corrupt weights) and the options the
CLI already refused (tests/test_cli.py, tests/test_own_problems.py)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stablebptt.cli.app import app

runner = CliRunner()

#: a working problem (a point mass pushed to the origin); the rows below break one line of it
GOOD = textwrap.dedent("""\
    import jax.numpy as jnp
    import numpy as np
    from stablebptt import TrajectoryLoss
    from stablebptt.problems.controllers import MLP
    from stablebptt.problems import Problem

    PARAMS = {"dt": (0.1, "time step"), "steps": (4, "horizon"), "nx": (16, "an int parameter")}


    def make(dt=0.1, steps=4, nx=16):
        nx = int(nx)

        def step(x, c):
            vel = x[:, 1] + dt * c[:, 0]
            return jnp.stack([x[:, 0] + dt * vel, vel], axis=1)

        def sample(seed, n_train, n_test):
            rng = np.random.default_rng(0 if seed == "paper" else seed)
            return tuple(rng.uniform(-1, 1, (n, 2)).astype(np.float32) for n in (n_train, n_test))

        def controller(key, zero_last=False):
            return MLP(key, 2, (1,), widths=(8,), zero_last=zero_last)

        return Problem(name="pm", params=dict(dt=dt, steps=steps, nx=nx), step=step,
                       loss=TrajectoryLoss(lambda x: jnp.mean(x[:, 0] ** 2), on="every"), horizon=steps,
                       sample_data=sample, state_shape=(2,), control_shape=(1,), defaults=dict(epochs=1),
                       make_controller=controller)
""")


def broken(old: str, new: str) -> str:
    assert GOOD.count(old) == 1, old
    return GOOD.replace(old, new)


def line_of(text: str, fragment: str) -> int:
    """1-based number of the line of ``text`` that holds ``fragment``."""
    (n,) = [i + 1 for i, line in enumerate(text.splitlines()) if fragment in line]
    return n


#: user problem files: name -> text; the expected line is found by a fragment of it
FILES = {
    "syntax.py": broken("def make(dt=0.1, steps=4, nx=16):", "def make(dt=0.1, steps=4, nx=16)"),
    "imports.py": broken("import numpy as np\n", "import numpy as np\nimport no_such_module_h5\n"),
    "raises.py": broken("    nx = int(nx)\n", "    nx = int(nx)\n    raise RuntimeError('dt is bad')\n"),
    "datashape.py": broken("(n, 2)).astype", "(n, 3)).astype"),
    "datatype.py": broken(".astype(np.float32)", ".astype(np.int32)"),
    "datanan.py": broken(".astype(np.float32)", ".astype(np.float32) * np.nan"),
    "datasingle.py": broken(
        "return tuple(rng.uniform(-1, 1, (n, 2)).astype(np.float32) for n in (n_train, n_test))",
        "return rng.uniform(-1, 1, (n_train, 2)).astype(np.float32)",
    ),
    "sampleraises.py": broken("        rng = np.random", "        rng = {}['seed']\n        rng = np.random"),
    "controlshape.py": broken("MLP(key, 2, (1,),", "MLP(key, 2, (3,),"),
    "controlinput.py": broken("MLP(key, 2, (1,),", "MLP(key, 5, (1,),"),
    "controllerraises.py": broken("MLP(key, 2, (1,), widths", "MLP(key, 2, (1,), width"),
    "stepraises.py": broken("        vel = x[:, 1]", "        raise KeyError('no velocity')\n        vel = x[:, 1]"),
    "stepshape.py": broken("return jnp.stack([x[:, 0] + dt * vel, vel], axis=1)", "return x[:, :1] + vel[:, None]"),
    "stepdtype.py": broken("vel], axis=1)", "vel], axis=1).astype(jnp.bfloat16)"),
    "lossshape.py": broken("lambda x: jnp.mean(x[:, 0] ** 2)", "lambda x: x[:, 0] ** 2"),
    "good.py": GOOD,
}
#: (file, fragment of the line the error must name)
LINES = {
    "syntax.py": "def make(",
    "imports.py": "no_such_module_h5",
    "raises.py": "RuntimeError",
    "datashape.py": "def sample(",
    "datatype.py": "def sample(",
    "datanan.py": "def sample(",
    "datasingle.py": "def sample(",
    "sampleraises.py": "{}['seed']",
    "controlshape.py": "def controller(",
    "controlinput.py": "def controller(",
    "controllerraises.py": "MLP(key",
    "stepraises.py": "raise KeyError",
    "stepshape.py": "def step(",
    "stepdtype.py": "def step(",
    "lossshape.py": "lambda x: x[:, 0] ** 2",
}

SMALL = ["--epochs", "1", "--n-train", "16", "--n-test", "8"]
FAST = ["--epochs", "1", "--n-train", "8", "--n-test", "8", "-p", "steps=3"]  # cartpole, never reached
LINEAR = 'SPECTEXT:name = "x"\n[[experiment]]\nproblem = "linear"\n'  # a sweep spec; a row adds a line
#: a valid sweep spec of the repository (the toy figures' quick sweep)
TOYS_QUICK = str(Path(__file__).resolve().parents[1] / "experiments" / "paper" / "specs" / "toys-quick.toml")

ROWS = [  # (id, arguments, words the one line must hold); FILE:LINE stands for the broken file's line
    # -- mistakes in the user's problem file
    ("syntax error", ["train", "syntax.py:make", *SMALL], ["FILE:LINE", "SyntaxError"]),
    ("import error", ["train", "imports.py:make", *SMALL], ["FILE:LINE", "no_such_module_h5"]),
    ("make raises", ["train", "raises.py:make", *SMALL], ["FILE:LINE", "RuntimeError", "dt is bad", "make()"]),
    ("data shape", ["train", "datashape.py:make", *SMALL], ["FILE:LINE", "(16, 3)", "state_shape", "(2,)", "(16, 2)"]),
    ("data dtype", ["train", "datatype.py:make", *SMALL], ["FILE:LINE", "int32", "floating"]),
    ("data not finite", ["train", "datanan.py:make", *SMALL], ["FILE:LINE", "non-finite"]),
    ("data not a pair", ["train", "datasingle.py:make", *SMALL], ["FILE:LINE", "ndarray", "pair (train, test)"]),
    ("sample_data raises", ["train", "sampleraises.py:make", *SMALL], ["FILE:LINE", "KeyError", "'seed'"]),
    ("control shape", ["train", "controlshape.py:make", *SMALL], ["FILE:LINE", "(8, 3)", "control_shape", "(1,)"]),
    ("controller input", ["train", "controlinput.py:make", *SMALL], ["FILE:LINE", "cannot take", "(8, 2)"]),
    ("make_controller raises", ["train", "controllerraises.py:make", *SMALL], ["FILE:LINE", "TypeError", "width"]),
    ("step raises", ["train", "stepraises.py:make", *SMALL], ["FILE:LINE", "KeyError", "no velocity", "step()"]),
    ("step shape", ["train", "stepshape.py:make", *SMALL], ["FILE:LINE", "(8, 1)", "(8, 2)", "state_shape"]),
    ("step dtype", ["train", "stepdtype.py:make", *SMALL], ["FILE:LINE", "bfloat16", "float32"]),
    ("loss not scalar", ["train", "lossshape.py:make", *SMALL], ["FILE:LINE", "state_loss", "(8,)", "scalar"]),
    ("user param not an int", ["train", "good.py:make", "-p", "nx=abc", *SMALL], ["nx='abc'", "integer"]),
    ("user param unknown", ["train", "good.py:make", "-p", "stepz=3"], ["stepz", "steps"]),
    ("no such problem file", ["train", "nowhere.py:make"], ["no such file 'nowhere.py'"]),
    ("sweep of a broken problem", ["sweep", "SPEC:datashape.py:make"], ["datashape.py:", "(16, 3)", "state_shape"]),
    ("evaluate a missing run", ["evaluate", "no-run"], ["no-run"]),
    # -- path options
    (
        "out below a file",
        ["train", "cartpole", *FAST, "--out", "afile.txt/runs"],
        ["--out afile.txt/runs", "is a file"],
    ),
    ("out in /proc", ["train", "cartpole", *FAST, "--out", "/proc/h5-runs"], ["--out /proc/h5-runs", "cannot create"]),
    ("out not writable", ["train", "cartpole", *FAST, "--out", "UNWRITABLE/runs"], ["--out", "UNWRITABLE", "cannot"]),
    ("out is a file", ["train", "cartpole", *FAST, "--out", "afile.txt"], ["--out afile.txt", "not a folder"]),
    (
        "tensorboard is a file",
        ["train", "cartpole", *FAST, "--tensorboard", "afile.txt"],
        ["--tensorboard afile.txt", "not a folder"],
    ),
    (
        "init weights corrupt",
        ["train", "cartpole", *FAST, "--init-weights", "corrupt.npz"],
        ["--init-weights corrupt.npz", "not an .npz"],
    ),
    (
        "init weights pickled",
        ["train", "cartpole", *FAST, "--init-weights", "objects.npz"],
        ["--init-weights objects.npz", "not an .npz"],
    ),
    (
        "init weights of another controller",
        ["train", "good.py:make", *SMALL, "--init-weights", "other.npz"],
        ["--init-weights other.npz", "w9_kernel", "w0_kernel"],
    ),
    (
        "init weights missing",
        ["train", "cartpole", "--init-weights", "/no/such/w.npz"],
        ["/no/such/w.npz", "no such file"],
    ),
    ("param not a number", ["train", "cartpole", "-p", "poles=two"], ["poles='two'", "integer"]),
    ("param not a bool", ["train", "cartpole", "-p", "scale_mass=maybe"], ["scale_mass='maybe'", "true or false"]),
    (
        "sweep out below a file",
        ["sweep", TOYS_QUICK, "--out", "afile.txt/sw"],
        ["--out afile.txt/sw", "is a file"],
    ),
    ("sweep out not writable", ["sweep", TOYS_QUICK, "--out", "UNWRITABLE/sw"], ["--out", "UNWRITABLE"]),
    ("sweep workers 0", ["sweep", TOYS_QUICK, "--workers", "0"], ["--workers 0", "≥ 1"]),
    ("memory budget 0", ["train", "cartpole", "--memory-budget", "0"], ["--memory-budget 0", "> 0"]),
    (
        "evaluate per-state below a file",
        ["evaluate", "no-run", "--per-state", "afile.txt/x.csv"],
        ["--per-state afile.txt/x.csv", "is a file"],
    ),
    ("evaluate data corrupt", ["evaluate", "no-run", "--data", "corrupt.npz"], ["--data corrupt.npz", "not an .npz"]),
    (
        "diagnose weights corrupt",
        ["diagnose", "cartpole", "--weights", "corrupt.npz", "--out", "dg"],
        ["--weights corrupt.npz", "not an .npz"],
    ),
    ("diagnose out is a file", ["diagnose", "cartpole", "--out", "afile.txt"], ["--out afile.txt", "not a folder"]),
    (
        "animate out below a file",
        ["animate", "no-run", "--out", "afile.txt/a.gif"],
        ["--out afile.txt/a.gif", "is a file"],
    ),
    ("plot out is a file", ["plot", ".", "--out", "afile.txt"], ["--out afile.txt", "not a folder"]),
    ("results csv is a folder", ["results", ".", "--csv", "."], ["--csv .", "is a folder"]),
    # -- already refused (tests/test_cli.py), kept in the table
    ("unknown mode", ["train", "cartpole", "--mode", "Q"], ["'Q'"]),
    ("unknown problem", ["train", "pendulum"], ["'pendulum'"]),
    ("option of another problem", ["train", "cartpole", "--rc", "0.1"], ["--rc does not apply"]),
    ("epochs 0", ["train", "cartpole", "--epochs", "0"], ["epochs=0", "≥ 1"]),
    ("clip", ["train", "cartpole", "--clip", "foo"], ["'foo'", "'none', 'value' or 'norm'"]),
    ("backward", ["train", "cartpole", "--backward", "fast"], ["'fast'", "auto, autodiff"]),
    ("batch larger than the data", ["train", "cartpole", "--batch-size", "300"], ["batch_size=300", "n_train=256"]),
    ("eval every 0", ["train", "cartpole", "--eval-every", "0"], ["eval_every=0"]),
    ("sweep spec missing", ["sweep", "/no/such/spec.toml"], ["/no/such/spec.toml"]),
    ("sweep spec a name", ["sweep", "cartpole"], ["'cartpole': no such spec file"]),
    ("sweep spec not TOML", ["sweep", "SPECTEXT:[[experiment]"], ["spec.toml", "not valid TOML"]),
    ("results of nothing", ["results", "/no/such/folder"], ["/no/such/folder"]),
    ("diagnose unknown problem", ["diagnose", "pendulum"], ["'pendulum'"]),
    # -- inputs refused before this table, covered here too
    ("train unknown problem name", ["train", "nosuchproblem"], ["'nosuchproblem'"]),
    ("train unknown mode letter", ["train", "cartpole", "--mode", "X"], ["'X'"]),
    ("train bad schedule letter", ["train", "cartpole", "--mode", "RRQM"], ["mode schedule", "['Q']"]),
    ("train mode lowercase", ["train", "cartpole", "--mode", "r"], ["'r'"]),
    ("train clip bad", ["train", "cartpole", "--clip", "max"], ["'max'", "'none', 'value' or 'norm'"]),
    (
        "train clip threshold negative",
        ["train", "cartpole", "--clip", "value", "--clip-threshold", "-1"],
        ["clip_threshold"],
    ),
    ("train unknown optimizer", ["train", "cartpole", "--optimizer", "lbfgs"], ["'lbfgs'"]),
    ("train lr 0", ["train", "cartpole", "--lr", "0"], ["lr=0"]),
    ("train lr negative", ["train", "cartpole", "--lr", "-0.1"], ["lr=-0.1"]),
    ("train lr nan", ["train", "cartpole", "--lr", "nan"], ["lr=nan"]),
    ("train epochs negative", ["train", "cartpole", "--epochs", "-3"], ["epochs=-3"]),
    ("train batch size 0", ["train", "cartpole", "--batch-size", "0"], ["batch_size=0"]),
    ("train batch size negative", ["train", "cartpole", "--batch-size", "-4"], ["batch_size=-4"]),
    (
        "train batch larger than n-train",
        ["train", "cartpole", "--n-train", "16", "--batch-size", "32"],
        ["batch_size=32", "n_train=16"],
    ),
    ("train n-train 0", ["train", "cartpole", "--n-train", "0"], ["n_train=0"]),
    ("train n-train negative", ["train", "cartpole", "--n-train", "-5"], ["n_train=-5"]),
    ("train n-test 0", ["train", "cartpole", "--n-test", "0"], ["n_test=0"]),
    ("train unknown -p key", ["train", "cartpole", "-p", "polez=2"], ["polez"]),
    ("train -p without =", ["train", "cartpole", "-p", "poles"], ["'poles'"]),
    ("train truncate negative", ["train", "cartpole", "--truncate", "-1"], ["truncate=-1"]),
    ("train decay 0", ["train", "cartpole", "--decay", "0"], ["decay=0"]),
    ("train decay 1.5", ["train", "cartpole", "--decay", "1.5"], ["decay=1.5"]),
    ("train decay negative", ["train", "cartpole", "--decay", "-0.5"], ["decay=-0.5"]),
    ("train and-mask 2", ["train", "cartpole", "--and-mask", "2"], ["and_mask=2"]),
    ("train and-mask negative", ["train", "cartpole", "--and-mask", "-0.1"], ["and_mask=-0.1"]),
    ("train combiner bad", ["train", "cartpole", "--combiner", "bad"], ["'bad'"]),
    ("train checkpoint every 0", ["train", "cartpole", "--checkpoint-every", "0"], ["checkpoint_every"]),
    ("train checkpoint every often", ["train", "cartpole", "--checkpoint-every", "often"], ["'often'"]),
    ("train checkpoint every negative", ["train", "cartpole", "--checkpoint-every", "-2"], ["-2"]),
    ("train backward bad", ["train", "cartpole", "--backward", "bad"], ["'bad'", "auto, autodiff"]),
    ("train eval every negative", ["train", "cartpole", "--eval-every", "-1"], ["eval_every=-1"]),
    ("train data bad", ["train", "cartpole", "--data", "bad"], ["'bad'"]),
    (
        "train checkpoint seconds negative",
        ["train", "cartpole", "--checkpoint-seconds", "-5"],
        ["--checkpoint-seconds -5"],
    ),
    ("train memory budget negative", ["train", "cartpole", "--memory-budget", "-1"], ["--memory-budget -1"]),
    ("cartpole unknown param", ["train", "cartpole", "-p", "wind=1"], ["wind"]),
    ("guidance unknown param", ["train", "guidance", "-p", "wind=1"], ["wind"]),
    ("quantum unknown param", ["train", "quantum", "-p", "wind=1"], ["wind"]),
    ("linear unknown param", ["train", "linear", "-p", "wind=1"], ["wind"]),
    ("toy-field unknown param", ["train", "toy-field", "-p", "wind=1"], ["wind"]),
    ("toy-rotation unknown param", ["train", "toy-rotation", "-p", "wind=1"], ["wind"]),
    ("cartpole poles 0", ["train", "cartpole", "--poles", "0"], ["poles"]),
    ("cartpole steps 0", ["train", "cartpole", "--steps", "0"], ["steps"]),
    ("cartpole dt 0", ["train", "cartpole", "--dt", "0"], ["dt"]),
    ("guidance drivers 0", ["train", "guidance", "--drivers", "0"], ["drivers"]),
    ("guidance evaders 0", ["train", "guidance", "--evaders", "0"], ["evaders"]),
    ("quantum weighting 2", ["train", "quantum", "--weighting", "2"], ["weighting"]),
    ("quantum nx 0", ["train", "quantum", "--nx", "0"], ["nx"]),
    ("quantum option on linear", ["train", "linear", "--nx", "8"], ["--nx does not apply"]),
    ("guidance option on quantum", ["train", "quantum", "--drivers", "2"], ["--drivers does not apply"]),
    ("cartpole option on guidance", ["train", "guidance", "--poles", "2"], ["--poles does not apply"]),
    ("weighting option on cartpole", ["train", "cartpole", "--weighting", "3"], ["--weighting does not apply"]),
    ("guidance param not a number", ["train", "guidance", "-p", "rc=lots"], ["rc='lots'"]),
    ("user problem no function", ["train", "good.py:nosuch"], ["nosuch"]),
    ("module problem missing", ["train", "no_such_mod_h6:make"], ["no_such_mod_h6"]),
    ("sweep missing spec file", ["sweep", "/no/such/h6.toml"], ["/no/such/h6.toml"]),
    ("sweep unknown name", ["sweep", "nosuchsweep"], ["nosuchsweep"]),
    ("sweep spec unknown field", ["sweep", LINEAR + 'modez = ["R"]'], ["modez"]),
    (
        "sweep spec unknown top field",
        ["sweep", 'SPECTEXT:name = "x"\nseedz = 2\n[[experiment]]\nproblem = "linear"'],
        ["seedz"],
    ),
    ("sweep spec bad clip", ["sweep", LINEAR + 'clips = ["foo"]'], ["foo"]),
    ("sweep spec bad mode", ["sweep", LINEAR + 'modes = ["Q"]'], ["'Q'"]),
    (
        "sweep spec unknown problem",
        ["sweep", 'SPECTEXT:name = "x"\n[[experiment]]\nproblem = "pendulum"'],
        ["pendulum"],
    ),
    ("sweep spec bad config", ["sweep", LINEAR + "[experiment.config]\nepochs = 0"], ["epochs"]),
    ("sweep spec unknown config key", ["sweep", LINEAR + "[experiment.config]\nepochz = 1"], ["epochz"]),
    ("sweep spec seeds 0", ["sweep", 'SPECTEXT:name = "x"\nseeds = 0\n[[experiment]]\nproblem = "linear"'], ["seeds"]),
    ("sweep spec no experiments", ["sweep", 'SPECTEXT:name = "x"'], ["experiment"]),
    ("sweep workers negative", ["sweep", TOYS_QUICK, "--workers", "-1"], ["--workers -1"]),
    ("evaluate missing run folder", ["evaluate", "/no/such/run"], ["/no/such/run"]),
    ("evaluate folder not a run", ["evaluate", "emptydir"], ["emptydir"]),
    ("evaluate a file", ["evaluate", "afile.txt"], ["afile.txt"]),
    ("diagnose a missing folder as problem", ["diagnose", "/no/such/run", "--out", "dg"], ["'/no/such/run'"]),
    ("diagnose a folder as problem", ["diagnose", "emptydir", "--out", "dg"], ["'emptydir'"]),
    ("animate missing run folder", ["animate", "/no/such/run"], ["/no/such/run"]),
    ("animate folder not a run", ["animate", "emptydir"], ["emptydir"]),
    ("plot missing run folder", ["plot", "/no/such/run"], ["/no/such/run"]),
    ("plot folder not a run", ["plot", "emptydir"], ["emptydir"]),
    ("results folder not a run", ["results", "emptydir"], ["emptydir"]),
    ("results a file", ["results", "afile.txt"], ["afile.txt"]),
    ("problems unknown name", ["problems", "pendulum"], ["'pendulum'"]),
    ("problems unknown file", ["problems", "nowhere.py:make"], ["nowhere.py"]),
]


def _unwritable(tmp_path: Path) -> str | None:
    """A folder this process cannot create folders in (a read-only folder, or /sys for root), else None."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    candidates = [ro, Path("/sys")]
    for c in candidates:
        try:
            os.rmdir(__import__("tempfile").mkdtemp(dir=c))
        except OSError:
            return str(c)
    return None


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("STABLEBPTT_DEBUG", raising=False)
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "afile.txt").write_text("not a folder\n")
    (tmp_path / "emptydir").mkdir()  # a folder that is not a run
    (tmp_path / "corrupt.npz").write_bytes(bytes(range(256)) * 4)
    np.savez(tmp_path / "objects.npz", w0_kernel=np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "other.npz", w9_kernel=np.zeros((2, 2), np.float32))
    yield tmp_path
    (tmp_path / "readonly").exists() and (tmp_path / "readonly").chmod(0o700)


def _args(args: list[str], tmp_path: Path) -> list[str]:
    out = []
    for a in args:
        if a.startswith("SPEC:"):  # a sweep spec of this problem
            spec = tmp_path / "spec.toml"
            spec.write_text(
                f'name = "x"\nseeds = 1\n[[experiment]]\nproblem = "{a[5:]}"\nmodes = ["C"]\n'
                "[experiment.config]\nepochs = 1\nn_train = 16\nn_test = 8\n"
            )
            a = str(spec.name)
        elif a.startswith("SPECTEXT:"):
            (tmp_path / "spec.toml").write_text(a[9:] + "\n")
            a = "spec.toml"
        elif "UNWRITABLE" in a:
            where = _unwritable(tmp_path)
            if where is None:
                pytest.skip("no folder here is unwritable for this user")
            a = a.replace("UNWRITABLE", where)
        out.append(a)
    if out[0] in ("train", "sweep") and "--out" not in out:
        out += ["--out", "runs"]
    return out


def _expected(words: list[str], args: list[str]) -> list[str]:
    file = next((a.split(":")[0] for a in args if a.endswith(".py:make")), None)
    unwritable = next((a for a in args if "readonly" in a or a.startswith("/sys")), "")
    return [
        w.replace("FILE:LINE", f"{file}:{line_of(FILES[file], LINES[file])}:")
        if file in LINES
        else w.replace("UNWRITABLE", str(Path(unwritable).parent) if "/" in unwritable else unwritable)
        for w in words
    ]


@pytest.mark.slow
@pytest.mark.parametrize("args, words", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_naming_it(workdir, args, words):
    args = _args(args, workdir)
    res = runner.invoke(app, args)
    text = res.output.strip()
    assert res.exit_code == 2, f"{args}\n{text}\n{res.exception!r}"
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error: ") and "Traceback" not in text, text
    flat = " ".join(text.split())
    for w in _expected(words, args):
        assert w in flat, (w, text)


def test_the_table_is_large_and_its_rows_distinct():
    assert len(ROWS) >= 30 and len({r[0] for r in ROWS}) == len(ROWS)
    assert len({tuple(r[1]) for r in ROWS}) == len(ROWS)


def test_the_good_problem_passes_the_checks(workdir):
    """The rows differ from a problem that passes every check (so each row fails for its break)."""
    from stablebptt import problems
    from stablebptt.training.config import RunConfig

    prob = problems.get("good.py:make")
    problems.check_for_training(prob, RunConfig(problem="good.py:make", epochs=1, n_train=16, n_test=8), 0)


def test_debug_shows_the_traceback_of_user_code(workdir, monkeypatch):
    """--debug raises the located error with the user's exception (and its frames) as its cause."""
    from stablebptt.problems import UserCodeError

    monkeypatch.setenv("STABLEBPTT_DEBUG", "0")  # restored after the test (--debug sets it to 1)
    res = runner.invoke(app, ["--debug", "train", "stepraises.py:make", *SMALL, "--out", "runs"])
    assert isinstance(res.exception, UserCodeError), res.output
    assert isinstance(res.exception.__cause__, KeyError)
    tb = res.exception.__cause__.__traceback__
    import traceback

    assert any(f.filename.endswith("stepraises.py") for f in traceback.extract_tb(tb))


def _cli(*args, cwd):
    env = dict(os.environ, STABLEBPTT_CACHE_DIR=str(Path(cwd) / "cache"))
    env.pop("STABLEBPTT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-c", "from stablebptt.cli import main; main()", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_the_terminal_sees_one_line_and_debug_a_traceback(workdir):
    """A real process: the data of the wrong shape (that ended in XLA's "dot_general requires
    contracting dimensions") is one line on stderr, exit 2; with --debug a traceback."""
    p = _cli("train", "datashape.py:make", *SMALL, "--out", "runs", cwd=workdir)
    line = f"datashape.py:{line_of(FILES['datashape.py'], 'def sample(')}:"
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(f"error: {line} sample_data returned"), p.stderr
    d = _cli("--debug", "train", "stepraises.py:make", *SMALL, "--out", "runs", cwd=workdir)
    assert d.returncode != 0 and "Traceback" in d.stderr and "no velocity" in d.stderr, d.stderr[-2000:]
    assert not Path(workdir, "runs").exists()  # nothing written
