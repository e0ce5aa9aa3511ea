"""The README's Python example runs as printed (with fewer epochs and a temporary folder)."""

from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path):
    code = README.read_text().split("```python")[1].split("```")[0]
    assert "epochs=50" in code and 'root="runs"' in code
    code = code.replace("epochs=50", "epochs=2").replace('root="runs"', f'root="{tmp_path / "runs"}"')
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert (
        scope["r"].config == scope["cfg"]
        and abs(scope["loss_on_test"] - scope["r"].result["final"]["test_loss"]) < 1e-6
    )


@pytest.mark.slow
def test_the_readme_test_command_prints_the_count():
    """`python -m pytest -q` (the README's command) ends with "N passed in …": pyproject's addopts
    must not add a second -q (-qq drops that line). Checked on one small test file."""
    import os
    import re
    import subprocess
    import sys
    import tomllib

    root = README.parent
    addopts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"].get("addopts", "")
    assert "-q" not in str(addopts).split() and "--quiet" not in str(addopts)
    section = README.read_text().split("Run the tests")[1].split("More:")[0]
    assert "python -m pytest -q" in section and "2-core CPU" in section
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_optim.py", "-p", "no:cacheprovider"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.fullmatch(r"\d+ passed(, \d+ deselected)? in [\d.]+s( \(.*\))?", res.stdout.strip().splitlines()[-1]), (
        res.stdout
    )
