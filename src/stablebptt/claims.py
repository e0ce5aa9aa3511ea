"""The reproduction's acceptance claims (``experiments.md``), checked on finished sweeps.

Each check reads result folders only (through :func:`stablebptt.results.collect`) and
returns a :class:`Claim`: held / not held / not measured, with the numbers behind it.
"Final" values are the last point of the 30-epoch smoothed test-loss curve (the authors'
smoothing), averaged over seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import results
from .plots import smooth_curve


@dataclass
class Claim:
    name: str
    status: str  # "held" | "not held" | "not measured"
    evidence: str

    def row(self) -> str:
        return f"| {self.name} | **{self.status}** | {self.evidence} |"


def final_smoothed(df: pd.DataFrame, metric: str = "test_loss", window: int = 30) -> pd.DataFrame:
    """One row per run: the last value of its smoothed ``metric`` curve."""
    rows = []
    for rid, g in df.sort_values("epoch").groupby("run_id"):
        y = g[metric].to_numpy(float)
        if len(y) == 0 or not np.isfinite(y).all():
            continue
        first = g.iloc[0]
        rows.append(first.to_dict() | {"final": float(smooth_curve(y, window)[-1])})
    return pd.DataFrame(rows)


def _mean(last: pd.DataFrame, **where) -> float:
    sel = last
    for k, v in where.items():
        sel = sel[np.isclose(sel[k], v)] if isinstance(v, float) else sel[sel[k] == v]
    return float(sel["final"].mean()) if len(sel) else float("nan")


def cartpole_claims(root: str | Path) -> list[Claim]:
    df = results.collect(root)
    if df.empty:
        return [Claim("cart-pole claims", "not measured", f"no runs under {root}")]
    last = final_smoothed(df)
    out = []
    clips = sorted(last["clip"].unique())
    ratios = {c: _mean(last, param_poles=4, mode="R", clip=c) / _mean(last, param_poles=4, mode="C", clip=c) for c in clips}
    held = all(r >= 10 for r in ratios.values())
    measured = all(np.isfinite(r) for r in ratios.values())
    out.append(Claim("cart-pole 4 poles: C ≥ 10× lower than R in every clipping mode",
                     ("held" if held else "not held") if measured else "not measured",
                     ", ".join(f"{c}: R/C = {r:.3g}" for c, r in ratios.items())))
    r1 = {c: _mean(last, param_poles=1, mode="R", clip=c) for c in clips}
    out.append(Claim("cart-pole 1 pole: R also gets below 1e-2", "held" if min(r1.values()) < 1e-2 else "not held",
                     ", ".join(f"{c}: R = {v:.3g}" for c, v in r1.items())))
    s = last[last["mode"] == "S"]
    smin = float(s.groupby(["param_poles", "clip"])["final"].mean().min()) if len(s) else float("nan")
    out.append(Claim("cart-pole: S stays above 1.5", "held" if smin > 1.5 else "not held",
                     f"lowest mean S final loss over all levels and clips: {smin:.3g}"))
    return out


def quantum_claims(root: str | Path) -> list[Claim]:
    df = results.collect(root)
    if df.empty:
        return [Claim("quantum claims", "not measured", f"no runs under {root}")]
    last = final_smoothed(df)
    clips = sorted(last["clip"].unique())
    pairs = {c: (_mean(last, param_target=5, mode="C", clip=c), _mean(last, param_target=5, mode="R", clip=c)) for c in clips}
    held = all(cv < rv for cv, rv in pairs.values())
    tiny = all(abs(rv - cv) < 0.01 * abs(rv) for cv, rv in pairs.values())
    out = [Claim("quantum target 5: C below R in every clipping mode",
                 ("held (margin < 1 %)" if tiny else "held") if held else "not held",
                 ", ".join(f"{c}: C {cv:.4g} vs R {rv:.4g}" for c, (cv, rv) in pairs.items()))]

    def span(mode):
        d = df[(df["param_target"] == 5) & (df["mode"] == mode)]
        spans = []
        for _, g in d.groupby("run_id"):
            u = g["update_norm"].to_numpy(float)
            u = u[u > 0]
            if len(u):
                spans.append(np.log10(u.max() / u.min()))
        return float(np.mean(spans)) if spans else float("nan")

    sr, sc = span("R"), span("C")
    out.append(Claim("quantum target 5: R's update size spans more orders of magnitude than C's",
                     "held" if sr > sc else "not held", f"mean span over epochs: R {sr:.2f}, C {sc:.2f} decades"))
    return out


def guidance_claims(root: str | Path) -> list[Claim]:
    df = results.collect(root)
    if df.empty:
        return [Claim("guidance claims", "not measured", f"no runs under {root}")]
    last = final_smoothed(df)
    rcs = sorted(last["param_rc"].unique(), reverse=True)  # 1 … 0.001
    gaps = {rc: np.mean([_mean(last, param_rc=float(rc), mode="R", clip=c) - _mean(last, param_rc=float(rc), mode="C", clip=c)
                         for c in last["clip"].unique()]) for rc in rcs}
    vals = [gaps[rc] for rc in rcs]
    held = all(b >= a for a, b in zip(vals, vals[1:]))
    status = "held" if held else ("not held" if vals[-1] <= vals[0] else "partly (not monotone)")
    note = ""
    if all(v < 0 for v in vals):
        status = "not held" if held else status
        note = "; R is better than C at every rc (R − C < 0), so the gap in C's favour never opens"
    return [Claim("guidance: the gap R − C widens as rc goes from 1 to 0.001", status,
                  ", ".join(f"rc {rc:g}: {g:+.3g}" for rc, g in gaps.items()) + " (mean over clipping modes)" + note)]


def c_vs_m(roots: list[str | Path]) -> Claim:
    wins = total = 0
    for root in roots:
        df = results.collect(root)
        if df.empty or not {"C", "M"} <= set(df["mode"]):
            continue
        last = final_smoothed(df)
        lvl = [c for c in last.columns if c.startswith("param_") and last[c].nunique() > 1]
        for _, g in last.groupby(["problem", "clip"] + lvl):
            c, m = g[g["mode"] == "C"]["final"].mean(), g[g["mode"] == "M"]["final"].mean()
            if np.isfinite(c) and np.isfinite(m):
                total += 1
                wins += c <= m
    if not total:
        return Claim("C ≤ M in most settings", "not measured", "no sweep with both C and M")
    return Claim("C ≤ M in most settings", "held" if wins > total / 2 else "not held",
                 f"C ≤ M in {wins} of {total} (problem, level, clipping) settings")
