r"""*Does stopping the gradient help on my simulator?* — a seed-paired comparison of gradient-flow
variants on one problem, in one call.

:func:`compare` trains every **variant** (a mode letter ``R M S N C``, optionally with flow
options: ``R:truncate=4`` truncated BPTT, ``R:decay=0.9`` gradient decay, ``C:combiner=sign_g``,
``M:and_mask=1``; several options chain: ``R:truncate=4:decay=0.9``) on the same seeds and reads
the run records with the seed-paired statistics of :mod:`stablebptt.analysis.stats`:

* **final loss** of a run: the last point of the ``window``-epoch trailing moving average of its
  test loss (:func:`stablebptt.analysis.stats.final_value`; default window: a tenth of the epochs, at
  most 30, at least 1); a diverged run counts as ``+inf``;
* **table**: per variant the geometric mean and geometric standard deviation (×/÷) of the final
  losses over the seeds that did not diverge, their min and max, and how many diverged;
* **ratios**: per variant and seed ``r_s = L_ref,s / L_variant,s`` (> 1: the variant ends lower),
  their geometric mean and a percentile bootstrap 95 % interval over the seeds
  (:func:`stablebptt.analysis.stats.make_test`);
* **verdict** per pair, from the interval alone: ``"<variant> better"`` when it lies above 1,
  ``"<reference> better"`` when it lies below 1, otherwise ``"undecided at n seeds"``;
* **best**: the variant with the lowest geometric mean final loss over all its seeds (a
  variant with a diverged seed ranks behind every variant without one).

The training is a sweep (:func:`stablebptt.experiments.sweep.run_sweep`: one run folder per (config, seed),
resumable — a rerun computes nothing, an interrupted one continues —, a local process pool or
Ray). The folder then also holds ``comparison.json`` (settings, the run id of every (variant,
seed), the numbers), ``COMPARISON.md`` and ``figures/``. :func:`load` rebuilds the
:class:`Comparison` of a folder from its run records alone, so comparisons on many problems can
be aggregated (``docs/make_beyond.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import problems
from ..core.gates import Flow
from ..experiments import sweep
from ..experiments.run import is_done
from ..training.config import QUICK_EPOCHS, QUICK_SETTINGS, run_id

# the tables, statistics and figures (pandas, matplotlib) are imported where they are used:
# `import stablebptt` (which re-exports compare) does not load them

#: the flow options a variant may set, with their defaults (the RunConfig fields of the same name)
VARIANT_OPTIONS: dict[str, Any] = {"truncate": 0, "decay": 1.0, "combiner": "sign", "and_mask": 0.0}
#: single-letter modes a variant may start with
VARIANT_MODES = ("R", "M", "S", "N", "C")
DEFAULT_VARIANTS = ("R", "M", "C", "S")
COMPARISON_FILE = "comparison.json"
SUMMARY_FILE = "COMPARISON.md"
#: the RunConfig fields a comparison never takes from the shared ``config`` (the variants and the problem set them)
NOT_SHARED = ("problem", "problem_params", "mode") + tuple(VARIANT_OPTIONS)


# ----------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """One gradient-flow variant: a mode letter and flow options (the non-default ones).

    ``name`` is its canonical text, ``mode`` then ``:key=value`` per option in the order of
    :data:`VARIANT_OPTIONS` (``"R:truncate=4:decay=0.9"``); ``config`` the RunConfig fields it sets.
    """

    mode: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return self.mode + "".join(f":{k}={_opt_text(v)}" for k, v in self.options)

    @property
    def config(self) -> dict:
        return {"mode": self.mode} | dict(self.options)

    def __str__(self) -> str:
        return self.name


def _opt_text(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def parse_variant(text: str) -> Variant:
    """``"R"``, ``"R:truncate=4"``, ``"C:combiner=sign_g"``, ``"R:truncate=4:decay=0.9"`` -> :class:`Variant`.

    Raises ValueError (one line naming the variant, the bad part and what is allowed) for an
    unknown mode or option, a bad value, an option repeated, or ``combiner`` on a mode other than C.
    """
    where = f"variant {text!r}"
    parts = str(text).strip().split(":")
    mode = parts[0].strip().upper()
    if mode not in VARIANT_MODES:
        raise ValueError(
            f"{where}: unknown mode {parts[0]!r}; allowed: {', '.join(VARIANT_MODES)}, then options "
            f"as :KEY=VALUE with KEY one of {', '.join(VARIANT_OPTIONS)} (e.g. R:truncate=4)"
        )
    opts: dict[str, Any] = {}
    for part in parts[1:]:
        key, eq, raw = part.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or not key or not raw:
            raise ValueError(f"{where}: {part!r} is not KEY=VALUE; allowed keys: {', '.join(VARIANT_OPTIONS)}")
        if key not in VARIANT_OPTIONS:
            raise ValueError(f"{where}: unknown option {key!r}; allowed: {', '.join(VARIANT_OPTIONS)}")
        if key in opts:
            raise ValueError(f"{where}: option {key!r} given twice")
        opts[key] = _option_value(where, key, raw)
    if "combiner" in opts and mode != "C":
        raise ValueError(f"{where}: combiner applies to mode C only (C:combiner=…)")
    try:
        Flow(mode=mode, **opts)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    kept = tuple((k, opts[k]) for k in VARIANT_OPTIONS if k in opts and opts[k] != VARIANT_OPTIONS[k])
    return Variant(mode, kept)


def _option_value(where: str, key: str, raw: str):
    default = VARIANT_OPTIONS[key]
    if isinstance(default, str):
        return raw
    kind = int if isinstance(default, int) else float
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(
            f"{where}: {key}={raw!r}; takes {'an integer' if kind is int else 'a number'} (default {default!r})"
        ) from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{where}: {key}={raw!r}; takes a finite number (default {default!r})")
    return value


def parse_variants(texts: str | Sequence[str]) -> list[Variant]:
    """A comma-separated string or a list of variant texts -> distinct variants, in order.

    Raises ValueError for an empty list or for two texts that name the same variant
    (``R`` and ``R:truncate=0``)."""
    items = [t for t in (texts.split(",") if isinstance(texts, str) else texts)]
    items = [str(t).strip() for t in items if str(t).strip()]
    if not items:
        raise ValueError(f"no variants given; e.g. {','.join(DEFAULT_VARIANTS)}")
    seen: dict[str, str] = {}
    out = []
    for t in items:
        v = parse_variant(t)
        if v.name in seen:
            raise ValueError(f"variants {seen[v.name]!r} and {t!r} are the same ({v.name}); give each once")
        seen[v.name] = t
        out.append(v)
    return out


# ----------------------------------------------------------------------------- the sweep
def quick_config(problem: str, params: dict | None = None) -> dict:
    """Short-training RunConfig fields for ``problem``: a built-in problem's quick settings
    (:data:`stablebptt.training.config.QUICK_SETTINGS`), else the quick epochs of ``stablebptt
    train`` (``QUICK_EPOCHS``), else 20 epochs with at most 64 train and test states (fewer
    where the problem's defaults have fewer)."""
    if problem in QUICK_SETTINGS:
        return dict(QUICK_SETTINGS[problem])
    if problem in QUICK_EPOCHS:
        return {"epochs": QUICK_EPOCHS[problem]}
    d = problems.get(problem, **(params or {})).defaults
    return {"epochs": 20, "n_train": min(64, d.get("n_train", 256)), "n_test": min(64, d.get("n_test", 256))}


def comparison_spec(
    problem: str,
    variants: Sequence[Variant],
    seeds: int | Sequence[int],
    params: dict,
    config: dict,
    name: str | None = None,
):
    """The :class:`stablebptt.experiments.sweep.SweepSpec` of a comparison: one experiment block per set of
    flow options (its modes: the variants' letters), ``config`` and ``params`` shared by all.

    Raises :class:`stablebptt.experiments.sweep.SpecError` naming a bad field."""
    bad = sorted(set(config) & set(NOT_SHARED))
    if bad:
        raise sweep.SpecError(
            f"config sets {', '.join(bad)}: the problem and its parameters are arguments of "
            f"their own, and modes and flow options belong to the variants (e.g. R:truncate=4)"
        )
    blocks: dict[tuple, list[str]] = {}
    for v in variants:
        blocks.setdefault(v.options, []).append(v.mode)
    seed_list = list(range(int(seeds))) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    # the sweep takes clipping and the optimizer from blocks of their own (the latter would override config)
    own = {
        "clips": [config.get("clip", "none")],
        "optimizers": [{k: config[k] for k in ("optimizer", "momentum") if k in config}],
    }
    rest = {k: v for k, v in config.items() if k not in ("clip", "optimizer", "momentum")}
    raw = {
        "name": name or f"compare-{problems.file_stem(problem)}",
        "seeds": seed_list if seed_list else 0,
        "experiment": [
            {"problem": problem, "problem_params": dict(params), "modes": modes, **own, "config": rest | dict(opts)}
            for opts, modes in blocks.items()
        ],
    }
    if isinstance(seeds, (int, np.integer)) and int(seeds) < 1:
        raise sweep.SpecError(f"seeds={seeds}; must be ≥ 1")
    return sweep.load_spec(raw)


def variant_of(config) -> str:
    """The canonical variant name of a RunConfig (its mode letter and non-default flow options)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    mode = d["mode"] if isinstance(d["mode"], str) else "".join(d["mode"])
    opts = tuple(
        (k, d[k])
        for k in VARIANT_OPTIONS
        if d.get(k, VARIANT_OPTIONS[k]) != VARIANT_OPTIONS[k] and not (k == "combiner" and mode != "C")
    )
    return Variant(mode, opts).name


def run_ids(spec) -> dict[str, dict[int, str]]:
    """{variant name: {seed: run id}} of every job of a comparison's sweep spec."""
    out: dict[str, dict[int, str]] = {}
    for cfg, seed in sweep.expand(spec):
        out.setdefault(variant_of(cfg), {})[int(seed)] = run_id(cfg, seed)
    return out


# ----------------------------------------------------------------------------- statistics
def default_window(epochs: int) -> int:
    """The moving-average window of the final loss: a tenth of the epochs, between 1 and 30
    (30 at the paper's 1000 epochs, 1 — the raw last test loss — below 20)."""
    return int(min(30, max(1, int(epochs) // 10)))


@dataclass(frozen=True)
class Ratio:
    """The paired ratio ``reference / variant`` of final losses over seeds (> 1: the variant is lower).

    ``test`` holds the per-seed ratios, their geometric mean (``estimate``) and bootstrap
    interval (``lo``, ``hi``); ``verdict`` says which side of 1 the interval lies on."""

    variant: str
    reference: str
    test: Any  # stablebptt.analysis.stats.Test

    @property
    def estimate(self) -> float:
        return self.test.estimate

    @property
    def lo(self) -> float:
        return self.test.lo

    @property
    def hi(self) -> float:
        return self.test.hi

    @property
    def n(self) -> int:
        return self.test.n

    @property
    def verdict(self) -> str:
        return pair_verdict(self.test, self.variant, self.reference)

    def to_dict(self) -> dict:
        t = self.test
        return dict(
            variant=self.variant,
            reference=self.reference,
            ratio=f"{self.reference}/{self.variant}",
            estimate=_num(t.estimate),
            lo=_num(t.lo),
            hi=_num(t.hi),
            n=t.n,
            verdict=self.verdict,
            seeds=list(t.seeds),
            per_seed=[_num(x) for x in t.per_seed],
        )


def pair_verdict(test, variant: str, reference: str) -> str:
    """From a test of ``reference / variant`` against 1: ``"<variant> better"`` (the interval
    lies above 1), ``"<reference> better"`` (below 1), else ``"undecided at n seeds"``."""
    from . import stats

    if replace(test, side=">", threshold=1.0).verdict == stats.HELD:
        return f"{variant} better"
    if replace(test, side="<", threshold=1.0).verdict == stats.HELD:
        return f"{reference} better"
    return stats.undecided(test.n)


def ratio(finals, variant: str, reference: str, **boot) -> Ratio | None:
    """The paired :class:`Ratio` of two variants from a table of final losses (columns
    ``variant, seed, final``); None when no seed has both."""
    from . import stats

    runs = finals.rename(columns={"variant": "mode"})
    p = stats.paired(runs, reference, variant, [])
    if p.empty:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        r = p[reference].to_numpy(float) / p[variant].to_numpy(float)
    keep = ~np.isnan(r)  # both diverged: no ratio
    if not keep.any():
        return None
    det = [f"{_fmt(a)}/{_fmt(b)}" for a, b in zip(p[reference], p[variant])]
    t = stats.make_test(
        f"{reference}/{variant}",
        f"{reference}/{variant}",
        ">",
        1.0,
        p["seed"][keep],
        r[keep],
        [d for d, k in zip(det, keep) if k],
        geometric=True,
        **boot,
    )
    return Ratio(variant, reference, t)


def variant_table(finals, order: Sequence[str]) -> list[dict]:
    """Per variant: ``n`` seeds, ``diverged``, and over the seeds that did not diverge the
    geometric mean ``gm``, the geometric std ``gsd`` (exp of the sample std of ln L; 1 for one
    seed), ``min``/``max``; ``per_seed`` {seed: final}. NaN where no seed is finite."""
    rows = []
    for name in order:
        g = finals[finals["variant"] == name].sort_values("seed")
        v = g["final"].to_numpy(float)
        fin = v[np.isfinite(v)]
        ln = np.log(fin) if fin.size and np.all(fin > 0) else None
        rows.append(
            dict(
                variant=name,
                n=int(v.size),
                diverged=int(np.sum(np.isinf(v))),
                gm=float(np.exp(ln.mean())) if ln is not None else float("nan"),
                gsd=float(np.exp(ln.std(ddof=1)))
                if ln is not None and ln.size > 1
                else (1.0 if ln is not None else float("nan")),
                min=float(fin.min()) if fin.size else float("nan"),
                max=float(fin.max()) if fin.size else float("nan"),
                per_seed={int(s): float(x) for s, x in zip(g["seed"], v)},
            )
        )
    return rows


def best_variant(finals, order: Sequence[str]) -> str | None:
    """The variant with the lowest geometric mean final loss over all its seeds (diverged = +inf,
    so a variant with a diverged seed ranks behind all without one; among those, fewer diverged
    seeds, then the lower geometric mean of the others). None when nothing is measured."""
    best, key = None, None
    for row in variant_table(finals, order):
        if row["n"] == 0 or np.isnan(row["gm"]) and not row["diverged"]:
            continue
        k = (row["diverged"], row["gm"] if np.isfinite(row["gm"]) else np.inf)
        if key is None or k < key:
            best, key = row["variant"], k
    return best


# ----------------------------------------------------------------------------- the result
@dataclass
class Comparison:
    """The outcome of :func:`compare` (or :func:`load`) on one problem.

    Attributes:
      problem, params: the problem source and its parameters.
      variants: the variant names, in the order given; ``reference`` one of them.
      seeds: the seeds asked for; ``epochs``: training epochs; ``window``: moving-average window
        of the final loss (:func:`default_window`).
      config: the RunConfig fields shared by every run (epochs, lr, clip, …).
      runs: {variant: {seed: run id}}; ``folder``: where the run folders are.
      finals: DataFrame ``variant, seed, run_id, status, final`` (missing runs are absent).
      table: :func:`variant_table` rows; ``ratios``: {variant: :class:`Ratio` against the
        reference} for every other variant that shares a seed with it; ``best``: :func:`best_variant`.
      diagnosis: with ``diagnose=True``: the gradient-explosion measure of
        :func:`stablebptt.analysis.diagnose.diagnose_problem` on the problem (an untrained controller) and
        whether its recommended mode won (:meth:`diagnosis_summary`); else None.
      report: the sweep's :class:`stablebptt.experiments.sweep.SweepReport` (None from :func:`load`).
    """

    problem: str
    params: dict
    variants: list[str]
    reference: str
    seeds: list[int]
    epochs: int
    window: int
    config: dict
    runs: dict
    folder: Path
    finals: Any
    table: list[dict]
    ratios: dict[str, Ratio]
    best: str | None
    diagnosis: dict | None = None
    report: Any = None
    figures: list[Path] = field(default_factory=list)

    # ---- reading
    @property
    def missing(self) -> int:
        """Runs of the comparison without a finished record in the folder."""
        return sum(len(s) for s in self.runs.values()) - len(self.finals)

    def row(self, variant: str) -> dict:
        return next(r for r in self.table if r["variant"] == variant)

    def label(self) -> str:
        """The problem and its parameters: ``cartpole (poles=2)``."""
        from .results import problem_label

        p = ", ".join(f"{k}={_opt_text(v)}" for k, v in self.params.items())
        return problem_label(self.problem) + (f" ({p})" if p else "")

    def answer(self) -> str:
        """One line: which variant ended lowest and how it stands against the reference."""
        if self.best is None:
            return "answer: no finished runs yet"
        n = len(self.finals["seed"].unique())
        if self.best == self.reference:
            worse = [r.variant for r in self.ratios.values() if r.verdict == f"{self.reference} better"]
            open_ = [r.variant for r in self.ratios.values() if r.verdict != f"{self.reference} better"]
            txt = (
                f"answer: no variant beats {self.reference} — it has the lowest final loss "
                f"(gm {_fmt(self.row(self.reference)['gm'])} over {n} seeds)"
            )
            if worse:
                txt += f"; {', '.join(worse)} decidedly worse"
            if open_:
                txt += f"; {', '.join(open_)} undecided against it"
            return txt
        r = self.ratios.get(self.best)
        if r is None:
            return f"answer: {self.best} has the lowest final loss; no seed pairs it with {self.reference}"
        head = (
            f"{self.best} beats {self.reference}" if r.verdict == f"{self.best} better" else f"undecided at {r.n} seeds"
        )
        return (
            f"answer: {head} — {self.best} has the lowest final loss, {fmt_ratio(r.estimate)}× below "
            f"{self.reference}'s [95 % CI {fmt_ratio(r.lo)}, {fmt_ratio(r.hi)}] over {r.n} paired seeds"
        )

    def frame(self):
        """One row per variant, for tables across problems: ``problem``, ``param_<name>`` per
        problem parameter, ``variant, reference, n, diverged, gm, gsd, min, max`` (final losses),
        ``ratio, lo, hi, verdict`` (reference / variant; NaN and "" for the reference itself),
        ``best`` (bool), ``epochs``, ``window`` and, with a diagnosis, ``span_R, span_M,
        growth_phys, recommended_mode``."""
        import pandas as pd

        diag = (
            {k: self.diagnosis[k] for k in ("span_R", "span_M", "growth_phys", "recommended_mode")}
            if self.diagnosis
            else {}
        )
        rows = []
        for r in self.table:
            x = self.ratios.get(r["variant"])
            rows.append(
                {"problem": self.problem}
                | {f"param_{k}": v for k, v in self.params.items()}
                | {k: v for k, v in r.items() if k != "per_seed"}
                | dict(
                    reference=self.reference,
                    ratio=x.estimate if x else float("nan"),
                    lo=x.lo if x else float("nan"),
                    hi=x.hi if x else float("nan"),
                    verdict=x.verdict if x else "",
                    best=r["variant"] == self.best,
                    epochs=self.epochs,
                    window=self.window,
                )
                | diag
            )
        return pd.DataFrame(rows)

    def diagnosis_summary(self) -> str:
        """One line: diagnose's recommendation and whether it picked the winner."""
        d = self.diagnosis
        if not d:
            return ""
        rec = d["recommended_mode"]
        head = (
            f"diagnose: R's adjoint spans {d['span_R']:.1f} orders over T = {d['horizon']} (M: {d['span_M']:.1f}); "
            f"physics growth {d['growth_phys']:+.1f} orders, closed loop {d['growth_closed']:+.1f}; "
            f"recommends {rec}"
        )
        return head + " — " + d["picked"]

    # ---- writing
    def to_dict(self) -> dict:
        """Everything as JSON-able data (``comparison.json``)."""
        return dict(
            problem=self.problem,
            params=self.params,
            variants=self.variants,
            reference=self.reference,
            seeds=self.seeds,
            epochs=self.epochs,
            window=self.window,
            config=self.config,
            runs={v: {str(s): rid for s, rid in d.items()} for v, d in self.runs.items()},
            table=[
                {k: (_num(v) if isinstance(v, float) else v) for k, v in r.items() if k != "per_seed"}
                | {"per_seed": {str(s): _num(x) for s, x in r["per_seed"].items()}}
                for r in self.table
            ],
            ratios={v: r.to_dict() for v, r in self.ratios.items()},
            best=self.best,
            answer=self.answer(),
            diagnosis=self.diagnosis,
            missing=self.missing,
            figures=[
                str(Path(f).relative_to(self.folder)) if Path(f).is_relative_to(self.folder) else str(f)
                for f in self.figures
            ],
        )

    def table_markdown(self) -> str:
        rows = ["| variant | final test loss: gm ×/÷ gsd | min – max | seeds | diverged |", "|---|---|---|---|---|"]
        for r in self.table:
            best = " **(best)**" if r["variant"] == self.best else ""
            cell = "–" if np.isnan(r["gm"]) else f"{_fmt(r['gm'])} ×/÷ {r['gsd']:.2g}"
            span = "–" if np.isnan(r["min"]) else f"{_fmt(r['min'])} – {_fmt(r['max'])}"
            rows.append(f"| {r['variant']}{best} | {cell} | {span} | {r['n']} | {r['diverged'] or ''} |")
        return "\n".join(rows) + "\n"

    def ratios_markdown(self) -> str:
        rows = ["| ratio | per seed | gm [95 % CI] | verdict |", "|---|---|---|---|"]
        for r in self.ratios.values():
            seeds = ", ".join(f"s{s}: {fmt_ratio(x)}" for s, x in zip(r.test.seeds, r.test.per_seed))
            ci = f"[{fmt_ratio(r.lo)}, {fmt_ratio(r.hi)}]" if r.n > 1 else "(one seed: no interval)"
            rows.append(f"| {r.reference}/{r.variant} | {seeds} | {fmt_ratio(r.estimate)} {ci} | **{r.verdict}** |")
        return "\n".join(rows) + "\n"

    def markdown(self) -> str:
        """The summary page (``COMPARISON.md``)."""
        cfg = ", ".join(f"{k}={v}" for k, v in self.config.items())
        out = [
            f"# Comparison: {self.label()}",
            "",
            f"Variants {', '.join(self.variants)}; reference {self.reference}; seeds "
            f"{', '.join(map(str, self.seeds))}; {self.epochs} epochs ({cfg}).",
            "",
            f"Final test loss of a run: {final_text(self.window)} (diverged: ∞). gm: geometric mean over "
            "seeds, gsd: geometric std (over the seeds that did not diverge).",
            "",
            self.table_markdown(),
            f"Paired by seed: {self.reference}/X = {self.reference}'s final loss / X's (> 1: X ends lower); "
            "gm and a percentile bootstrap 95 % interval over seeds; the verdict says on which side of 1 "
            "the interval lies.",
            "",
            self.ratios_markdown(),
            self.answer().replace("answer:", "**Answer:**", 1),
            "",
        ]
        if self.diagnosis:
            out += [self.diagnosis_summary(), ""]
        if self.missing:
            out += [f"{self.missing} run(s) of the comparison have no finished record yet.", ""]
        if self.figures:
            out += (
                ["Figures:", ""]
                + [
                    f"![{Path(f).stem}]({Path(f).relative_to(self.folder).as_posix()})"
                    for f in self.figures
                    if str(f).endswith(".png")
                ]
                + [""]
            )
        return "\n".join(out)

    def save(self, figures: bool = True) -> list[Path]:
        """Write ``comparison.json``, ``COMPARISON.md`` and (``figures``) the figures into the
        folder; return the files written."""
        folder = Path(self.folder)
        written = []
        if figures and len(self.finals):
            self.figures = draw(self, folder / "figures")
            written += self.figures
        (folder / COMPARISON_FILE).write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        (folder / SUMMARY_FILE).write_text(self.markdown())
        return written + [folder / COMPARISON_FILE, folder / SUMMARY_FILE]


def final_text(window: int) -> str:
    """What the final loss of a run is, in words."""
    return (
        "its test loss at the last epoch"
        if int(window) == 1
        else f"the last point of its {int(window)}-epoch trailing moving average of the test loss"
    )


def _num(x):
    """A float for JSON: finite as is, ±inf and NaN as the strings "inf", "-inf", "nan"."""
    x = float(x)
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def _fmt(x) -> str:
    x = float(x)
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.3g}"


def fmt_ratio(x) -> str:
    """A ratio as text: 3 significant digits, more within 1 % of 1 (``1.0003``), so that a
    ratio that is not 1 never reads as 1."""
    x = float(x)
    return f"{x:.5g}" if math.isfinite(x) and 0.99 < x < 1.01 and x != 1 else _fmt(x)


# ----------------------------------------------------------------------------- analysis
def final_table(folder: str | Path, runs: dict, window: int):
    """DataFrame ``variant, seed, run_id, status, final``: one row per finished run of ``runs``
    ({variant: {seed: run id}}) under ``folder`` (:func:`stablebptt.analysis.stats.final_losses`)."""
    import pandas as pd

    from . import results, stats

    folder = Path(folder)
    frames, who = [], {}
    for name, by_seed in runs.items():
        for rid in by_seed.values():
            if is_done(folder / rid):
                frames.append(results.run_rows(folder / rid))
                who[rid] = name
    cols = ["variant", "seed", "run_id", "status", "final"]
    if not frames:
        return pd.DataFrame(columns=cols)
    per_run = stats.final_losses(pd.concat(frames, ignore_index=True), window=window)
    per_run["variant"] = per_run["run_id"].map(who)
    per_run["seed"] = per_run["seed"].astype(int)
    return per_run[cols].sort_values(["variant", "seed"]).reset_index(drop=True)


def analyse(
    folder: str | Path,
    *,
    problem: str,
    params: dict,
    variants: Sequence[str],
    reference: str,
    seeds: Sequence[int],
    epochs: int,
    window: int,
    config: dict,
    runs: dict,
    n_boot: int | None = None,
    **extra,
) -> Comparison:
    """The :class:`Comparison` of the finished runs ``runs`` under ``folder`` (no training)."""
    return from_finals(
        final_table(folder, runs, window),
        variants=variants,
        reference=reference,
        n_boot=n_boot,
        problem=problem,
        params=dict(params),
        seeds=[int(s) for s in seeds],
        epochs=int(epochs),
        window=int(window),
        config=dict(config),
        runs=runs,
        folder=Path(folder),
        **extra,
    )


def from_finals(finals, *, variants: Sequence[str], reference: str, n_boot: int | None = None, **fields) -> Comparison:
    """A :class:`Comparison` from a table of final losses (``variant, seed, final``, and
    ``run_id``): its table, its ratios against ``reference`` and its best variant; ``fields``:
    the other attributes."""
    boot = {"n_boot": n_boot} if n_boot else {}
    ratios = {}
    for v in variants:
        if v != reference and (r := ratio(finals, v, reference, **boot)) is not None:
            ratios[v] = r
    return Comparison(
        variants=list(variants),
        reference=reference,
        finals=finals,
        table=variant_table(finals, variants),
        ratios=ratios,
        best=best_variant(finals, variants),
        **fields,
    )


def load(folder: str | Path) -> Comparison:
    """The :class:`Comparison` recorded in ``folder`` (its ``comparison.json``), recomputed from
    the run records there (nothing is trained; the problem's code is not needed). The
    diagnosis, if any, is the recorded one."""
    folder = Path(folder)
    f = folder / COMPARISON_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{folder}: no {COMPARISON_FILE} (not a comparison folder; run `stablebptt compare`)")
    d = json.loads(f.read_text())
    runs = {v: {int(s): rid for s, rid in by.items()} for v, by in d["runs"].items()}
    c = analyse(
        folder,
        problem=d["problem"],
        params=d["params"],
        variants=d["variants"],
        reference=d["reference"],
        seeds=d["seeds"],
        epochs=d["epochs"],
        window=d["window"],
        config=d["config"],
        runs=runs,
        diagnosis=d.get("diagnosis"),
    )
    c.figures = [folder / p for p in d.get("figures", [])]
    return c


def collect(folders: Sequence[str | Path]):
    """:meth:`Comparison.frame` of every comparison folder (:func:`load`), concatenated: one row
    per (folder, variant), with a ``folder`` column."""
    import pandas as pd

    frames = [load(f).frame().assign(folder=str(f)) for f in folders]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ----------------------------------------------------------------------------- figures
def draw(c: Comparison, out_dir: str | Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """The comparison's figures: the test loss per epoch of every variant (geometric mean and
    ×/÷ geometric std over seeds, :func:`stablebptt.analysis.plots.problem_figure`) and the paired
    per-seed ratios against the reference (:func:`stablebptt.analysis.plots.ratio_figure`)."""
    import pandas as pd

    from . import plots, results

    rows = [results.run_rows(Path(c.folder) / rid) for rid in c.finals["run_id"]]
    df = pd.concat(rows, ignore_index=True)
    name = dict(zip(c.finals["run_id"], c.finals["variant"]))
    df["mode"] = df["run_id"].map(name)  # the variant names label the curves
    for k, v in VARIANT_OPTIONS.items():  # already in the variant names: not a separate split
        if k in df.columns:
            df[k] = v
    stem = problems.file_stem(c.problem)
    out_dir = Path(out_dir)
    fig = plots.problem_figure(df, c.problem, smooth=c.window > 1, window=c.window, author_ylim=False)
    paths = plots.save_figure(fig, out_dir, f"{stem}-compare-test-loss", formats)
    if c.ratios:
        fig = plots.ratio_figure(
            list(c.ratios.values()), title=f"{c.label()}: final test loss, paired by seed", window=c.window
        )
        paths += plots.save_figure(fig, out_dir, f"{stem}-compare-ratios", formats)
    return paths


# ----------------------------------------------------------------------------- diagnosis
def diagnosis_record(
    problem: str,
    params: dict,
    best: str | None,
    ratios: dict,
    reference: str,
    folder: Path | None = None,
    states: int = 8,
) -> dict:
    """The gradient-explosion measure of :func:`stablebptt.analysis.diagnose.diagnose_problem` on the
    problem (an untrained controller, ``states`` rollouts) and whether its recommended mode
    (R or C) is the comparison's best variant. Writes ``diagnosis.png/.json/.txt`` into ``folder``."""
    from . import diagnose

    d = diagnose.diagnose_problem(problem, n=states, **params)
    if folder is not None:
        d.save(folder, "diagnosis")
    assert d.verdict is not None  # diagnose() always sets it
    rec = d.verdict.mode
    return dict(
        recommended_mode=rec,
        recommended_clip=d.verdict.clip,
        span_R=float(d.span("R")),
        span_M=float(d.span("M")),
        growth_phys=float(d.growth("phys")),
        growth_closed=float(d.growth("closed")),
        horizon=int(d.horizon),
        cos_mg=float(d.cos_mg),
        picked=picked_text(rec, best, ratios, reference),
        picked_winner=rec == best,
    )


def picked_text(rec: str, best: str | None, ratios: dict, reference: str) -> str:
    """Whether the recommended mode ``rec`` won: ``"picked the winner"``, or the winner and
    how the recommended mode stands against the reference."""
    if best is None:
        return "no finished runs to judge it"
    if rec == best:
        return f"picked the winner ({best})"
    if rec != reference and rec not in ratios:
        return f"{rec} was not compared; the winner is {best}"
    pair = ratios.get(rec) or ratios.get(best)
    how = f" ({pair.reference}/{pair.variant}: {pair.verdict})" if pair is not None else ""
    return f"missed: the winner is {best}{how}"


def _recorded_diagnosis(folder: Path, c: Comparison) -> dict | None:
    """The diagnosis an earlier comparison of the same problem and parameters recorded in
    ``folder`` (its verdict on the winner redone for ``c``), or None."""
    f = Path(folder) / COMPARISON_FILE
    try:
        old = json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, ValueError):
        return None
    d = old.get("diagnosis")
    if not d or old.get("problem") != c.problem or old.get("params") != c.params:
        return None
    rec = d["recommended_mode"]
    return d | dict(picked=picked_text(rec, c.best, c.ratios, c.reference), picked_winner=rec == c.best)


# ----------------------------------------------------------------------------- entry point
def default_folder(problem: str, params: dict) -> Path:
    """``comparisons/<problem>[-key=value…]``: the default folder of a comparison."""
    return Path("comparisons") / (
        problems.file_stem(problem) + "".join(f"-{k}={_opt_text(v)}" for k, v in sorted(params.items()))
    )


def compare(
    problem: str,
    modes: str | Sequence[str] = DEFAULT_VARIANTS,
    seeds: int | Sequence[int] = 5,
    params: dict | None = None,
    root: str | Path | None = None,
    *,
    epochs: int | None = None,
    quick: bool = False,
    config: dict | None = None,
    reference: str = "R",
    window: int | None = None,
    workers: int | None = None,
    executor: str = "local",
    address: str | None = None,
    vmap_seeds: bool = False,
    vmap_configs: bool = False,
    cache_dir: str | None = None,
    checkpoint_seconds: float = 30.0,
    progress: Callable[[dict], None] | None = None,
    diagnose: bool = False,
    figures: bool = True,
    n_boot: int | None = None,
) -> Comparison:
    """Train every variant of ``modes`` on ``problem`` over ``seeds`` and compare them, paired by seed.

    Args:
      problem: a built-in or registered name, ``FILE.py:FUNCTION`` or ``module:FUNCTION``.
      modes: variants (:func:`parse_variant`): ``"R,M,C,S"`` or ``["R", "R:truncate=4", "C"]``.
      seeds: a number n (seeds 0 … n−1) or the seeds; a seed fixes data and initial weights.
      params: the problem's parameters.
      root: the folder of the run records and the results (default :func:`default_folder`).
      epochs: training epochs (default: the problem's, or the quick ones with ``quick``).
      quick: short training (:func:`quick_config`), under any ``config`` and ``epochs`` given.
      config: other :class:`~stablebptt.training.config.RunConfig` fields shared by all runs (lr, clip,
        n_train, batch_size, data, …), never per variant.
      reference: the variant every other one is paired against (default R).
      window: moving-average window of the final loss (default :func:`default_window`).
      executor: ``local`` | ``serial`` | ``ray``; it and ``workers``, ``address``, ``vmap_seeds``,
        ``vmap_configs``, ``cache_dir``, ``checkpoint_seconds``, ``progress``: as for
        :func:`stablebptt.experiments.sweep.run_sweep`.
      diagnose: also measure the problem's gradient explosion (:func:`diagnosis_record`).
      figures: write the figures.
      n_boot: bootstrap resamples (default :data:`stablebptt.analysis.stats.N_BOOT`).

    Returns:
      the :class:`Comparison`, also written as ``comparison.json`` / ``COMPARISON.md`` into ``root``.

    Raises ValueError (a :class:`stablebptt.experiments.sweep.SpecError` for the spec) naming a bad input
    before any training.
    """
    variants = parse_variants(modes)
    names = [v.name for v in variants]
    ref = parse_variant(reference).name
    if ref not in names:
        raise ValueError(
            f"reference {reference!r} is not one of the variants ({', '.join(names)}); add it to the modes"
        )
    params = dict(params or {})
    problems.param_spec(problem)
    cfg = (quick_config(problem, params) if quick else {}) | dict(config or {})
    if epochs is not None:
        cfg["epochs"] = int(epochs)
    spec = comparison_spec(problem, variants, seeds, params, cfg, name=None)
    jobs = sweep.expand(spec)
    n_epochs = jobs[0][0].epochs
    win = default_window(n_epochs) if window is None else int(window)
    if win < 1:
        raise ValueError(f"window={window!r}; must be an int ≥ 1")
    root = Path(root) if root is not None else default_folder(problem, params)
    problems.check_for_training(problems.get(problem, **params), jobs[0][0], jobs[0][1])
    report = sweep.run_sweep(
        spec,
        root,
        executor=executor,
        workers=workers,
        address=address,
        vmap_seeds=vmap_seeds,
        vmap_configs=vmap_configs,
        progress=progress,
        cache_dir=cache_dir,
        checkpoint_seconds=checkpoint_seconds,
    )
    shared = {
        k: v
        for k, v in jobs[0][0].to_dict().items()
        if k in cfg or k in ("epochs", "lr", "optimizer", "batch_size", "n_train", "n_test", "clip", "data")
    }
    c = analyse(
        root,
        problem=problem,
        params=params,
        variants=names,
        reference=ref,
        seeds=spec.seed_list(),
        epochs=n_epochs,
        window=win,
        config=shared,
        runs=run_ids(spec),
        n_boot=n_boot,
        report=report,
    )
    c.diagnosis = None if diagnose else _recorded_diagnosis(root, c)
    c.save(figures=figures)  # the results are kept even if the diagnosis fails
    if diagnose:
        c.diagnosis = diagnosis_record(problem, params, c.best, c.ratios, ref, folder=root)
        c.save(figures=False)
    return c


__all__ = [
    "Comparison",
    "Ratio",
    "Variant",
    "compare",
    "load",
    "collect",
    "analyse",
    "parse_variant",
    "parse_variants",
    "comparison_spec",
    "quick_config",
    "default_window",
    "pair_verdict",
    "ratio",
    "variant_table",
    "best_variant",
    "final_table",
    "from_finals",
    "draw",
    "default_folder",
    "VARIANT_OPTIONS",
    "DEFAULT_VARIANTS",
]
