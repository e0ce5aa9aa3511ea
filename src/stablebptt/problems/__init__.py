"""Problems from anywhere: ``stablebptt.problems.get(source, **params)`` (like ``gymnasium.make``).

A problem *source* is one of

* a built-in name: ``cartpole``, ``guidance``, ``quantum``, ``toy-field``, ``toy-rotation``, ``linear``;
* a name given to :func:`register` in this process;
* ``FILE.py:FUNCTION`` — a Python file (absolute, or relative to the working folder) and the
  function in it;
* ``package.module:FUNCTION`` — an importable module and the function in it;
* a name that an installed package publishes in the entry-point group ``stablebptt.problems``
  (``[project.entry-points."stablebptt.problems"] pointmass = "mypkg.pointmass:make"``).

The function is ``make(**params) -> Problem``. Its parameters and their help come from the
module's ``PARAMS`` dict (``{name: (default, help)}``, as the built-in modules have) or, without
one, from the function's keyword defaults; unknown parameters are an error. A problem built from
a file or a module is named by its source (``Problem.name == source``), so a run config that
names the source identifies the problem (likewise a registered or installed one: its name). :func:`origin` says where a source was found (for a
file: its absolute path and SHA-256), which every run records in its manifest.
:func:`code_identity` is what identifies the problem's code (a file's or module's SHA-256, an
installed distribution's version; nothing for built-in problems): a run id does not include it,
and a finished or interrupted run made with other code is refused instead of shown or continued.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from .base import Problem

# built-in name -> module (relative to this package)
_BUILTIN: dict[str, str] = {
    "toy-field": "toys",
    "toy-rotation": "toys",
    "linear": "linear",
    "cartpole": "cartpole",
    "guidance": "guidance",
    "quantum": "quantum",
}
#: the entry-point group through which installed packages publish problems
ENTRY_POINTS = "stablebptt.problems"
_REGISTERED: dict[str, tuple[Callable, dict]] = {}


def register(name: str, make: Callable[..., Problem], params: dict[str, tuple[Any, str]] | None = None) -> None:
    """Make ``make(**params) -> Problem`` available as ``name`` in this process (``params``:
    ``{name: (default, help)}``; default: the function's keyword defaults). Worker processes of
    a sweep do not see it: for those, give the problem as ``FILE.py:FUNCTION``,
    ``module:FUNCTION`` or an entry point."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"register: name={name!r}; must be a non-empty string without ':'")
    if name in _BUILTIN:
        raise ValueError(f"register: {name!r} is a built-in problem; choose another name")
    if not callable(make):
        raise ValueError(f"register: make={make!r} is not callable (a function make(**params) -> Problem)")
    _REGISTERED[name] = (make, dict(params) if params is not None else _signature_params(make))


def unregister(name: str) -> None:
    """Forget a name given to :func:`register`."""
    _REGISTERED.pop(name, None)


def names() -> list[str]:
    """The built-in, registered and installed (entry-point) problem names."""
    return list(_BUILTIN) + list(_REGISTERED) + [n for n in _entry_points() if n not in _BUILTIN]


def _entry_points() -> dict:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINTS)}


def _signature_params(make: Callable) -> dict[str, tuple[Any, str]]:
    return {n: (p.default, "") for n, p in inspect.signature(make).parameters.items()
            if p.default is not inspect.Parameter.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _file_module(path: Path):
    """Import a Python file as a module (once per path and content)."""
    path = path.resolve()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    key = f"stablebptt_problem_{digest}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]
            raise
    return sys.modules[key]


def _resolve(source: str) -> tuple[Callable, dict, dict]:
    """``(make, params spec, origin)`` of a problem source (see the module docstring)."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"problem={source!r}; give a problem name, FILE.py:FUNCTION or module:FUNCTION")
    if source in _BUILTIN:
        mod = importlib.import_module(f".{_BUILTIN[source]}", __name__)
        spec = getattr(mod, "PARAMS")
        spec = dict(spec[source]) if source in spec and isinstance(spec[source], dict) else dict(spec)
        make = getattr(mod, "make")
        if "name" in inspect.signature(make).parameters:
            make = _named(make, source)
        return make, spec, {"kind": "builtin", "name": source}
    if source in _REGISTERED:
        make, spec = _REGISTERED[source]
        return _named(make, source), spec, {"kind": "registered", "name": source}
    if ":" in source:
        where, func = source.rsplit(":", 1)
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ValueError(f"problem {source!r}: no such file {where!r} (relative paths start in {Path.cwd()})")
            mod = _file_module(path)
            origin = {"kind": "file", "path": str(path.resolve()),
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        else:
            try:
                mod = importlib.import_module(where)
            except ImportError as e:
                raise ValueError(f"problem {source!r}: cannot import module {where!r} ({e})") from None
            origin = {"kind": "module", "module": where, "path": getattr(mod, "__file__", None)}
        make = getattr(mod, func, None)
        if not callable(make):
            raise ValueError(f"problem {source!r}: {where} has no function {func!r} (a make(**params) -> Problem)")
        spec = getattr(mod, "PARAMS", None)
        return _named(make, source), dict(spec) if isinstance(spec, dict) else _signature_params(make), origin
    eps = _entry_points()
    if source in eps:
        make = eps[source].load()
        spec = getattr(sys.modules.get(make.__module__), "PARAMS", None)
        return _named(make, source), dict(spec) if isinstance(spec, dict) else _signature_params(make), {
            "kind": "entry_point", "name": source, "value": eps[source].value}
    raise ValueError(f"unknown problem {source!r}; available: {', '.join(names())}, or FILE.py:FUNCTION, "
                     "or module:FUNCTION")


def _named(make: Callable, name: str) -> Callable:
    """``make`` whose Problem carries ``name`` (the source that built it)."""
    def named(**params):
        kw = {"name": name} if "name" in inspect.signature(make).parameters and name in _BUILTIN else {}
        problem = make(**kw, **params)
        if not isinstance(problem, Problem):
            raise ValueError(f"problem {name!r}: make() returned {type(problem).__name__}, not a "
                             "stablebptt.problems.Problem")
        return problem if problem.name == name else dataclasses.replace(problem, name=name)

    return named


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _installed_from(module) -> tuple[str, str] | None:
    """``(distribution, version)`` when ``module``'s source file is one of the files an installed
    distribution lists (its RECORD): a package installed by pip, not an editable checkout."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    file = Path(file).resolve()
    top = module.__name__.split(".")[0]
    for dist_name in metadata.packages_distributions().get(top, []):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            continue
        for f in dist.files or ():
            if f.suffix == ".py" and Path(dist.locate_file(f)).resolve() == file:
                return dist.metadata["Name"], dist.version
    return None


def code_identity(source: str) -> dict | None:
    """What identifies the code of a problem source; every run records it in its manifest
    (``problem_code``) and its checkpoints, and a finished or interrupted run whose recorded
    identity differs from the current one is refused (:func:`stablebptt.run.code_change`):

    * ``FILE.py:FUNCTION``: ``{"file": absolute path, "sha256": the file's SHA-256}``;
    * ``module:FUNCTION`` and an installed entry point: ``{"module": name, "file": its source
      file, "sha256": …}`` — or, for a module installed from a distribution (a file its RECORD
      lists), ``{"module": name, "distribution": name, "version": …}``. Only the module's own
      file is hashed (the file on disk: what the next process imports);
    * built-in problems (part of the library, whose commit the manifest records) and registered
      ones (they exist in one process only): None.
    """
    kind = origin(source)
    if kind["kind"] == "file":
        return {"file": kind["path"], "sha256": kind["sha256"]}
    if kind["kind"] not in ("module", "entry_point"):
        return None
    name = kind["module"] if kind["kind"] == "module" else kind["value"].split(":", 1)[0].strip()
    module = importlib.import_module(name)
    installed = _installed_from(module)
    if installed is not None:
        return {"module": name, "distribution": installed[0], "version": installed[1]}
    file = getattr(module, "__file__", None)
    if not file or not Path(file).is_file():
        return None
    return {"module": name, "file": str(Path(file).resolve()), "sha256": _sha256(Path(file))}


def code_key(identity: dict | None) -> str | None:
    """The part of a :func:`code_identity` that decides whether two are the same code: the
    SHA-256, or ``distribution==version`` (a moved file with the same content is the same)."""
    if not identity:
        return None
    if identity.get("sha256"):
        return f"sha256:{identity['sha256']}"
    if identity.get("distribution"):
        return f"{identity['distribution']}=={identity.get('version')}"
    return None


def describe_code_change(old: dict | None, new: dict | None, since: str) -> str | None:
    """None when ``old`` and ``new`` (:func:`code_identity`) are the same code or either is
    unknown; else one line: ``problem file F changed since SINCE (sha256 1a2b3c4d → 5e6f7a8b)``."""
    a, b = code_key(old), code_key(new)
    if a is None or b is None or a == b:
        return None
    if new.get("module"):
        what = f"problem module {new['module']}" + (f" ({new['file']})" if new.get("file") else "")
    else:
        what = f"problem file {new.get('file')}"
    if a.startswith("sha256:") and b.startswith("sha256:"):
        how = f"sha256 {a[7:15]} → {b[7:15]}"
    else:
        how = f"{a.removeprefix('sha256:')[:8] if a.startswith('sha256:') else a} → " \
              f"{b.removeprefix('sha256:')[:8] if b.startswith('sha256:') else b}"
    return f"{what} changed since {since} ({how})"


def param_spec(source: str) -> dict[str, tuple[Any, str]]:
    """``{param: (default, description)}`` of a problem source."""
    return _resolve(source)[1]


def origin(source: str) -> dict:
    """Where a problem source was found: ``{"kind": builtin | registered | file | module |
    entry_point, …}``; a file's absolute ``path`` and ``sha256``."""
    return _resolve(source)[2]


def get(source: str, **params) -> Problem:
    """Build the problem ``source`` with the given parameters (the others take their defaults)."""
    make, spec, _ = _resolve(source)
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ValueError(f"problem {source!r} has no parameter(s) {unknown}; allowed: {sorted(spec)}")
    return make(**params)


def file_stem(source: str) -> str:
    """A file-name stem for a problem source: a name stays (``cartpole``); ``FILE.py:FUNCTION``
    becomes ``<file's stem>-FUNCTION`` (``sims/pm.py:make`` -> ``pm-make``), ``module:FUNCTION``
    ``module-FUNCTION``; any character outside [A-Za-z0-9._-] becomes ``-``."""
    name = source
    if ":" in name:
        where, fn = name.rsplit(":", 1)
        name = f"{Path(where).stem if where.endswith('.py') else where}-{fn}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def check_matches(problem: Problem, source: str, params: dict) -> None:
    """Raise ValueError unless ``problem`` is what ``source`` with ``params`` builds: the same
    name and, for every parameter of the source, the same value (given or default)."""
    if problem.name != source:
        raise ValueError(f"the problem given is {problem.name!r} but the config names {source!r}; pass the "
                         "problem the config names (or set config.problem to the problem's source)")
    spec = param_spec(source)
    want = {k: params.get(k, d) for k, (d, _) in spec.items()}
    have = {k: problem.params.get(k, want[k]) for k in want}
    diff = sorted(k for k in want if not same_param(have[k], want[k]))
    if diff:
        raise ValueError(f"problem {source!r} was built with {', '.join(f'{k}={have[k]!r}' for k in diff)} but the "
                         f"config says {', '.join(f'{k}={want[k]!r}' for k in diff)} (a parameter must equal the "
                         "config's value, or its float32 rounding)")


def _real(x) -> tuple[float, bool] | None:
    """``(float(x), whether x is floating)`` for a real scalar (Python, NumPy or JAX; not a bool
    or a string), else None."""
    import numpy as np

    if isinstance(x, (str, bytes, bool, np.bool_)):
        return None
    try:
        a = np.asarray(x)
    except Exception:  # noqa: BLE001 - anything numpy cannot hold is not a number
        return None
    return (float(a), a.dtype.kind == "f") if a.shape == () and a.dtype.kind in "fiu" else None


def same_param(have, want) -> bool:
    """Whether a problem's recorded parameter value ``have`` is the configured value ``want``:
    equal, or, when either is a floating number, one is exactly the float32 rounding of the
    other (a problem that stores its parameters as float32 records ``float32(0.05)`` for a
    configured 0.05; 0.0501 is not 0.05)."""
    import numpy as np

    h, w = _real(have), _real(want)
    if h is None or w is None or not (h[1] or w[1]):
        return bool(have == want)
    (h, _), (w, _) = h, w
    with np.errstate(over="ignore"):
        return h == w or float(np.float32(w)) == h or float(np.float32(h)) == w


__all__ = ["Problem", "get", "names", "param_spec", "register", "unregister", "origin", "check_matches", "file_stem",
           "code_identity"]
