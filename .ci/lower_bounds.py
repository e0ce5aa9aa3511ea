"""Print a pip constraints file that pins every requirement of pyproject.toml (dependencies and
all extras) to its lower bound: CI installs exactly the versions the bounds promise."""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
for req in requirements:
    m = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)", req)
    if m is None:
        sys.exit(f"pyproject.toml: {req!r} has no lower bound (>=); every requirement needs the version CI tests")
    print(f"{m.group(1)}=={m.group(3)}")
