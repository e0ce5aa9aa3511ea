import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    """The authors' reference arrays: $STABLEBPTT_FIXTURES or ../shared/fixtures beside the repo."""
    d = Path(os.environ.get("STABLEBPTT_FIXTURES", REPO.parent / "shared" / "fixtures"))
    if not d.is_dir():
        raise FileNotFoundError(
            f"reference fixtures not found at {d}; set STABLEBPTT_FIXTURES to the folder "
            "holding cartpole_1.npz etc."
        )
    return d


@pytest.fixture(scope="session")
def fixture():
    """fixture('cartpole_1') -> dict of numpy arrays."""
    cache = {}

    def load(name: str) -> dict:
        if name not in cache:
            with np.load(fixtures_dir() / f"{name}.npz") as f:
                cache[name] = {k: f[k] for k in f.files}
        return cache[name]

    return load


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (error relative to the reference's largest entry)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
