"""Animations: a tiny trained run becomes a GIF (or MP4) with the documented frame count."""

import math

import imageio.v3 as iio
import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from stablebptt import problems
from stablebptt.analysis.animate import animate, default_stride, frame_indices, render_frames, write_frames
from stablebptt.cli.app import app
from stablebptt.experiments.run import run
from stablebptt.training.config import RunConfig


def _frames(path):
    return iio.imread(path, index=None)


def test_frame_indices():
    assert frame_indices(4) == [0, 1, 2, 3, 4]
    assert frame_indices(100) == list(range(101))
    assert default_stride(128) == 2 and len(frame_indices(128)) == 65
    for T, s in [(100, 3), (60, 7), (5, 10)]:
        idx = frame_indices(T, s)
        assert len(idx) == math.ceil(T / s) + 1 and idx[0] == 0 and idx[-1] == T
    with pytest.raises(ValueError, match="stride"):
        frame_indices(10, 0)


def test_animate_linear_run(tmp_path):
    folder = run(RunConfig(problem="linear", epochs=2, lr=0.01, batch_size=1, n_train=1, n_test=1), 0, tmp_path)
    path = animate(folder)
    assert path == folder / "animation.gif" and path.stat().st_size > 0
    frames = _frames(path)
    T = problems.get("linear").horizon
    assert frames.shape[0] == T + 1 == 5  # one frame per simulator step, x_0 … x_T
    assert frames.ndim == 4 and frames.shape[-1] in (3, 4)
    # consecutive frames differ (the state is drawn up to the current step)
    assert all(not np.array_equal(frames[i], frames[i + 1]) for i in range(len(frames) - 1))
    with pytest.raises(ValueError, match=".gif or .mp4"):
        animate(folder, out=tmp_path / "a.avi")


@pytest.mark.slow
def test_animate_cartpole_run_cli(tmp_path):
    cfg = RunConfig(problem="cartpole", epochs=1, n_train=8, n_test=8, batch_size=8)
    folder = run(cfg, 0, tmp_path / "runs")
    out = tmp_path / "cp.gif"
    res = CliRunner().invoke(app, ["animate", str(folder), "--states", "2", "--stride", "10", "--out", str(out)])
    assert res.exit_code == 0, res.output
    frames = _frames(out)
    assert frames.shape[0] == 100 // 10 + 1  # ceil(T / stride) + 1 with T = 100
    assert frames.shape[2] == 2 * 320  # two rollouts side by side
    res = CliRunner().invoke(app, ["animate", str(tmp_path)])
    assert res.exit_code != 0 and "not a finished run folder" in res.output, res.output


@pytest.mark.parametrize(
    "name, params, stride",
    [("guidance", dict(steps=6), None), ("quantum", dict(steps=5), 2), ("toy-rotation", {}, None)],
)
@pytest.mark.slow
def test_renderers(tmp_path, name, params, stride):
    p = problems.get(name, **params)
    model = p.make_controller(jax.random.PRNGKey(0), zero_last=False)
    _, test = p.sample_data(0, 3, 3)
    frames = render_frames(p, model, test[:3], stride=stride)
    assert len(frames) == len(frame_indices(p.horizon, stride))
    assert len({f.shape for f in frames}) == 1 and frames[0].dtype == np.uint8
    assert frames[0].std() > 0  # something was drawn
    path = write_frames(frames, tmp_path / f"{name}.gif", fps=5)
    assert _frames(path).shape[0] == len(frames)


def test_mp4(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    p = problems.get("linear", steps=6)
    frames = render_frames(p, p.make_controller(None), np.ones((2, 1), np.float32))
    path = write_frames(frames, tmp_path / "lin.mp4", fps=4)
    back = iio.imread(path, plugin="FFMPEG", index=None)
    assert back.shape[0] == 7 and back.shape[1:3] == frames[0].shape[:2]


# ----------------------------------------------------------------------------- what the pictures show
def _guidance_rollout(steps=12, states=3, far_driver=None):
    """A short guidance rollout of a random controller; ``far_driver`` = (rollout, driver, distance)
    moves one driver that far from the origin in every state (to leave the view)."""
    from stablebptt.analysis.animate import rollout

    p = problems.get("guidance", steps=steps)
    model = p.make_controller(jax.random.PRNGKey(1), zero_last=False)
    _, test = p.sample_data(0, states, states)
    xs, cs = rollout(p, model, test[:states])
    if far_driver is not None:
        i, k, dist = far_driver
        xs = xs.copy()
        xs[:, i, k, 0] = [dist, -dist]
    return p, xs, cs


@pytest.mark.slow
def test_guidance_frames_the_evaders_and_the_target():
    from stablebptt.analysis.animate import GUIDANCE_TRAIL, build_scene, guidance_view

    p, xs, cs = _guidance_rollout(far_driver=(1, 0, 40.0))
    n_d = p.control_shape[0]
    scene = build_scene(p, xs, cs)
    T, S = xs.shape[0] - 1, xs.shape[1]
    assert len(scene.panels) == S and all(set(d) == {"view", "distance"} for d in scene.panels)
    for i, panel in enumerate(scene.panels):
        (x0, x1), (y0, y1) = panel["view"].get_xlim(), panel["view"].get_ylim()
        ev = xs[:, i, n_d:, 0]  # (T+1, n_e, 2) every evader position of the rollout
        # every evader at every step and the target (origin) are inside the view ...
        assert x0 < ev[..., 0].min() and ev[..., 0].max() < x1 and y0 < ev[..., 1].min() and ev[..., 1].max() < y1
        assert x0 < 0 < x1 and y0 < 0 < y1
        # ... and the view is framed on them, not on the drivers: its size follows the
        # evaders' and origin's extent, so they are not a dot
        need = max(
            np.ptp(np.concatenate([ev[..., 0].ravel(), [0.0]])), np.ptp(np.concatenate([ev[..., 1].ravel(), [0.0]]))
        )
        assert x1 - x0 <= max(1.5 * need, 2 * 1.5)
        c, r = guidance_view(ev)
        np.testing.assert_allclose([x0, x1, y0, y1], [c[0] - r, c[0] + r, c[1] - r, c[1] + r])
    # the far driver (rollout 1, driver 0) is outside the view: drawn as an edge marker inside it
    edge = scene.info["edge_markers"]
    for n in (0, T // 2, T):
        scene.update(n)
        (x0, x1), (y0, y1) = scene.panels[1]["view"].get_xlim(), scene.panels[1]["view"].get_ylim()
        ex, ey = edge[1][0].get_data()
        assert len(ex) == 1 and x0 < ex[0] < x1 and y0 < ey[0] < y1
        # pointing to the driver: the marker sits on the view's edge facing it (+x, −y)
        assert ex[0] > (x0 + x1) / 2 and ey[0] < (y0 + y1) / 2
        # trails hold the recent past only
        segs = scene.info["trails"][0][-1].get_segments()
        assert len(segs) == min(n, GUIDANCE_TRAIL)
    frames = [scene.frame(n) for n in frame_indices(T)]
    assert len(frames) == T + 1 and len({f.shape for f in frames}) == 1


@pytest.mark.slow
def test_quantum_has_a_colour_bar_and_the_growing_overlap():
    from stablebptt.analysis.animate import build_scene, rollout
    from stablebptt.problems.quantum import eigenstate

    p = problems.get("quantum", steps=6, target=4)
    model = p.make_controller(jax.random.PRNGKey(0))
    _, test = p.sample_data(0, 5, 5)
    xs, cs = rollout(p, model, test[:5])
    scene = build_scene(p, xs, cs)
    T = 6
    assert all(set(d) == {"density", "target", "overlap", "control"} for d in scene.panels)
    # one colour bar per row of (at most 4) panels, for the density images
    assert len(scene.colorbars) == 2
    img = scene.panels[0]["density"].images[0]
    for cax in scene.colorbars:
        assert cax in scene.fig.axes and "ψ" in cax.get_ylabel()
        assert cax.get_ylim()[1] == pytest.approx(img.norm.vmax)
    # the overlap with the target eigenstate, from the states
    t = eigenstate(4, p.params["nx"]).astype(np.float64)
    ref = (xs[..., 0] @ t) ** 2 + (xs[..., 1] @ t) ** 2
    np.testing.assert_allclose(scene.info["overlap"], ref, rtol=1e-5, atol=1e-7)
    assert np.all(scene.info["overlap"] <= 1 + 1e-5) and np.all(scene.info["overlap"][0] < 1e-6)
    for n in range(T + 1):  # a growing curve: n + 1 points at step n
        scene.update(n)
        x, y = scene.info["overlap_lines"][2].get_data()
        assert len(x) == n + 1
        np.testing.assert_allclose(y, ref[: n + 1, 2], rtol=1e-5, atol=1e-7)
    assert scene.frame(T).shape == scene.frame(0).shape
    with pytest.raises(ValueError, match="0 … 6"):
        scene.frame(T + 1)


# ----------------------------------------------------------------------------- your own problem: every state entry
def _series(n_entries, T=5, S=2):
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    xs = rng.normal(size=(T + 1, S, n_entries)).cumsum(0)
    return SimpleNamespace(name="heat.py:make"), xs, np.zeros((T, S, 1))


def _curves(ax):
    """The entries' growing curves of a generic panel (not the faint full traces, not the dots)."""
    return [l for l in ax.get_lines() if l.get_label().startswith("x")]


def _legend_labels(scene):
    legends = [lg for lg in scene.fig.legends] + [ax.get_legend() for ax in scene.fig.axes if ax.get_legend()]
    return [t.get_text() for lg in legends for t in lg.get_texts()]


def test_a_16_entry_state_draws_all_16():
    from stablebptt.analysis.animate import build_scene

    problem, xs, cs = _series(16)
    scene = build_scene(problem, xs, cs)
    for panel in scene.panels:
        assert len(_curves(panel["view"])) == 16
    assert _legend_labels(scene) == [f"x[{k}]" for k in range(16)]
    assert scene.info["components"] == list(range(16)) and scene.info["note"] == ""
    colors = {tuple(np.round(matplotlib_rgba(l.get_color()), 3)) for l in _curves(scene.panels[0]["view"])}
    assert len(colors) == 16  # each entry its own colour
    scene.update(5)
    x, y = _curves(scene.panels[1]["view"])[15].get_data()
    np.testing.assert_allclose(y, xs[:, 1, 15])


def matplotlib_rgba(c):
    from matplotlib.colors import to_rgba

    return to_rgba(c)


def test_a_long_state_says_which_entries_are_drawn_and_how_to_choose(tmp_path):
    from stablebptt.analysis.animate import SERIES_MAX_COMPONENTS, build_scene, parse_components

    n = SERIES_MAX_COMPONENTS + 6
    problem, xs, cs = _series(n, S=1)  # one rollout: the narrowest picture
    scene = build_scene(problem, xs, cs)
    k = SERIES_MAX_COMPONENTS
    assert len(_curves(scene.panels[0]["view"])) == k
    note = scene.info["note"]
    assert f"x[0]–x[{k - 1}] of the {n} state entries" in note and "--components" in note
    assert note in [" ".join(t.get_text().split("\n")) for t in scene.fig.texts]  # said in the picture
    scene.fig.canvas.draw()
    page = scene.fig.bbox
    for artist in scene.fig.texts + scene.fig.legends:  # inside it
        box = artist.get_window_extent()
        assert box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1 and box.y0 >= page.y0 - 1, artist
    # other entries, chosen
    scene = build_scene(problem, xs, cs, components=parse_components(f"3,{n - 2}-{n - 1}", n))
    assert [l.get_label() for l in _curves(scene.panels[0]["view"])] == ["x[3]", f"x[{n - 2}]", f"x[{n - 1}]"]
    assert f"x[3], x[{n - 2}], x[{n - 1}] of the {n} state entries" in scene.info["note"]
    scene.update(2)
    np.testing.assert_allclose(_curves(scene.panels[0]["view"])[1].get_data()[1], xs[:3, 0, n - 2])
    assert parse_components("0-3", 16) == [0, 1, 2, 3] and parse_components("5, 1", 16) == [5, 1]
    for bad in ("16", "a", "3-1", "", "-1"):
        with pytest.raises(ValueError, match="components"):
            parse_components(bad, 16)
    with pytest.raises(ValueError, match="components"):  # a problem with its own picture
        p = problems.get("guidance", steps=4)
        build_scene(
            p, np.zeros((5, 1) + tuple(p.state_shape)), np.zeros((4, 1) + tuple(p.control_shape)), components=[0]
        )


CHAIN = """
import jax.numpy as jnp
import numpy as np
from stablebptt import TrajectoryLoss
from stablebptt.problems.controllers import MLP
from stablebptt.problems import Problem

def make(n=15, steps=3):
    def step(x, c):
        return 0.9 * x + 0.1 * c[:, :1]

    def sample(seed, n_train, n_test):
        rng = np.random.default_rng(0 if seed == "paper" else seed)
        return tuple(rng.uniform(-1, 1, (m, n)).astype(np.float32) for m in (n_train, n_test))

    return Problem(name="chain", params=dict(n=n, steps=steps), step=step,
                   loss=TrajectoryLoss(lambda x: jnp.mean(x ** 2), on="every"), horizon=steps,
                   sample_data=sample, state_shape=(n,), control_shape=(1,), defaults=dict(epochs=1),
                   make_controller=lambda key, zero_last=False: MLP(key, n, (1,), widths=(4,), zero_last=zero_last))
"""


def test_cli_animate_of_an_own_problem_says_what_it_draws(tmp_path, monkeypatch):
    from stablebptt.analysis.animate import SERIES_MAX_COMPONENTS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "chain.py").write_text(CHAIN)
    n = SERIES_MAX_COMPONENTS + 2
    folder = run(
        RunConfig(problem="chain.py:make", problem_params=dict(n=n), epochs=1, n_train=2, n_test=2, batch_size=2),
        0,
        tmp_path / "runs",
    )
    res = CliRunner().invoke(app, ["animate", str(folder), "--states", "1", "--out", "a.gif"])
    assert res.exit_code == 0, res.output
    assert f"of the {n} state entries" in res.output and "--components" in res.output
    res = CliRunner().invoke(app, ["animate", str(folder), "--states", "1", "--out", "b.gif", "--components", "20-25"])
    assert res.exit_code == 0, res.output
    assert "state entries" not in res.output and _frames(tmp_path / "b.gif").shape[0] == 4
    res = CliRunner().invoke(app, ["animate", str(folder), "--components", f"{n}"])
    assert res.exit_code != 0 and "--components" in res.output
