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
import os
import re
import sys
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from .base import Problem

# built-in name -> module (relative to this package)
_BUILTIN: dict[str, str] = {
    "toy-field": "toys",
    "toy-rotation": "toys",
    "linear": "linear",
    "cartpole": "cartpole",
    "guidance": "guidance",
    "quantum": "quantum",
    "cart-chain": "chain",
    "ks": "ks",
    "burgers": "burgers",
    "kolmogorov": "kolmogorov",
    "hopper": "hopper",
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
    return {
        n: (p.default, "")
        for n, p in inspect.signature(make).parameters.items()
        if p.default is not inspect.Parameter.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _file_module(path: Path, source: str | None = None):
    """Import a Python file as a module (once per path and content). An exception raised while
    the file runs (a syntax error, a failed import, …) becomes a :class:`UserCodeError` naming
    the file and line (``source``: the problem source, for the message)."""
    path = path.resolve()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    key = f"stablebptt_problem_{digest}"
    if key not in sys.modules:
        note_user_file(path)
        spec = importlib.util.spec_from_file_location(key, path)
        assert spec is not None and spec.loader is not None  # a .py file (the caller checks)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as e:
            del sys.modules[key]
            err = user_code_error(e, f"loading problem {source or str(path)!r}") if isinstance(e, Exception) else None
            if err is not None:
                raise err from e
            raise
    return sys.modules[key]


def _import_user_module(where: str, source: str):
    """Import ``where`` (a module:FUNCTION source), its file noted as user code."""
    try:
        found = importlib.util.find_spec(where)
    except (ImportError, ValueError) as e:
        raise ValueError(f"problem {source!r}: cannot import module {where!r} ({e})") from None
    if found is None:
        raise ValueError(f"problem {source!r}: cannot import module {where!r} (No module named {where!r})")
    if found.origin and found.has_location:
        note_user_file(found.origin)
    try:
        return importlib.import_module(where)
    except Exception as e:  # located in the user's file when it is there
        err = user_code_error(e, f"loading problem {source!r}")
        if err is not None:
            raise err from e
        if isinstance(e, ImportError):
            raise ValueError(f"problem {source!r}: cannot import module {where!r} ({e})") from None
        raise


def _resolve(source: str) -> tuple[Callable, dict, dict]:
    """``(make, params spec, origin)`` of a problem source (see the module docstring)."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"problem={source!r}; give a problem name, FILE.py:FUNCTION or module:FUNCTION")
    if source in _BUILTIN:
        mod = importlib.import_module(f".{_BUILTIN[source]}", __name__)
        spec = mod.PARAMS
        spec = dict(spec[source]) if source in spec and isinstance(spec[source], dict) else dict(spec)
        make = mod.make
        if "name" in inspect.signature(make).parameters:
            make = _named(make, source)
        return make, spec, {"kind": "builtin", "name": source}
    if source in _REGISTERED:
        make, spec = _REGISTERED[source]
        note_user_file(_code_file(make))
        return _named(make, source), spec, {"kind": "registered", "name": source}
    if ":" in source:
        where, func = source.rsplit(":", 1)
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ValueError(f"problem {source!r}: no such file {where!r} (relative paths start in {Path.cwd()})")
            mod = _file_module(path, source)
            origin: dict[str, str | None] = {
                "kind": "file",
                "path": str(path.resolve()),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        else:
            mod = _import_user_module(where, source)
            origin = {"kind": "module", "module": where, "path": getattr(mod, "__file__", None)}
        make = getattr(mod, func, None)
        if not callable(make):
            raise ValueError(f"problem {source!r}: {where} has no function {func!r} (a make(**params) -> Problem)")
        spec = getattr(mod, "PARAMS", None)
        return _named(make, source), dict(spec) if isinstance(spec, dict) else _signature_params(make), origin
    eps = _entry_points()
    if source in eps:
        _import_user_module(eps[source].module, source)  # the package's file is user code
        make = eps[source].load()
        spec = getattr(sys.modules.get(make.__module__), "PARAMS", None)
        return (
            _named(make, source),
            dict(spec) if isinstance(spec, dict) else _signature_params(make),
            {"kind": "entry_point", "name": source, "value": eps[source].value},
        )
    raise ValueError(
        f"unknown problem {source!r}; available: {', '.join(names())}, or FILE.py:FUNCTION, or module:FUNCTION"
    )


def _named(make: Callable, name: str) -> Callable:
    """``make`` whose Problem carries ``name`` (the source that built it)."""

    def named(**params):
        kw = {"name": name} if "name" in inspect.signature(make).parameters and name in _BUILTIN else {}
        try:
            problem = make(**kw, **params)
        except Exception as e:  # located in the user's file when it is there
            err = user_code_error(e, f"building problem {name!r}")
            if err is not None:
                raise err from e
            raise
        if not isinstance(problem, Problem):
            raise ValueError(
                f"problem {name!r}: make() returned {type(problem).__name__}, not a stablebptt.problems.Problem"
            )
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
            if f.suffix == ".py" and Path(dist.locate_file(f)).resolve() == file:  # type: ignore[arg-type]  # a Path at run time
                return dist.metadata["Name"], dist.version
    return None


def code_identity(source: str) -> dict | None:
    """What identifies the code of a problem source; every run records it in its manifest
    (``problem_code``) and its checkpoints, and a finished or interrupted run whose recorded
    identity differs from the current one is refused (:func:`stablebptt.experiments.run.code_change`):

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
    assert new is not None  # code_key(None) is None
    if new.get("module"):
        what = f"problem module {new['module']}" + (f" ({new['file']})" if new.get("file") else "")
    else:
        what = f"problem file {new.get('file')}"
    if a.startswith("sha256:") and b.startswith("sha256:"):
        how = f"sha256 {a[7:15]} → {b[7:15]}"
    else:
        how = (
            f"{a.removeprefix('sha256:')[:8] if a.startswith('sha256:') else a} → "
            f"{b.removeprefix('sha256:')[:8] if b.startswith('sha256:') else b}"
        )
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
        raise ValueError(
            f"the problem given is {problem.name!r} but the config names {source!r}; pass the "
            "problem the config names (or set config.problem to the problem's source)"
        )
    spec = param_spec(source)
    want = {k: params.get(k, d) for k, (d, _) in spec.items()}
    have = {k: problem.params.get(k, want[k]) for k in want}
    diff = sorted(k for k in want if not same_param(have[k], want[k]))
    if diff:
        raise ValueError(
            f"problem {source!r} was built with {', '.join(f'{k}={have[k]!r}' for k in diff)} but the "
            f"config says {', '.join(f'{k}={want[k]!r}' for k in diff)} (a parameter must equal the "
            "config's value, or its float32 rounding)"
        )


def _real(x) -> tuple[float, bool] | None:
    """``(float(x), whether x is floating)`` for a real scalar (Python, NumPy or JAX; not a bool
    or a string), else None."""
    import numpy as np

    if isinstance(x, (str, bytes, bool, np.bool_)):
        return None
    try:
        a = np.asarray(x)
    except Exception:  # anything numpy cannot hold is not a number
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
    (hv, _), (wv, _) = h, w
    with np.errstate(over="ignore"):
        return hv == wv or float(np.float32(wv)) == hv or float(np.float32(hv)) == wv


# ----------------------------------------------------------------------------- user code: located errors
class UserCodeError(ValueError):
    """A mistake in a problem's own code, as one line ``FILE:LINE: what`` (the file and line in
    the user's problem file; ``problem 'NAME': what`` where the code is not in a user file). The
    exception it was made from, with its full traceback, is its ``__cause__``."""


#: the (real) paths of the files problems were loaded from: FILE.py sources, the modules of
#: module:FUNCTION sources and entry points, the files of registered functions
_USER_FILES: set[str] = set()
#: longest exception message quoted in a located error (the rest is in the --debug traceback)
MAX_QUOTED = 600


def note_user_file(path) -> None:
    """Treat ``path`` as user code: errors raised in it are located there."""
    if path:
        _USER_FILES.add(os.path.realpath(str(path)))


def is_user_file(filename) -> bool:
    return bool(filename) and not str(filename).startswith("<") and os.path.realpath(str(filename)) in _USER_FILES


def _code_file(fn) -> str | None:
    try:
        return inspect.getsourcefile(inspect.unwrap(fn))
    except (TypeError, ValueError):
        return None


def _shown(path: str) -> str:
    """``path`` as the user would type it: relative to the working folder when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _flat(text: object, limit: int = MAX_QUOTED) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def user_frame(exc: BaseException) -> tuple[str, int, str | None] | None:
    """``(file, line, function)`` of the innermost traceback frame of ``exc`` (or of the
    exceptions it was raised from) in a user file (:func:`note_user_file`); a syntax error in a
    user file: its own file and line. None where no frame is in user code."""
    todo: list[BaseException | None]
    todo, seen = [exc], set()
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, SyntaxError) and e.lineno and is_user_file(e.filename):
            return e.filename, int(e.lineno), None  # type: ignore[return-value]  # not None: a user file
        found = None
        for frame, line in traceback.walk_tb(e.__traceback__):
            if is_user_file(frame.f_code.co_filename):
                found = (frame.f_code.co_filename, int(line), frame.f_code.co_name)
        if found is not None:
            return found
        todo += [e.__cause__, e.__context__]
    return None


def user_code_error(exc: BaseException, during: str = "") -> UserCodeError | None:
    """``exc`` as a :class:`UserCodeError` located at its innermost frame in user code
    (``FILE:LINE: Type: message (in function(), while …)``), or None when no frame of it is in a
    user file (an error of the library, or of a library the problem calls, stays as it is)."""
    if isinstance(exc, UserCodeError):
        return exc
    loc = user_frame(exc)
    if loc is None:
        return None
    path, line, func = loc
    msg = exc.msg if isinstance(exc, SyntaxError) and loc[2] is None else str(exc)
    context = ", ".join(
        x
        for x in (f"in {func}()" if func and not func.startswith("<") else "", f"while {during}" if during else "")
        if x
    )
    text = f"{_shown(path)}:{line}: {type(exc).__name__}" + (f": {_flat(msg)}" if msg else "")
    return UserCodeError(text + (f" ({context})" if context else ""))


def _located(problem: Problem, *fns) -> str:
    """Where to point for a contract a problem's function breaks: ``FILE:LINE`` of the first of
    ``fns`` defined in a user file (its ``def`` line), else ``problem 'NAME'``."""
    for fn in fns:
        target = fn
        if fn is not None and not inspect.isfunction(inspect.unwrap(fn)) and not inspect.ismethod(fn):
            target = type(fn).__call__  # a callable object (a module): its __call__
        path = _code_file(target) if target is not None else None
        if path and is_user_file(path):
            try:
                line = inspect.getsourcelines(inspect.unwrap(target))[1]
            except (OSError, TypeError):
                continue
            return f"{_shown(path)}:{line}"
    return f"problem {problem.name!r}"


def _run_user(problem: Problem, during: str, call, *, contract: str | None = None, at=()):
    """``call()``; an exception raised in user code becomes a located :class:`UserCodeError`;
    a shape error the library raises on the problem's behalf (TypeError, ValueError, IndexError)
    becomes one that states ``contract``, located at the first user function of ``at``."""
    try:
        return call()
    except Exception as e:  # re-raised unless it can be located
        err = user_code_error(e, during)
        if err is not None:
            raise err from e
        if contract and isinstance(e, (TypeError, ValueError, IndexError)):
            raise UserCodeError(f"{_located(problem, *at)}: {contract} ({type(e).__name__}: {_flat(e)})") from e
        raise


def _shape(shape) -> tuple[int, ...]:
    return tuple(int(n) for n in shape)


def check_states(problem: Problem, states, *, n: int | None = None, what: str = "states", where: str | None = None):
    """``states`` as a numpy array after checking them against the problem's contract: shape
    ``(n, *state_shape)``, a floating dtype, every entry finite. ValueError naming ``what`` and
    ``where`` (default: the problem's ``sample_data``) otherwise."""
    import numpy as np

    at = where or f"{_located(problem, problem.sample_data)}: sample_data returned"
    want = _shape(problem.state_shape)
    try:
        arr = np.asarray(states)
    except Exception as e:  # whatever it is, it is not an array of states
        raise UserCodeError(
            f"{at} {what} of type {type(states).__name__}, not an array of states ({type(e).__name__}: {_flat(e, 200)})"
        ) from e
    if arr.dtype == object or arr.ndim == 0:
        raise UserCodeError(
            f"{at} {what} of type {type(states).__name__}, not an array of states of shape "
            f"(N, {', '.join(map(str, want))})".replace(", )", ")")
        )
    lead = "N" if n is None else str(n)
    expect = "(" + ", ".join([lead, *map(str, want)]) + ")"
    if tuple(arr.shape[1:]) != want or (n is not None and arr.shape[0] != n):
        why = f"the problem's state_shape is {want}" if tuple(arr.shape[1:]) != want else f"{n} states were asked for"
        raise UserCodeError(f"{at} {what} of shape {tuple(arr.shape)}; {why}, so the shape must be {expect}")
    if arr.dtype.kind != "f":
        raise UserCodeError(f"{at} {what} of dtype {arr.dtype}; states must be floating point (float32)")
    bad = int(arr.size - np.isfinite(arr).sum())
    if bad:
        raise UserCodeError(
            f"{at} {what} with {bad} non-finite value(s) (NaN/inf) of {arr.size}; every entry must be finite"
        )
    return arr


def _not_traceable():
    import jax

    return (
        jax.errors.ConcretizationTypeError,
        jax.errors.TracerArrayConversionError,
        jax.errors.TracerBoolConversionError,
        jax.errors.TracerIntegerConversionError,
    )


def _controller(problem: Problem, zero_last: bool, seed: int = 0):
    """The problem's controller, abstract (nothing runs) where its factory can be traced."""
    import equinox as eqx
    import jax

    make = lambda k: problem.make_controller(k, zero_last=zero_last)
    key = jax.random.PRNGKey(seed)
    try:
        return eqx.filter_eval_shape(make, key)
    except _not_traceable():
        return make(key)


def weight_shapes(model) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a controller's weights as :func:`stablebptt.problems.controllers.weights_dict`
    names them (the controller may be abstract)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from .controllers import _leaf_name, _weight_layers

    layers = _weight_layers(model)
    if layers:
        return {
            f"w{i}_{p}": _shape(getattr(layer, p).shape) for i, layer in enumerate(layers) for p in ("kernel", "bias")
        }
    inexact = lambda a: (
        eqx.is_inexact_array(a) or isinstance(a, jax.ShapeDtypeStruct) and jnp.issubdtype(a.dtype, jnp.inexact)
    )
    params = eqx.filter(model, inexact)
    return {_leaf_name(p): _shape(a.shape) for p, a in jax.tree_util.tree_leaves_with_path(params)}


def read_weights(path, label: str = "init_weights", what: str = "controller weights") -> dict:
    """The arrays of a weights file (an ``.npz``, or a run folder's ``weights.npz``); ValueError
    naming ``label`` and the file when it is missing or not an ``.npz`` of arrays (``what``:
    what the file should hold, for the message). Object (pickled) arrays are not read."""
    import zipfile

    import numpy as np

    from .controllers import weights_file

    try:
        f = weights_file(path)
    except FileNotFoundError as e:
        raise ValueError(f"{label} {e}") from None
    try:
        with np.load(f, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("it holds a single .npy array, not named arrays")
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        why = str(e) if "single .npy" in str(e) else "numpy cannot read it as an .npz archive"
        raise ValueError(f"{label} {f}: not an .npz of {what} ({why})") from None


def check_weights(problem: Problem, model, arrays: dict, label: str) -> None:
    """ValueError naming ``label`` unless ``arrays`` have the names and shapes of ``model``'s weights."""
    want = weight_shapes(model)
    if set(arrays) != set(want):
        raise ValueError(
            f"{label}: holds arrays {sorted(arrays)}; the controller of problem {problem.name!r} "
            f"has weights {sorted(want)}"
        )
    for k, shape in want.items():
        if tuple(arrays[k].shape) != shape:
            raise ValueError(
                f"{label}: {k} has shape {tuple(arrays[k].shape)}; the controller of problem "
                f"{problem.name!r} expects {shape}"
            )


def check_problem(
    problem: Problem,
    *,
    n_train: int = 8,
    n_test: int = 8,
    data="paper",
    batch_size: int = 8,
    zero_last: bool | None = None,
    seed: int = 0,
    model=None,
) -> Any:
    """Check a problem against its contract before anything compiles: ``sample_data(data,
    n_train, n_test)`` returns (train, test) states of shape (n, *state_shape), floating point,
    finite; the controller maps a batch of states to controls of shape (B, *control_shape)
    (by abstract evaluation, ``jax.eval_shape``); ``step`` maps states and controls of the
    declared shapes to states of the state's shape and dtype; ``loss.state_loss`` returns a
    scalar. Raises :class:`UserCodeError` (a ValueError) naming the file and line of the user
    code at fault and the contract broken; an exception raised in user code is located at its
    innermost frame there. ``model``: check this controller instead of a new one. Returns the
    controller checked (abstract where its factory can be traced)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    if n_train or n_test:
        out = _run_user(
            problem, "sampling the data (sample_data)", lambda: problem.sample_data(data, int(n_train), int(n_test))
        )
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise UserCodeError(
                f"{_located(problem, problem.sample_data)}: sample_data returned "
                f"{type(out).__name__}; it must return a pair (train, test) of state arrays"
            )
        for what, arr, n in (("train states", out[0], n_train), ("test states", out[1], n_test)):
            check_states(problem, arr, n=int(n), what=what)
    zl = problem.zero_last_default if zero_last is None else bool(zero_last)
    if model is None:
        model = _run_user(
            problem,
            "building the controller (make_controller)",
            lambda: _controller(problem, zl, seed),
            contract="make_controller(key, zero_last=…) fails",
            at=(problem.make_controller,),
        )
    b = max(1, min(int(batch_size), int(n_train) if n_train else int(batch_size)))
    state_shape, control_shape = _shape(problem.state_shape), _shape(problem.control_shape)
    x = jax.ShapeDtypeStruct((b, *state_shape), jnp.float32)
    c = _run_user(
        problem,
        "applying the controller",
        lambda: eqx.filter_eval_shape(lambda m, s: m(s), model, x),
        contract=f"the controller cannot take a batch of states of shape {x.shape} (state_shape {state_shape})",
        at=(model, problem.make_controller),
    )
    want = (b, *control_shape)
    at = _located(problem, model, problem.make_controller)
    if not isinstance(c, jax.ShapeDtypeStruct):
        raise UserCodeError(
            f"{at}: the controller returns {type(c).__name__} for a batch of {b} states; it must return "
            f"one array of controls of shape {want} (control_shape {control_shape})"
        )
    if tuple(c.shape) != want:
        raise UserCodeError(
            f"{at}: the controller returns controls of shape {tuple(c.shape)} for a batch of {b} "
            f"states of shape {state_shape}; the problem's control_shape is {control_shape}, so the "
            f"shape must be {want}"
        )
    if not jnp.issubdtype(c.dtype, jnp.floating):
        raise UserCodeError(
            f"{at}: the controller returns controls of dtype {c.dtype}; controls must be floating point (float32)"
        )
    u = jax.ShapeDtypeStruct(want, jnp.float32)
    x1 = _run_user(
        problem,
        "applying step(x, c)",
        lambda: jax.eval_shape(problem.step, x, u),
        contract=f"step(x, c) fails for states of shape {x.shape} and controls of shape {u.shape}",
        at=(problem.step,),
    )
    at = _located(problem, problem.step)
    if not isinstance(x1, jax.ShapeDtypeStruct) or tuple(x1.shape) != x.shape:
        got = f"shape {tuple(x1.shape)}" if isinstance(x1, jax.ShapeDtypeStruct) else type(x1).__name__
        raise UserCodeError(
            f"{at}: step(x, c) returns {got} for states of shape {x.shape} and controls of shape "
            f"{u.shape}; it must return the next states, of shape {x.shape} (state_shape {state_shape})"
        )
    if x1.dtype != x.dtype:
        raise UserCodeError(
            f"{at}: step(x, c) returns states of dtype {x1.dtype}; they must be {x.dtype} like the states it is given"
        )
    state_loss = getattr(problem.loss, "state_loss", None)
    if callable(state_loss):
        loss = _run_user(
            problem,
            "applying the loss (state_loss)",
            lambda: jax.eval_shape(state_loss, x),
            contract=f"state_loss fails for states of shape {x.shape}",
            at=(state_loss,),
        )
        if not isinstance(loss, jax.ShapeDtypeStruct) or tuple(loss.shape) != ():
            got = f"shape {tuple(loss.shape)}" if isinstance(loss, jax.ShapeDtypeStruct) else type(loss).__name__
            raise UserCodeError(
                f"{_located(problem, state_loss)}: state_loss returns {got} for states of shape "
                f"{x.shape}; it must return a scalar (the loss of the batch, e.g. a mean)"
            )
    return model


def check_for_training(
    problem: Problem, config, seed: int = 0, *, weights: dict | None = None, weights_label: str | None = None
) -> None:
    """:func:`check_problem` with the sizes, data and controller that training ``config`` with
    ``seed`` uses, and the config's ``init_weights`` (or ``weights``, arrays already read)
    against the controller's weights. Raises ValueError naming what is wrong (see
    :func:`check_problem`), before anything compiles."""
    zl = problem.zero_last_default if config.zero_last is None else config.zero_last
    model = check_problem(
        problem,
        n_train=config.n_train,
        n_test=config.n_test,
        data="paper" if config.data == "paper" else int(seed),
        batch_size=config.batch_size,
        zero_last=zl,
        seed=int(seed),
    )
    if config.init_weights or weights is not None:
        label = weights_label or "init_weights"
        arrays = weights if weights is not None else read_weights(config.init_weights, label)
        check_weights(problem, model, arrays, f"{label} {config.init_weights}")


__all__ = [
    "Problem",
    "get",
    "names",
    "param_spec",
    "register",
    "unregister",
    "origin",
    "check_matches",
    "file_stem",
    "UserCodeError",
    "user_code_error",
    "check_problem",
    "check_for_training",
    "check_states",
    "check_weights",
    "read_weights",
    "weight_shapes",
    "code_identity",
]
