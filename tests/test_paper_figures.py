"""The paper's toy figures (``experiments/paper/figures.py``): the Fig. 1 field spreads and the
Fig. 2 Adam runs against the numbers of the paper."""

import numpy as np
import pytest

from conftest import local_minima, paper_module

figures = paper_module("figures")


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures made through pyplot stay open until closed: close each test's."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.slow
def test_fig1_field_spreads(tmp_path):
    r = figures.fig1_fields(tmp_path)
    assert r["spread_G"] == pytest.approx(1.8e3, rel=0.2)
    assert r["spread_M"] == pytest.approx(68, rel=0.2)
    assert sorted(p.name for p in r["paths"]) == ["fig1-fields.pdf", "fig1-fields.png"]
    assert all(p.is_file() for p in r["paths"])


@pytest.fixture(scope="module")
def fig2(tmp_path_factory):
    return figures.fig2_rotation(tmp_path_factory.mktemp("fig2"))


@pytest.mark.slow
def test_fig2_gradient(fig2):
    L = fig2["losses"]["R"]
    assert len(L) == 201 and L[0] == pytest.approx(20.0)
    assert 58 <= int(np.argmax(L < 2e-3)) <= 60
    assert fig2["thetas"]["R"][0] == pytest.approx([2.0, 4.0])
    assert all(p.is_file() for p in fig2["paths"])


def test_fig2_rotating(fig2):
    L = fig2["losses"]["M"]
    mins = local_minima(L)
    assert mins[0][0] == 35
    for (_, got), want in zip(mins, [0.84, 1.13, 1.65, 2.49]):
        assert got == pytest.approx(want, rel=0.02)
    assert len(mins) >= 4
    assert L[200] == pytest.approx(6.2, rel=0.02)


def test_fig2_combined(fig2):
    L = fig2["losses"]["C"]
    mins = [v for _, v in local_minima(L)]
    assert len(mins) >= 5
    for got, want in zip(mins, [0.49, 0.13, 0.057, 0.030, 0.019]):
        assert got == pytest.approx(want, rel=0.03)
    assert L[200] == pytest.approx(0.067, rel=0.03)
