"""Figures: smoothing, sweep figures from real and synthetic result tables."""

import numpy as np
import pandas as pd
import pytest

from conftest import overflowing_linear
from stablebptt.analysis import plots
from stablebptt.experiments.run import run
from stablebptt.training.config import RunConfig


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures made through pyplot stay open until closed: close each test's."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def flat(text):
    """`text` with line breaks and runs of spaces as single spaces: legends wrap to the
    figure's width, which depends on the installed fonts."""
    return " ".join(text.split())


# ------------------------------------------------------------------ smoothing
def test_smooth_curve_hand_example():
    # window 3, left-padded with y[0]: [1,1,1,2,3,4] -> means of 3 -> [1, 4/3, 2, 3]
    np.testing.assert_allclose(plots.smooth_curve([1.0, 2.0, 3.0, 4.0], 3), [1.0, 4 / 3, 2.0, 3.0])
    # window longer than the series: still trailing means over the padded series
    np.testing.assert_allclose(plots.smooth_curve([2.0, 8.0], 4), [2.0, 3.5])
    np.testing.assert_allclose(plots.smooth_curve([5.0, 1.0, 7.0], 1), [5.0, 1.0, 7.0])
    y = np.arange(100.0)
    s = plots.smooth_curve(y, 30)
    assert s.shape == y.shape
    assert s[-1] == pytest.approx(np.mean(y[-30:]))
    with pytest.raises(ValueError, match="window"):
        plots.smooth_curve(y, 0)


# ------------------------------------------------------------------ sweep figures from real runs
def linear_cfg(mode, clip, **kw):
    base = dict(
        problem="linear",
        mode=mode,
        clip=clip,
        epochs=3,
        lr=0.01,
        batch_size=1,
        n_train=1,
        n_test=1,
        problem_params=dict(theta0=-0.5),
    )
    return RunConfig(**(base | kw))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    for mode in ("R", "C"):
        for clip in ("none", "norm"):
            for seed in (0, 1):
                run(linear_cfg(mode, clip), seed, root)
    # a second problem with two levels of a parameter (panels per level)
    for target in (1.0, 2.0):
        for seed in (0, 1):
            run(
                RunConfig(
                    problem="toy-field",
                    mode="M",
                    epochs=3,
                    lr=0.01,
                    batch_size=1,
                    n_train=1,
                    n_test=1,
                    problem_params=dict(target=target),
                ),
                seed,
                root,
            )
    return root


@pytest.mark.slow
def test_plot_sweep_writes_png_and_pdf(sweep, tmp_path):
    paths = plots.plot_sweep(sweep)
    names = sorted(p.name for p in paths)
    assert names == [
        "linear-paired-R-C.pdf",
        "linear-paired-R-C.png",
        "linear-test-loss.pdf",
        "linear-test-loss.png",
        "toy-field-test-loss.pdf",
        "toy-field-test-loss.png",
    ]  # toy-field has no R/C pair
    for p in paths:
        assert p.parent == sweep / "figures"
        assert p.is_file() and p.stat().st_size > 1000
    assert paths[0].read_bytes()[:4] in (b"\x89PNG", b"%PDF")
    raw = plots.plot_sweep(sweep, tmp_path / "out", smooth=False, band="ci", formats=("png",))
    assert [p.name for p in raw] == [
        "linear-test-loss-raw-ci.png",
        "linear-paired-R-C.png",
        "toy-field-test-loss-raw-ci.png",
    ]
    assert all(p.is_file() for p in raw)


def test_layout_from_real_runs(sweep):
    from stablebptt.analysis import results

    df = results.collect(sweep)
    fig = plots.problem_figure(df, "toy-field")
    assert len(fig.axes) == 2  # one panel per target, one clipping row
    assert [a.get_title() for a in fig.axes] == ["toy-field: target=1", "toy-field: target=2"]
    fig = plots.problem_figure(df, "linear")
    assert len(fig.axes) == 2  # one level, a row per clipping mode
    assert [a.get_ylabel() for a in fig.axes] == ["no clipping\ntest loss", "clip norm\ntest loss"]
    for ax in fig.axes:
        assert ax.get_yscale() == "log"
        assert {(l.get_color(), l.get_marker()) for l in ax.get_lines()} == {
            (plots.MODE_COLORS["R"], plots.MODE_MARKERS["R"]),
            (plots.MODE_COLORS["C"], plots.MODE_MARKERS["C"]),
        }
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["R", "C", "×/÷ geometric std"]
    assert "geometric mean over 2 seeds" in flat(legend.get_title().get_text())


def test_diverged_run_is_marked(tmp_path):
    _, cfg = overflowing_linear()
    run(cfg, 0, tmp_path)  # diverges in epoch 4 (conftest.reference_divergence_epoch)
    from stablebptt.analysis import results

    df = results.collect(tmp_path)
    assert df["status"].iloc[0] == "diverged"
    fig = plots.problem_figure(df, "linear", smooth=False)
    ax = fig.axes[0]
    marks = [l for l in ax.get_lines() if l.get_marker() == "x"]
    assert len(marks) == 1
    assert marks[0].get_xdata()[0] == df["epoch"].max() == 3
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["R", "diverged"]  # one run: no band entry
    title = flat(legend.get_title().get_text())
    assert "one run (seed 0)" in title and "raw" in title and "mean" not in title and "std" not in title


# ------------------------------------------------------------------ synthetic tables: the paper's layouts
def fake_table(
    problem,
    level_col,
    levels,
    *,
    modes="RMCS",
    clips=("none", "value", "norm"),
    seeds=3,
    epochs=60,
    scale=1.0,
    update_norm=False,
    same_curve=False,
):
    """A results table; with ``same_curve`` every mode of a seed has the identical curve (or,
    ``same_curve="MS"``, the modes named)."""
    rows = []
    rng = np.random.default_rng(1)
    rid = 0
    for lev in levels:
        for c in clips:
            for s in range(seeds):
                shared = (0.5 + np.exp(-np.arange(1, epochs + 1) / 20)) * (1 + 0.05 * rng.random(epochs))
                for m in modes:
                    rid += 1
                    same = m in same_curve if isinstance(same_curve, str) else same_curve
                    curve = scale * (
                        shared
                        if same
                        else (0.5 + np.exp(-np.arange(1, epochs + 1) / 20)) * (1 + 0.05 * rng.random(epochs))
                    )
                    for e in range(epochs):
                        r = dict(
                            run_id=f"r{rid}",
                            seed=s,
                            status="finished",
                            diverged_epoch=None,
                            problem=problem,
                            mode=m,
                            clip=c,
                            optimizer="adam",
                            lr=1e-3,
                            epoch=e + 1,
                            test_loss=curve[e],
                        )
                        r[level_col] = lev
                        if update_norm:
                            r["update_norm"] = 10.0 ** (-3 + 2 * rng.random())
                        rows.append(r)
    return pd.DataFrame(rows)


def test_cartpole_layout_band_and_author_range():
    df = fake_table("cartpole", "param_poles", [1, 2, 3, 4], seeds=2, epochs=40)
    fig = plots.problem_figure(df, "cartpole", window=30)
    assert len(fig.axes) == 12  # 3 clipping rows × 4 levels
    assert [a.get_title() for a in fig.axes[:4]] == [
        "cart-pole, 1 pole",
        "cart-pole, 2 poles",
        "cart-pole, 3 poles",
        "cart-pole, 4 poles",
    ]
    assert [a.get_ylabel() for a in fig.axes[::4]] == [
        "no clipping\ntest loss",
        "clip value\ntest loss",
        "clip norm\ntest loss",
    ]
    for ax in fig.axes:
        assert ax.get_ylim() == pytest.approx((1e-6, 3.0))
        assert len(ax.collections) == 4  # one band per mode
        assert {l.get_color() for l in ax.get_lines()} == {plots.MODE_COLORS[m] for m in "RMCS"}
        assert {l.get_marker() for l in ax.get_lines()} == {plots.MODE_MARKERS[m] for m in "RMCS"}
    # data outside the authors' range: autoscale
    fig = plots.problem_figure(
        fake_table("cartpole", "param_poles", [1], modes="C", clips=("none",), scale=10.0), "cartpole"
    )
    assert fig.axes[0].get_ylim()[1] > 3.0


def _mode_lines(ax):
    """The mode curves of a panel (not the diverged marks), in drawing order."""
    return sorted([l for l in ax.get_lines() if l.get_linestyle() != "None"], key=lambda l: l.get_zorder())


def _dashes(line):
    return line._unscaled_dash_pattern  # (offset, on-off sequence) of a dashed line; matplotlib has no getter


def test_coinciding_curves_stay_visible():
    """M and S (and R, C) identical: each mode's markers sit at epochs no other mode marks, a
    mode drawn later is thinner with a smaller marker, and each curve equal to one drawn before
    it is dashed, each with its own dash pattern; the legend says which modes coincide."""
    df = fake_table("cartpole", "param_poles", [4], clips=("none",), seeds=2, epochs=60, same_curve=True)
    fig = plots.problem_figure(df, "cartpole")
    lines = _mode_lines(fig.axes[0])
    assert [l.get_color() for l in lines] == [plots.MODE_COLORS[m] for m in "RMCS"]  # drawn R, M, C, S
    np.testing.assert_array_equal(lines[1].get_ydata(), lines[3].get_ydata())  # M and S coincide
    widths = [l.get_linewidth() for l in lines]
    sizes = [l.get_markersize() for l in lines]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == 4
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    marked = []
    for l in lines:
        start, step = l.get_markevery()
        marked.append(set(np.asarray(l.get_xdata())[start::step]))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not marked[i] & marked[j]
    assert not lines[0].is_dashed() and all(l.is_dashed() for l in lines[1:])
    assert len({_dashes(l) for l in lines[1:]}) == 3
    assert "R = M = C = S (M, C, S dashed)" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_only_the_coinciding_curves_are_dashed():
    """M and S equal, R and C not: S dashed over M, the rest solid, the legend says "M = S"."""
    df = fake_table("cartpole", "param_poles", [2, 4], clips=("none", "norm"), seeds=2, epochs=60, same_curve="MS")
    fig = plots.problem_figure(df, "cartpole")
    for ax in fig.axes:
        lines = _mode_lines(ax)
        assert [l.get_color() for l in lines] == [plots.MODE_COLORS[m] for m in "RMCS"]
        assert [l.is_dashed() for l in lines] == [False, False, False, True]
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "M = S (S dashed)" in texts and not any(" = " in t and t != "M = S (S dashed)" for t in texts)
    # where they coincide in some panels only, the legend says in how many
    other = df["run_id"].isin(df[(df["mode"] == "S") & (df["param_poles"] == 2) & (df["clip"] == "norm")]["run_id"])
    df.loc[other, "test_loss"] *= 1.5
    texts = [t.get_text() for t in plots.problem_figure(df, "cartpole").legends[0].get_texts()]
    assert "M = S (S dashed) in 3 of 4 panels" in texts
    # no coinciding curves: nothing dashed, no note
    fig = plots.problem_figure(fake_table("cartpole", "param_poles", [4], clips=("none",), seeds=2), "cartpole")
    assert not any(l.is_dashed() for l in _mode_lines(fig.axes[0]))
    assert not any(" = " in t.get_text() for t in fig.legends[0].get_texts())


def test_markevery_staggers():
    assert plots.markevery(60, 0, 4) == (0, 10)
    assert plots.markevery(60, 3, 4) == (7, 10)
    assert plots.markevery(3, 2, 4) == (0, 1)  # too short to stagger: concentric markers instead


def test_legend_is_compact():
    df = fake_table("cartpole", "param_poles", [1, 2, 3, 4], seeds=2, epochs=40)
    fig = plots.problem_figure(df, "cartpole")
    fig.canvas.draw()
    legend = fig.legends[0]
    assert len(legend.get_texts()) == 5  # R, M, C, S, band
    assert legend.get_window_extent().height < 0.15 * fig.bbox.height


def test_records_from_engines_that_differ_only_in_backward_strategy_are_one_series():
    """Records of an older tree have no `backward` field (NaN), newer ones "auto" or another
    strategy; every strategy computes the same update, so they are one line per mode."""
    df = fake_table("cartpole", "param_poles", [2], clips=("none",), seeds=3, epochs=40)
    df["backward"] = [None if s == 0 else "auto" for s in df["seed"]]
    df["memory_budget"] = np.where(df["seed"] == 2, 1e9, np.nan)
    fig = plots.problem_figure(df, "cartpole")
    assert len(fig.legends[0].get_texts()) == 5  # R, M, C, S, band
    assert fig.axes[0].get_title() == "cart-pole, 2 poles"  # all 3 seeds in each mean
    df["lr"] = np.where(df["seed"] == 0, 1e-3, 1e-2)  # a field that changes training still splits
    assert len(plots.problem_figure(df, "cartpole").legends[0].get_texts()) > 5


def test_titles_say_how_many_seeds():
    df = fake_table("cartpole", "param_poles", [1, 4], clips=("none",), seeds=3, epochs=40)
    df = df[~((df["param_poles"] == 1) & (df["seed"] > 0))]  # 1 pole: seed 0 only
    fig = plots.problem_figure(df, "cartpole")
    assert [a.get_title() for a in fig.axes] == ["cart-pole, 1 pole\none run, seed 0", "cart-pole, 4 poles"]
    title = flat(fig.legends[0].get_title().get_text())
    assert "geometric mean over 3 seeds" in title
    assert "fewer seeds: 1 pole (one run, seed 0)" in _footnote(fig)  # a footnote under the panels
    one = fake_table("cartpole", "param_poles", [4], clips=("none",), seeds=1, epochs=40)
    title = flat(plots.problem_figure(one, "cartpole").legends[0].get_title().get_text())
    assert "each line is one run (seed 0)" in title and "mean" not in title


def test_one_level_with_curves_of_different_seed_counts():
    """One level where R has 3 seeds and C one (a sweep half done): the panel and the legend say
    1–3 seeds per curve, not "1 seed" (the fewest) nor "3 seeds" (the most)."""
    df = fake_table("quantum", "param_target", [5], modes="RC", clips=("none",), seeds=3, epochs=40)
    df = df[~((df["mode"] == "C") & (df["seed"] > 0))]
    fig = plots.problem_figure(df, "quantum")
    assert fig.axes[0].get_title() == "quantum, target 5\n1–3 seeds per curve"
    title = flat(fig.legends[0].get_title().get_text())
    assert "geometric mean over a curve's seeds (1–3)" in title and "fewer seeds" not in title


@pytest.mark.parametrize("levels", [[5], [3, 4, 5]])
def test_paired_legend_lies_inside_the_figure(levels):
    """The paired figure's legend (clipping modes, diagonal, diverged) fits the figure's width
    also for a single level, where the figure is narrow."""
    df = fake_table("quantum", "param_target", levels, modes="RC", seeds=2, epochs=40)
    first_r = df[(df["mode"] == "R") & (df["clip"] == "value")]["run_id"].iloc[0]
    df.loc[df["run_id"] == first_r, ["status", "diverged_epoch"]] = ["diverged", 10]
    fig = plots.paired_figure(df, "quantum")
    fig.canvas.draw()
    legend = fig.legends[0]
    assert "diverged (at the edge)" in [t.get_text() for t in legend.get_texts()]
    box, page = legend.get_window_extent(), fig.bbox
    assert box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1, (box, page)


def test_guidance_panels_go_from_easy_to_hard_and_ci_band():
    df = fake_table("guidance", "param_rc", [0.001, 1.0, 0.1, 0.01], modes="RC", clips=("none",), seeds=4)
    fig = plots.problem_figure(df, "guidance", band="ci")
    assert [a.get_title() for a in fig.axes] == [
        "guidance, rc = 1",
        "guidance, rc = 0.1",
        "guidance, rc = 0.01",
        "guidance, rc = 0.001",
    ]
    assert fig.axes[0].get_ylim() == pytest.approx((0.4, 6.0))
    assert "bootstrap 95 % CI of the geometric mean" in flat(fig.legends[0].get_title().get_text())
    with pytest.raises(ValueError, match="band='sem'; allowed: std, ci"):
        plots.problem_figure(df, "guidance", band="sem")
    with pytest.raises(ValueError, match="no runs of problem 'quantum'"):
        plots.problem_figure(df, "quantum")


def test_quantum_has_update_size_panel_for_highest_target():
    df = fake_table("quantum", "param_target", [5, 3, 4], modes="RCX", clips=("none",), scale=40.0, update_norm=True)
    fig = plots.problem_figure(df, "quantum")
    assert len(fig.axes) == 4
    assert fig.axes[2].get_title() == "quantum, target 5"
    assert "target 5" in fig.axes[3].get_title() and fig.axes[3].get_yscale() == "log"
    assert "update" in fig.axes[3].get_ylabel()
    assert fig.axes[0].get_ylim() == pytest.approx((16.5, 135.0))
    colors = {l.get_color() for l in fig.axes[0].get_lines()}
    assert plots.MODE_COLORS["R"] in colors and plots.MODE_COLORS["C"] in colors and len(colors) == 3


def test_log_band_statistics():
    vals = np.array([[1.0, 100.0], [10.0, np.nan], [4.0, -1.0]])
    centre, lo, hi = plots.log_band(vals, "std", np.random.default_rng(0))
    sd = np.log(100.0) / np.sqrt(2)  # sample std of (0, ln 100)
    np.testing.assert_allclose(centre, [10.0, 10.0, 4.0], rtol=1e-12)  # NaN and ≤ 0 are missing
    np.testing.assert_allclose(lo, [10.0 * np.exp(-sd), 10.0, 4.0], rtol=1e-12)
    np.testing.assert_allclose(hi, [10.0 * np.exp(sd), 10.0, 4.0], rtol=1e-12)
    logs = np.random.default_rng(3).normal(1.0, 1.0, size=(1, 400))
    centre, lo, hi = plots.log_band(np.exp(logs), "ci", np.random.default_rng(0))
    assert lo[0] < centre[0] < hi[0]
    assert np.log(hi[0] / lo[0]) == pytest.approx(2 * 1.96 * logs.std(ddof=1) / np.sqrt(400), rel=0.15)


def test_paired_figure_places_each_seed_and_clipping():
    df = fake_table("cartpole", "param_poles", [1, 4], modes="RC", clips=("none", "norm"), seeds=3, epochs=40)
    from stablebptt.analysis import stats

    finals = stats.final_losses(df).set_index(["param_poles", "clip", "seed", "mode"])["final"]
    fig = plots.paired_figure(df, "cartpole")
    assert [a.get_title() for a in fig.axes] == ["cart-pole, 1 pole (3 seeds)", "cart-pole, 4 poles (3 seeds)"]
    for ax, poles in zip(fig.axes, (1, 4)):
        assert ax.get_xscale() == ax.get_yscale() == "log"
        assert ax.get_xlim() == pytest.approx(ax.get_ylim())
        pts = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
        want = [
            (finals[(poles, clip, s, "R")], finals[(poles, clip, s, "C")])
            for clip in ("none", "norm")
            for s in range(3)
        ]
        np.testing.assert_allclose(pts, want, rtol=1e-12)
        diag = ax.get_lines()[0]
        np.testing.assert_allclose(diag.get_xdata(), diag.get_ydata())
    with pytest.raises(ValueError, match="no seed has both a R and a S run"):
        plots.paired_figure(df, "cartpole", y="S")


@pytest.mark.slow
def test_cli_plot(sweep, tmp_path):
    from typer.testing import CliRunner

    from stablebptt.cli.app import app

    res = CliRunner().invoke(
        app, ["plot", str(sweep), "--out", str(tmp_path), "--raw", "--band", "ci", "--format", "png"]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "linear-test-loss-raw-ci.png").is_file()
    res = CliRunner().invoke(app, ["plot", str(sweep), "--band", "sem"])
    assert res.exit_code == 2
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "missing")])
    assert res.exit_code == 2


# ------------------------------------------------------------------ paired figure: readable labels
def const_table(problem, level_col, finals, epochs=40):
    """A results table whose runs are constant curves: ``finals`` maps (level, clip, seed, mode)
    to the loss, which is then each run's final (smoothed) loss."""
    rows = []
    for k, ((lev, clip, seed, mode), v) in enumerate(finals.items()):
        for e in range(1, epochs + 1):
            rows.append(
                dict(
                    run_id=f"r{k}",
                    seed=seed,
                    status="finished",
                    diverged_epoch=None,
                    problem=problem,
                    mode=mode,
                    clip=clip,
                    optimizer="adam",
                    lr=1e-3,
                    epoch=e,
                    test_loss=v,
                    **{level_col: lev},
                )
            )
    return pd.DataFrame(rows)


def _boxes_overlap(a, b, slack=0.5):
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > slack) and (min(a.y1, b.y1) - max(a.y0, b.y0) > slack)


def _drawn_tick_labels(ax, axis):
    """The non-empty tick labels (major and minor) drawn along ``axis`` of ``ax``, with their boxes."""
    renderer = ax.figure.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    a = ax.xaxis if axis == "x" else ax.yaxis
    out = []
    for t in a.get_majorticklabels() + a.get_minorticklabels():
        if not (t.get_visible() and t.get_text()):
            continue
        b = t.get_window_extent(renderer)
        mid = (b.x0 + b.x1) / 2 if axis == "x" else (b.y0 + b.y1) / 2
        lo, hi = (box.x0, box.x1) if axis == "x" else (box.y0, box.y1)
        if lo - 1 <= mid <= hi + 1:  # ticks outside the view are not drawn
            out.append((t.get_text(), b))
    return out


@pytest.mark.parametrize("scale", [1e-3, 1e-2, 1.0, 30.0])
def test_paired_log_tick_labels_do_not_overlap(scale):
    """Under two decades the log axes get plain-number labels; the minor ones (2, 3, 5 × 10^k)
    only where they fit: no "0.0020.003" on a narrow panel."""
    rng = np.random.default_rng(0)
    finals = {}
    for clip in ("none", "norm"):
        for s in range(3):
            finals[(1, clip, s, "R")] = scale * 10 ** rng.uniform(0.1, 1.0)
            finals[(1, clip, s, "C")] = scale * 10 ** rng.uniform(0.1, 1.0)
    fig = plots.paired_figure(const_table("cartpole", "param_poles", finals), "cartpole")
    fig.canvas.draw()
    for ax in fig.axes:
        for axis in ("x", "y"):
            labels = _drawn_tick_labels(ax, axis)
            assert len(labels) >= 2, (axis, [t for t, _ in labels])  # still readable: at least two numbers
            for i in range(len(labels)):
                for j in range(i + 1, len(labels)):
                    assert not _boxes_overlap(labels[i][1], labels[j][1]), (axis, labels[i][0], labels[j][0])


def _seed_labels(ax):
    return [t for t in ax.texts if t.get_text()]


def test_paired_seed_labels_of_coinciding_points_are_merged_and_labels_do_not_overlap():
    """Seeds with identical losses share one label ("0,1"), and no two seed labels overlap,
    also in a crowded panel."""
    finals = {}
    for clip in ("none", "value", "norm"):
        for s in range(5):
            # seeds 0 and 1 identical; the rest close together (a crowded panel)
            finals[(1, clip, s, "R")] = 2.0 if s < 2 else 2.0 + 0.05 * s + 0.02 * len(clip)
            finals[(1, clip, s, "C")] = 1.9 if s < 2 else 1.9 + 0.04 * s - 0.01 * len(clip)
    fig = plots.paired_figure(
        const_table("guidance", "param_rc", {(0.1,) + k[1:]: v for k, v in finals.items()}), "guidance"
    )
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    texts = _seed_labels(ax)
    assert "0,1" in [t.get_text() for t in texts]
    assert sorted(t.get_text() for t in texts).count("0") == 0  # seed 0 only in the merged label
    boxes = [t.get_window_extent(renderer) for t in texts]
    frame = ax.get_window_extent(renderer)
    for i in range(len(boxes)):
        assert frame.x0 - 1 <= boxes[i].x0 and boxes[i].x1 <= frame.x1 + 1  # inside the panel
        for j in range(i + 1, len(boxes)):
            assert not _boxes_overlap(boxes[i], boxes[j]), (texts[i].get_text(), texts[j].get_text())


# ------------------------------------------------------------------ titles fit
def _titles(fig):
    """Every title of a figure: the legend titles (the figure's title) and the panels' titles."""
    out = [lg.get_title().get_text() for lg in fig.legends if lg.get_title().get_text()]
    out += [ax.get_title() for ax in fig.axes if ax.get_title()]
    if fig._suptitle is not None:
        out.append(fig._suptitle.get_text())
    return out


def _footnote(fig):
    return " ".join(flat(lg.get_title().get_text()) for lg in fig.legends[1:])


def _check_titles(fig):
    fig.canvas.draw()
    for t in _titles(fig):
        assert t.count("\n") <= 1, t  # at most two lines
    page = fig.bbox
    for lg in fig.legends:
        box = lg.get_window_extent()
        assert box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1 and box.y0 >= page.y0 - 1 and box.y1 <= page.y1 + 1


def test_paired_title_of_one_narrow_panel_has_two_lines():
    df = fake_table("quantum", "param_target", [5], modes="RC", seeds=2, epochs=40)
    fig = plots.paired_figure(df, "quantum")
    _check_titles(fig)
    title = flat(fig.legends[0].get_title().get_text())
    assert "quantum control: final test loss, C against R, paired by seed" in title
    assert "30-epoch moving average" in _footnote(fig)  # the detail moved to a footnote


def test_sweep_figure_titles_have_at_most_two_lines():
    df = fake_table("cartpole", "param_poles", [1, 4], clips=("none",), seeds=3, epochs=40)
    df = df[~((df["param_poles"] == 1) & (df["seed"] > 0))]  # 1 pole: seed 0 only
    fig = plots.problem_figure(df, "cartpole")
    _check_titles(fig)
    assert "fewer seeds: 1 pole (one run, seed 0)" in _footnote(fig)


@pytest.mark.parametrize("kind", ["paired", "sweep"])
def test_titles_of_an_own_problem_with_a_long_name_have_at_most_two_lines(kind):
    name = "simulators/a_rather_long_simulator_file_name.py:make_the_heat_equation_problem"
    df = fake_table(name, "param_steps", [4], modes="RC", clips=("none", "norm"), seeds=2, epochs=40)
    df["param_conductivity_of_the_rod"] = 0.25
    fig = plots.paired_figure(df, name) if kind == "paired" else plots.problem_figure(df, name)
    _check_titles(fig)
    assert "a_rather_long_simulator_file_name.py:make_the_heat_equation_problem" in flat(
        fig.legends[0].get_title().get_text()
    ).replace(" ", "")
