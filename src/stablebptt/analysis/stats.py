r"""Seed-paired statistics of run records: final losses, paired modes, bootstrap intervals,
tests against thresholds with verdicts, and their Markdown tables.

Every function reads a results table (:func:`stablebptt.analysis.results.collect`); nothing here runs
training. The vocabulary:

* **final loss** of a run: the last point of its 30-epoch trailing moving average of the
  test loss (:func:`smooth_curve`, left-padded with the first value), at the
  run's last epoch or at a given epoch ``e`` (then the average of the epochs up to ``e``, the
  last point of the authors' plot had they stopped at ``e``). A run that diverged at or
  before that epoch has final loss ``+inf``: it did not solve the task, and its last finite
  loss would flatter it.
* **paired**: a seed fixes the data and the initial weights, the same for every mode, so two
  modes are compared seed by seed (same level, same clipping): ``r_s = L_R,s / L_C,s``.
* **geometric mean**: losses span decades, so ratios and losses are averaged in log space,
  ``gm = 10 ** mean_s(log10 r_s)``; differences of losses or of decades (already logarithmic)
  are averaged arithmetically.
* **bootstrap interval** (:func:`bootstrap_mean`): the n seeds are resampled with replacement
  ``n_boot`` times (seeded, so reproducible); the interval is the 2.5th and 97.5th percentile
  of the resampled means, taken as order statistics (no interpolation, so ``±inf`` from
  diverged runs stays ordered). With n = 5 seeds the percentile bootstrap is a rough
  interval that covers less than 95 %, so an interval that barely clears a threshold is
  weaker evidence than it looks.
* **verdict** (:attr:`Test.verdict`), from the interval alone: *held* when both ends lie on
  the claim's side of the threshold, *not held* when both lie on the other side, otherwise
  *undecided at n seeds*. One seed gives a point, not an interval, and is always undecided.

A :class:`Claim` keeps a quantitative statement beside the qualitative one it stands for, the
tests that decide it, and tests shown for context only. The paper's claims are built from these
in the repository's ``experiments/paper/claims.py``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

#: problem -> the results column that holds its complexity level
LEVEL_PARAMS = {"cartpole": "param_poles", "guidance": "param_rc", "quantum": "param_target"}
WINDOW = 30
N_BOOT = 10_000
CONFIDENCE = 0.95
HELD, NOT_HELD, NOT_MEASURED = "held", "not held", "not measured"
#: the relation a test's statistic must satisfy against its threshold
SIDES: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
#: per-epoch columns of a results table (everything else is constant within a run)
EPOCH_COLUMNS = ("epoch", "loss", "train_loss", "test_loss", "update_norm", "cos_mg", "sign_agree", "wall_s")
#: how a side is printed
SIDE_TEXT = {">": ">", ">=": "≥", "<": "<", "<=": "≤"}


def smooth_curve(y: ArrayLike, window: int = 30) -> np.ndarray:
    """Trailing moving average over ``window`` points, left-padded with the first value.

    ``out[i] = mean(y[i-window+1 .. i])`` where indices below 0 read ``y[0]`` (the authors'
    smoothing): ``smooth_curve([1, 2, 3, 4], 3) == [1, 4/3, 2, 3]``. Same length as ``y``.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"smooth_curve expects a 1-d array, got shape {y.shape}")
    if int(window) < 1:
        raise ValueError(f"window={window!r}; must be an int ≥ 1")
    if y.size == 0 or window == 1:
        return y.copy()
    w = int(window)
    padded = np.concatenate([np.full(w - 1, y[0]), y])
    c = np.concatenate([[0.0], np.cumsum(padded)])
    return (c[w:] - c[:-w]) / w


def undecided(n: int | list[int] | tuple[int, ...] | set[int]) -> str:
    """ "undecided at n seeds" (a range "at 1–5 seeds" for tests with different numbers of seeds)."""
    ns = sorted({int(k) for k in (n if isinstance(n, (list, tuple, set)) else [n])})
    at = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    return f"undecided at {at} seed{'' if ns == [1] else 's'}"


# ----------------------------------------------------------------------------- per-run values
def final_value(
    epochs: np.ndarray,
    values: np.ndarray,
    *,
    diverged_at: float | None = None,
    epoch: int | None = None,
    window: int = WINDOW,
) -> float:
    """The smoothed value at ``epoch`` (default: the last recorded epoch) of one run's curve.

    ``epochs``, ``values``: (E,) arrays sorted by epoch; non-finite values (epochs without an
    evaluation) are skipped. Returns ``+inf`` if the run diverged (``diverged_at``, an
    epoch number) at or before ``epoch``, NaN if the run stopped before ``epoch`` without
    diverging or has no finite value (not measured).
    """
    epochs, values = np.asarray(epochs), np.asarray(values, np.float64)
    cut = np.inf if epoch is None else epoch
    if diverged_at is not None and diverged_at <= cut:
        return float("inf")
    keep = (epochs <= cut) & np.isfinite(values)
    if not keep.any() or (epoch is not None and epochs.max() < epoch):
        return float("nan")
    return float(smooth_curve(values[keep], window)[-1])


def _diverged_at(run: pd.Series) -> float | None:
    if str(run.get("status")) != "diverged":
        return None
    d = run.get("diverged_epoch")
    return float(d) if d is not None and np.isfinite(d) else float(run.get("epochs_done", 0)) + 1


def _per_run(df: pd.DataFrame, value: Callable[[pd.DataFrame, pd.Series], float], column: str) -> pd.DataFrame:
    """One row per run: the run's constant columns and ``column`` = ``value(curve, head)``."""
    if df.empty:
        return pd.DataFrame()
    rows = []
    for _, g in df.sort_values("epoch").groupby("run_id", sort=True):
        head = g.iloc[0].drop([c for c in EPOCH_COLUMNS if c in g.columns])
        rows.append(head.to_dict() | {column: value(g, head)})
    return pd.DataFrame(rows)


def final_losses(
    df: pd.DataFrame, *, epoch: int | None = None, metric: str = "test_loss", window: int = WINDOW
) -> pd.DataFrame:
    """One row per run with its constant columns and ``final`` (see the module docstring)."""
    return _per_run(
        df,
        lambda g, h: final_value(
            g["epoch"].to_numpy(), g[metric].to_numpy(float), diverged_at=_diverged_at(h), epoch=epoch, window=window
        ),
        "final",
    )


def update_span(update_norm: np.ndarray) -> float:
    """Orders of magnitude spanned by a run's per-epoch update size: log10(max u / min u).

    Only finite u > 0 count (an exactly zero update has no logarithm). NaN if none.
    """
    u = np.asarray(update_norm, np.float64)
    u = u[np.isfinite(u) & (u > 0)]
    return float(np.log10(u.max() / u.min())) if u.size else float("nan")


def update_spans(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run with its constant columns and ``span`` (decades, :func:`update_span`)."""
    if "update_norm" not in df.columns:
        return pd.DataFrame()
    return _per_run(df, lambda g, h: update_span(g["update_norm"].to_numpy(float)), "span")


def paired(runs: pd.DataFrame, a: str, b: str, keys: Sequence[str], column: str = "final") -> pd.DataFrame:
    """Modes ``a`` and ``b`` side by side, one row per (keys…, seed) that has both.

    ``runs``: one row per run (:func:`final_losses` or :func:`update_spans`). Returns the
    columns ``keys + ["seed", a, b]`` holding ``column`` of each mode; rows where either mode
    is missing or NaN (not measured) are dropped; ``±inf`` (diverged) is kept. Two runs of
    one mode at the same (keys…, seed) are an error: they differ in some setting not in ``keys``.
    """
    cols = list(keys) + ["seed", a, b]
    if runs.empty or not {a, b} <= set(runs["mode"]):
        return pd.DataFrame(columns=cols)
    sub = runs[runs["mode"].isin([a, b])]
    dup = sub.duplicated(list(keys) + ["seed", "mode"], keep=False)
    if dup.any():
        raise ValueError(
            f"several runs per (mode, {', '.join(list(keys) + ['seed'])}): "
            f"{sorted(sub.loc[dup, 'run_id'])}; select one setting before pairing"
        )
    wide = sub.pivot_table(
        index=list(keys) + ["seed"], columns="mode", values=column, aggfunc="first", dropna=False
    ).reset_index()
    wide.columns.name = None
    return wide[cols].dropna(subset=[a, b]).reset_index(drop=True)


# ----------------------------------------------------------------------------- statistics
def bootstrap_mean(
    x: ArrayLike, *, n_boot: int = N_BOOT, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(mean, lo, hi) of the 1-d sample ``x``: its mean and a percentile bootstrap interval.

    Resamples the n entries with replacement ``n_boot`` times (``numpy.random.default_rng(seed)``);
    ``lo``/``hi`` are the order statistics just below/above the (1 ∓ confidence)/2 quantiles of
    the resampled means. Identical entries give ``lo == mean == hi``. Infinite entries
    propagate (a mean over +inf and -inf is NaN).
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_mean needs a non-empty 1-d sample, got shape {x.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}; must lie in (0, 1)")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot={n_boot!r}; must be ≥ 1")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(int(n_boot), x.size))
    with np.errstate(invalid="ignore"):
        means = x[idx].mean(axis=1)
        mean = float(x.mean())
    tail = (1 - confidence) / 2
    return mean, float(np.quantile(means, tail, method="lower")), float(np.quantile(means, 1 - tail, method="higher"))


@dataclass(frozen=True)
class Test:
    """One paired test in one setting: a per-seed quantity against a threshold.

    ``per_seed[i]`` is the quantity for ``seeds[i]`` (e.g. the ratio R/C of final losses);
    ``detail[i]`` says what it was computed from. ``estimate`` is its mean over seeds
    (geometric when ``geometric``), ``lo``/``hi`` the bootstrap interval of that mean. The
    claim is ``quantity <side> threshold``.
    """

    setting: str
    quantity: str
    side: str
    threshold: float
    seeds: tuple[int, ...]
    per_seed: tuple[float, ...]
    detail: tuple[str, ...]
    geometric: bool
    estimate: float
    lo: float
    hi: float

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def fraction(self) -> float:
        """Share of seeds whose own quantity is on the claim's side."""
        ok = SIDES[self.side]
        return float(np.mean([ok(v, self.threshold) for v in self.per_seed])) if self.per_seed else float("nan")

    @property
    def verdict(self) -> str:
        ok = SIDES[self.side]
        if self.n < 2 or np.isnan(self.lo) or np.isnan(self.hi):
            return undecided(self.n)
        at_lo, at_hi = ok(self.lo, self.threshold), ok(self.hi, self.threshold)
        if at_lo and at_hi:
            return HELD
        if not at_lo and not at_hi:
            return NOT_HELD
        return undecided(self.n)


def make_test(
    setting: str,
    quantity: str,
    side: str,
    threshold: float,
    seeds: Sequence[int],
    per_seed: Sequence[float],
    detail: Sequence[str] | None = None,
    *,
    geometric: bool,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Test:
    """A :class:`Test` with its bootstrap interval (geometric: computed on log10 of ``per_seed``)."""
    if side not in SIDES:
        raise ValueError(f"side={side!r}; allowed: {', '.join(SIDES)}")
    v = np.asarray(per_seed, np.float64)
    if len(seeds) != v.size or v.size == 0:
        raise ValueError(f"{setting}: {len(seeds)} seeds but {v.size} values; need the same non-zero number")
    if geometric and np.any(v < 0):
        raise ValueError(f"{setting}: a geometric mean needs values ≥ 0, got {v.min():g}")
    with np.errstate(divide="ignore"):
        est, lo, hi = bootstrap_mean(np.log10(v) if geometric else v, n_boot=n_boot, seed=seed)
    if geometric:
        est, lo, hi = 10.0**est, 10.0**lo, 10.0**hi
    detail = tuple(detail) if detail is not None else tuple("" for _ in seeds)
    return Test(
        setting,
        quantity,
        side,
        float(threshold),
        tuple(int(s) for s in seeds),
        tuple(float(x) for x in v),
        detail,
        geometric,
        float(est),
        float(lo),
        float(hi),
    )


@dataclass(frozen=True)
class Claim:
    """One acceptance claim: the quantitative statement, the qualitative one it stands for, and
    its tests.

    ``rule`` turns the deciding ``tests`` into the claim's verdict: ``"all"`` (every test
    held → held; any not held → not held; else undecided) or ``"majority"`` (held in more
    than half → held; held plus undecided at most half → not held; else undecided).
    ``context`` tests are reported but do not decide. No tests → not measured (``note`` says why).
    """

    key: str
    statement: str
    qualitative: str
    tests: tuple[Test, ...] = ()
    rule: str = "all"
    context: tuple[Test, ...] = ()
    note: str = ""
    exact: str | None = None  # the verdict of a deterministic check (no seeds); overrides the tests

    @property
    def verdict(self) -> str:
        if self.exact is not None:
            return self.exact
        if not self.tests:
            return NOT_MEASURED
        v = [t.verdict for t in self.tests]
        held, not_held = v.count(HELD), v.count(NOT_HELD)
        open_n = [t.n for t in self.tests if t.verdict not in (HELD, NOT_HELD)]
        if self.rule == "all":
            if not_held:
                return NOT_HELD
            return HELD if held == len(v) else undecided(open_n)
        if self.rule == "majority":
            if held > len(v) / 2:
                return HELD
            if held + len(open_n) <= len(v) / 2:
                return NOT_HELD
            return undecided(open_n)
        raise ValueError(f"rule={self.rule!r}; allowed: all, majority")

    def counts(self) -> str:
        v = [t.verdict for t in self.tests]
        return (
            f"{v.count(HELD)} held, {v.count(NOT_HELD)} not held, "
            f"{len(v) - v.count(HELD) - v.count(NOT_HELD)} undecided of {len(v)}"
        )


# ----------------------------------------------------------------------------- building blocks
def _num(x: float) -> str:
    if np.isnan(x):
        return "–"
    if np.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.3g}"


def level_name(problem: str, level) -> str:
    """A level as text: "4 poles", "rc 0.001", "target 5" (or the value itself)."""
    if problem == "cartpole":
        return f"{int(level)} pole{'s' if int(level) != 1 else ''}"
    if problem == "guidance":
        return f"rc {float(level):g}"
    if problem == "quantum":
        return f"target {int(level)}"
    return str(level)


def clips_of(runs: pd.DataFrame) -> list[str]:
    """The clipping modes present in ``runs``: none, value, norm first, then any other, sorted."""
    order = ["none", "value", "norm"]
    have = set(runs["clip"])
    return [c for c in order if c in have] + sorted(have - set(order))


def ratio_tests(
    runs: pd.DataFrame, level_col: str, level, num: str, den: str, side: str, threshold: float, problem: str, **boot
) -> list[Test]:
    """Per clipping mode at one level: the paired ratio num/den of final losses (geometric)."""
    at = runs[runs[level_col] == level] if level_col in runs.columns else runs.iloc[0:0]
    out = []
    for clip in clips_of(at) if not at.empty else []:
        p = paired(at[at["clip"] == clip], num, den, [])
        if p.empty:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            r = p[num].to_numpy(float) / p[den].to_numpy(float)
        out.append(
            make_test(
                f"{level_name(problem, level)}, clip {clip}",
                f"{num}/{den}",
                side,
                threshold,
                p["seed"],
                r,
                [f"{_num(x)}/{_num(y)}" for x, y in zip(p[num], p[den])],
                geometric=True,
                **boot,
            )
        )
    return out


def level_tests(
    runs: pd.DataFrame, level_col: str, levels, mode: str, side: str, threshold: float, problem: str, **boot
) -> list[Test]:
    """Per (level, clipping): one mode's final loss against a threshold (geometric mean over seeds)."""
    out = []
    for level in levels:
        at = runs[(runs[level_col] == level) & (runs["mode"] == mode)]
        for clip in clips_of(at) if not at.empty else []:
            g = at[(at["clip"] == clip) & at["final"].notna()].sort_values("seed")
            if g.empty:
                continue
            out.append(
                make_test(
                    f"{level_name(problem, level)}, clip {clip}",
                    mode,
                    side,
                    threshold,
                    g["seed"],
                    g["final"],
                    None,
                    geometric=True,
                    **boot,
                )
            )
    return out


def levels_of(runs: pd.DataFrame, level_col: str) -> list:
    """The sorted distinct values of ``level_col`` in ``runs`` (none if the column is absent)."""
    return sorted(runs[level_col].dropna().unique()) if level_col in runs.columns else []


# ----------------------------------------------------------------------------- Markdown
def claims_summary(claims: Sequence[Claim]) -> str:
    """Markdown table: one row per claim (statement, what it stands for, verdict, test counts)."""
    rows = [
        "| claim (our provisional reading) | stands for (the paper's words) | verdict | tests |",
        "|---|---|---|---|",
    ]
    for c in claims:
        rows.append(
            f"| {c.statement} | {c.qualitative} | **{c.verdict}** | "
            f"{c.counts() if c.tests and c.exact is None else c.note} |"
        )
    return "\n".join(rows) + "\n"


def tests_table(tests: Sequence[Test]) -> str:
    """Markdown table of tests: per-seed values, mean [95 % interval], seeds on the claim's side, verdict."""
    rows = [
        "| setting | quantity | per seed | mean [95 % CI] | seeds on the claim's side | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for t in tests:
        seeds = "<br>".join(
            f"s{s}: {_num(v)}" + (f" ({d})" if d else "") for s, v, d in zip(t.seeds, t.per_seed, t.detail)
        )
        kind = "gm " if t.geometric else ""
        ci = f"[{_num(t.lo)}, {_num(t.hi)}]" if t.n > 1 else "(one seed: no interval)"
        rows.append(
            f"| {t.setting} | {t.quantity} {SIDE_TEXT[t.side]} {t.threshold:g} | {seeds} | "
            f"{kind}{_num(t.estimate)} {ci} | "
            f"{round(t.fraction * t.n)}/{t.n} | **{t.verdict}** |"
        )
    return "\n".join(rows) + "\n"


def claim_details(claim: Claim) -> str:
    """Markdown: a claim's statements, verdict and its test tables (deciding, then context)."""
    out = [
        f"**{claim.statement}** — stands for: *{claim.qualitative}*. Verdict: **{claim.verdict}**"
        + (f" ({claim.counts()}; rule: {claim.rule})." if claim.tests and claim.exact is None else f" ({claim.note})."),
        "",
    ]
    if claim.tests:
        out += [tests_table(claim.tests)]
    if claim.context:
        out += ["Context (not deciding):", "", tests_table(claim.context)]
    return "\n".join(out)


def final_loss_table(runs: pd.DataFrame, level_col: str, problem: str) -> str:
    """Markdown: final loss per (level, clipping) and mode, geometric mean ×/÷ geometric std (n seeds).

    ``runs`` from :func:`final_losses`. The geometric mean and std (exp of the mean and of the
    sample std of ln L) are over the runs that did not diverge; diverged runs are counted in
    the cell ("1 div.").
    """
    modes = sorted(runs["mode"].unique(), key=lambda m: ("RMCSN".find(m) if m in "RMCSN" else 9, m))
    rows = ["| level | clip | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
    for level in levels_of(runs, level_col)[:: -1 if problem == "guidance" else 1]:
        for clip in clips_of(runs[runs[level_col] == level]):
            cells = []
            for m in modes:
                v = runs[(runs[level_col] == level) & (runs["clip"] == clip) & (runs["mode"] == m)]["final"]
                v = v.dropna().to_numpy(float)
                cells.append(_cell(v))
            rows.append(f"| {level_name(problem, level)} | {clip} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _cell(v: np.ndarray) -> str:
    if v.size == 0:
        return "–"
    fin = v[np.isfinite(v)]
    div = v.size - fin.size
    if fin.size == 0:
        return f"diverged ({div}/{v.size})"
    gm = float(np.exp(np.mean(np.log(fin))))
    txt = f"{gm:.3g}" + (f" ×/÷ {float(np.exp(np.std(np.log(fin), ddof=1))):.2g}" if fin.size > 1 else "")
    return txt + f" (n={v.size}{f', {div} div.' if div else ''})"


__all__ = [
    "Claim",
    "Test",
    "smooth_curve",
    "final_value",
    "final_losses",
    "update_span",
    "update_spans",
    "paired",
    "bootstrap_mean",
    "make_test",
    "ratio_tests",
    "level_tests",
    "clips_of",
    "levels_of",
    "claims_summary",
    "tests_table",
    "claim_details",
    "final_loss_table",
    "level_name",
    "HELD",
    "NOT_HELD",
    "NOT_MEASURED",
    "undecided",
]
