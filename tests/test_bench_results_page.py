"""benchmarks/run_all.py rewrites benchmarks/results.md from JSON but keeps the sections written
by hand below its marker line (one-off measurements with no JSON to render from)."""

import pytest

from conftest import BENCHMARKS


@pytest.fixture()
def run_all(bench_module):
    return bench_module("run_all")


def test_the_hand_written_tail_survives_a_rerender(run_all):
    old = "# Benchmarks\n\nold numbers\n\n" + run_all.HAND_WRITTEN + "\n\n## A/B by hand\n\n1.5x\n"
    new = run_all.keep_hand_written("# Benchmarks\n\nnew numbers\n", old)
    assert "new numbers" in new and "old numbers" not in new
    assert new.endswith(run_all.HAND_WRITTEN + "\n\n## A/B by hand\n\n1.5x\n")
    assert new.count(run_all.HAND_WRITTEN) == 1


def test_without_a_marker_or_a_previous_page_the_rendered_page_is_written_as_is(run_all):
    assert run_all.keep_hand_written("# B\n", None) == "# B\n"
    assert run_all.keep_hand_written("# B\n", "# old page without the marker\n") == "# B\n"


def test_main_keeps_the_tail_of_the_page_it_rewrites(run_all, tmp_path):
    page = tmp_path / "results.md"
    page.write_text("# stale\n\n" + run_all.HAND_WRITTEN + "\n\n## Kept\n")
    (tmp_path / "json").mkdir()
    run_all.main(["--from", str(tmp_path / "json"), "--out", str(page)])
    text = page.read_text()
    assert "# stale" not in text and text.startswith("# Benchmarks")
    assert text.endswith(run_all.HAND_WRITTEN + "\n\n## Kept\n")


def test_the_committed_page_keeps_its_hand_written_sections_below_the_marker(run_all):
    text = (BENCHMARKS / "results.md").read_text()
    assert text.count(run_all.HAND_WRITTEN) == 1
    tail = text[text.index(run_all.HAND_WRITTEN) :]
    for heading in ("## Full-scale figures on the GPU", "## Engine and trainer redesign"):
        assert heading in tail
