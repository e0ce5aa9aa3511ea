"""What a run records about the process that made it: the versions of the code and its
dependencies, the source commit, the device, the precision and the command (``manifest.json``
in every run folder, :func:`manifest`)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import jax

from .._version import __version__


def source_commit() -> str | None:
    """The git commit of the stablebptt source that runs: ``$STABLEBPTT_COMMIT`` when set (a
    copy of the tree without its ``.git``), else ``git rev-parse HEAD`` of the checkout this
    package is imported from (with ``-dirty`` when it has uncommitted changes), else None."""
    if os.environ.get("STABLEBPTT_COMMIT"):
        return os.environ["STABLEBPTT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def manifest() -> dict:
    """Versions, device and precision of this process (recorded next to every result).

    ``versions["stablebptt"]`` is the ``__version__`` of the package that runs; where the
    installed distribution's metadata says otherwise (an editable install whose version changed
    since it was installed), that one is kept as ``versions["stablebptt_installed"]``."""

    def ver(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    dev = jax.devices()[0]
    versions = {"stablebptt": __version__} | {n: ver(n) for n in ("jax", "jaxlib", "optax", "equinox", "numpy")}
    if ver("stablebptt") not in (None, __version__):
        versions["stablebptt_installed"] = ver("stablebptt")
    return {
        "versions": versions | {"python": platform.python_version()},
        "commit": source_commit(),
        "device": {
            "platform": dev.platform,
            "kind": getattr(dev, "device_kind", str(dev)),
            "count": jax.device_count(),
        },
        "precision": {
            "dtype": "float32",
            "x64": bool(jax.config.jax_enable_x64),  # type: ignore[attr-defined]  # set at run time; jax's stub lists no options
            "matmul_precision": "highest (the training programs are traced at full float32 precision)",
        },
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "command": " ".join(sys.argv),
        "host": socket.gethostname(),
        "machine": platform.machine(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
