"""What the source cites exists: documents named in docstrings and comments are files of this
repository, and dotted ``stablebptt.…`` names resolve to a module or attribute."""

import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "stablebptt"

#: Markdown files the code writes (not documents it cites)
WRITTEN = {"SUMMARY.md", importlib.import_module("stablebptt.analysis.comparison").SUMMARY_FILE}


def _sources():
    return sorted(SRC.rglob("*.py"))


def test_every_cited_document_is_in_the_repository():
    missing = []
    for f in _sources():
        rel = f.relative_to(SRC).as_posix()
        for m in re.finditer(r"[\w./-]*\w\.md\b", f.read_text()):
            name = m.group()
            if name in WRITTEN:
                continue
            if not any((base / name).is_file() for base in (REPO, REPO / "docs")):
                missing.append(f"{rel}: {name}")
    assert not missing, f"documents cited in src/ that are not in the repository: {missing}"


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            if not hasattr(obj, p):
                return False
            obj = getattr(obj, p)
        return True
    return False


def test_every_dotted_stablebptt_name_in_the_source_resolves():
    names = {
        (f.relative_to(SRC).as_posix(), m.group())
        for f in _sources()
        for m in re.finditer(r"\bstablebptt(?:\.\w+)+", f.read_text())
    }
    assert names
    bad = sorted(f"{rel}: {name}" for rel, name in names if not _resolves(name))
    assert not bad, f"names in src/ that do not exist: {bad}"
