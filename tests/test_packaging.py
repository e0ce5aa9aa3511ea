"""The package version is set in one place (``stablebptt/_version.py``, re-exported as
``stablebptt.__version__``) and the packaging metadata agrees with it."""

import ast
import json
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import stablebptt

REPO = Path(__file__).resolve().parents[1]
INIT = REPO / "src" / "stablebptt" / "_version.py"


def _literal_version() -> str:
    """``__version__`` as written in the source file (a plain string literal, which setuptools
    reads without importing the package)."""
    for node in ast.parse(INIT.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str), (
                "__version__ must be a string literal (setuptools reads it statically)"
            )
            return node.value.value
    raise AssertionError(f"no __version__ in {INIT}")


def test_pyproject_takes_the_version_from_the_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"], "a second version in pyproject.toml; it comes from __version__"
    assert "version" in project["project"].get("dynamic", [])
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "stablebptt._version.__version__"}


def test_the_imported_version_is_the_source_literal():
    assert stablebptt.__version__ == _literal_version()
    assert stablebptt.__version__.count(".") >= 2


def test_installed_metadata_agrees_when_installed_from_this_tree():
    """An install of this checkout (``pip install -e .`` or ``pip install .``) reports the same
    version; an install from another checkout or none at all is skipped."""
    try:
        dist = metadata.distribution("stablebptt")
    except metadata.PackageNotFoundError:
        pytest.skip("stablebptt is not installed (source tree on PYTHONPATH)")
    direct = dist.read_text("direct_url.json")
    url = json.loads(direct).get("url", "") if direct else ""
    here = Path(str(dist.locate_file(""))).resolve()  # metadata built inside this tree (src/*.egg-info)
    if url.removeprefix("file://").rstrip("/") != str(REPO) and not here.is_relative_to(REPO):
        pytest.skip(f"the installed stablebptt comes from {url or here}, not {REPO}")
    assert dist.version == stablebptt.__version__


def test_a_run_records_the_version_of_the_code_that_runs():
    """The manifest names the package version that runs (``stablebptt.__version__``), not only
    the installed distribution's metadata, which an editable install keeps from install time."""
    import stablebptt
    from stablebptt.experiments.manifest import manifest

    versions = manifest()["versions"]
    assert versions["stablebptt"] == stablebptt.__version__
    if "stablebptt_installed" in versions:  # recorded only where it differs
        assert versions["stablebptt_installed"] != versions["stablebptt"]


def test_every_requirement_has_the_lower_bound_ci_installs():
    """CI installs each requirement at its lower bound (``.ci/lower_bounds.py`` writes the pip
    constraints), so every requirement, extras included, must have one."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(REPO / ".ci" / "lower_bounds.py")], capture_output=True, text=True, check=True
    ).stdout.split()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[\[<>=]", r)[0] for r in project["dependencies"]}
    names |= {re.split(r"[\[<>=]", r)[0] for extra in project["optional-dependencies"].values() for r in extra}
    assert {line.split("==")[0] for line in out} == names
    assert all(line.count("==") == 1 and line.split("==")[1][0].isdigit() for line in out)
