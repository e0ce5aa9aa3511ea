"""Animations: a tiny trained run becomes a GIF (or MP4) with the documented frame count."""
import math

import imageio.v3 as iio
import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from stablebptt import problems
from stablebptt.animate import animate, default_stride, frame_indices, render_frames, write_frames
from stablebptt.cli import app
from stablebptt.config import RunConfig
from stablebptt.run import run


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


@pytest.mark.parametrize("name, params, stride", [("guidance", dict(steps=6), None), ("quantum", dict(steps=5), 2),
                                                   ("toy-rotation", {}, None)])
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
