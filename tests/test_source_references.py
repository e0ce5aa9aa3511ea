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


def _private_uses(path: Path) -> list[str]:
    """Private names of the library (``_name``) that a script reaches: imported from a
    ``stablebptt`` module, or an attribute of a name bound to one."""
    import ast

    tree = ast.parse(path.read_text())
    bound, bad = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "stablebptt":
                    bound.add(a.asname or a.name.split(".")[0])
                    bad += [a.name for p in a.name.split(".") if p.startswith("_")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "stablebptt":
            bad += [node.module for p in node.module.split(".") if p.startswith("_")]
            for a in node.names:
                if a.name.startswith("_"):
                    bad.append(f"{node.module}.{a.name}")
                bound.add(a.asname or a.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                bad.append(ast.unparse(node))
    return bad


def test_the_experiments_read_the_public_api_only():
    scripts = sorted((REPO / "experiments").rglob("*.py"))
    assert any(p.name == "claims.py" for p in scripts)
    bad = [f"{p.relative_to(REPO)}: {name}" for p in scripts for name in _private_uses(p)]
    assert not bad, f"experiments/ reaches private names of the library: {bad}"
