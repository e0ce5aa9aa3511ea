"""Write docs/beyond-the-paper.md from comparison folders (``stablebptt compare`` output) only.

    python docs/make_beyond.py FOLDER [FOLDER …] [--out docs/beyond-the-paper.md]

Each FOLDER holds a ``comparison.json`` and the run records it names; the numbers are recomputed
from those records (:func:`stablebptt.analysis.comparison.load`), nothing is typed by hand. Folders of the
same problem form one *ladder*, its rungs in the order given (give them easy to hard). The page
has: a table of every rung (best variant, every paired ratio against the reference with its
interval and verdict, the gradient-explosion measure of ``stablebptt compare --diagnose`` where
it was taken), per ladder the table of final losses and the figures, and a summary generated from
the verdicts: on how many rungs each variant beats the reference, whether the reference/C ratio
grows along each ladder, and which variant won where the physics itself explodes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

#: physics growth (orders of magnitude of σ_max of the product of ∂P/∂x over the horizon) from
#: which a rung counts as one where the physics itself explodes
EXPLODING_ORDERS = 2.0


def rung_name(c) -> str:
    p = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in c.params.items())
    return p or "defaults"


def ratio_cell(c, variant: str, fmt_ratio) -> str:
    r = c.ratios.get(variant)
    if r is None:
        return "–"
    ci = f" [{fmt_ratio(r.lo)}, {fmt_ratio(r.hi)}]" if r.n > 1 else ""
    return f"{fmt_ratio(r.estimate)}{ci} *{r.verdict}*"


def diag_cell(c) -> str:
    d = c.diagnosis
    if not d:
        return "–"
    return (
        f"R {d['span_R']:.1f} / M {d['span_M']:.1f} orders; physics {d['growth_phys']:+.1f}; "
        f"→ {d['recommended_mode']} ({'won' if d.get('picked_winner') else 'did not win'})"
    )


def overview(comps, fmt_ratio) -> list[str]:
    refs = {c.reference for c in comps}
    others = list(dict.fromkeys(v for c in comps for v in c.variants if v != c.reference))
    ref = next(iter(refs)) if len(refs) == 1 else "ref"
    head = ["problem", "rung", "seeds", "epochs", "best"] + [f"{ref}/{v}" for v in others] + ["diagnose"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comps:
        cells = [
            c.label().split(" (")[0],
            rung_name(c),
            str(len(c.finals["seed"].unique())),
            str(c.epochs),
            f"**{c.best}**" if c.best else "–",
        ]
        cells += [ratio_cell(c, v, fmt_ratio) for v in others]
        rows.append("| " + " | ".join(cells + [diag_cell(c)]) + " |")
    return rows


def findings(comps, fmt_ratio) -> list[str]:
    """Sentences generated from the verdicts (no reading by hand)."""
    out = []
    others = list(dict.fromkeys(v for c in comps for v in c.variants if v != c.reference))
    for v in others:
        have = [c for c in comps if v in c.ratios]
        if not have:
            continue
        better = [c for c in have if c.ratios[v].verdict == f"{v} better"]
        worse = [c for c in have if c.ratios[v].verdict == f"{c.reference} better"]
        name = lambda cs: ", ".join(f"{c.label()}" for c in cs) or "none"
        out.append(
            f"- **{v}** against the reference: better on {len(better)} of {len(have)} rungs ({name(better)}), "
            f"worse on {len(worse)} ({name(worse)}), undecided on {len(have) - len(better) - len(worse)}."
        )
    ladders: dict[str, list] = {}
    for c in comps:
        ladders.setdefault(c.problem, []).append(c)
    for cs in ladders.values():
        if len(cs) < 2 or not all("C" in c.ratios for c in cs):
            continue
        est = [c.ratios["C"].estimate for c in cs]
        steps = np.diff(np.log(np.where(np.isfinite(est), est, np.nan)))
        trend = (
            "grows at every rung"
            if np.all(steps > 0)
            else "shrinks at every rung"
            if np.all(steps < 0)
            else "does not change monotonically"
        )
        path = " → ".join(f"{fmt_ratio(e)} ({rung_name(c)}, {c.ratios['C'].verdict})" for e, c in zip(est, cs))
        out.append(
            f"- {cs[0].label().split(' (')[0]}: {cs[0].reference}/C along the ladder {path}: C's advantage {trend}."
        )
    boom = [c for c in comps if c.diagnosis and c.diagnosis["growth_phys"] >= EXPLODING_ORDERS]
    if boom:
        out.append(
            f"- Where the physics itself explodes (∂P/∂x grows by ≥ {EXPLODING_ORDERS:g} orders over the "
            "horizon): " + "; ".join(f"{c.label()}: best {c.best}" for c in boom) + "."
        )
    elif any(c.diagnosis for c in comps):
        out.append(f"- No rung has physics that grows by ≥ {EXPLODING_ORDERS:g} orders over the horizon (diagnose).")
    return out


def page(comps, out_path: Path) -> str:
    from stablebptt.analysis.comparison import final_text, fmt_ratio

    windows = sorted({c.window for c in comps})
    lines = [
        "# Beyond the paper: does stopping the gradient help as the physics gets harder?",
        "",
        "Generated by `docs/make_beyond.py` from the run records of these comparisons (`stablebptt compare`), "
        "nothing typed by hand:",
        "",
    ]
    lines += [f"- `{os.path.relpath(c.folder, out_path.parent)}`: {c.label()}" for c in comps]
    lines += [
        "",
        "How to read the numbers: the final loss of a run is "
        + "; ".join(f"{final_text(w)} (window {w})" for w in windows)
        + ", ∞ if it diverged. Variants are paired by seed (a seed fixes the data and the initial weights): "
        "ref/X is the reference's final loss over X's (> 1: X ends lower), as a geometric mean over seeds with "
        "a percentile bootstrap 95 % interval; the verdict says on which side of 1 the interval lies "
        "(*undecided at n seeds* when it straddles 1). Every variant of a rung is trained with the same "
        "settings; nothing is tuned per mode. *diagnose*: orders of magnitude spanned by R's and M's adjoint "
        "norms over the horizon and the growth of the physics Jacobian (`stablebptt diagnose`, an untrained "
        "controller), its recommended mode and whether that mode won.",
        "",
        "## All rungs",
        "",
    ]
    lines += overview(comps, fmt_ratio)
    lines += ["", "## What the numbers say", ""] + (findings(comps, fmt_ratio) or ["- no paired ratios yet."])
    ladders: dict[str, list] = {}
    for c in comps:
        ladders.setdefault(c.problem, []).append(c)
    for cs in ladders.values():
        lines += ["", f"## {cs[0].label().split(' (')[0]}", ""]
        for c in cs:
            lines += [
                f"### {rung_name(c)}",
                "",
                c.table_markdown(),
                c.ratios_markdown(),
                c.answer().replace("answer:", "**Answer:**", 1),
                "",
            ]
            if c.diagnosis:
                lines += [c.diagnosis_summary(), ""]
            lines += [
                f"![{Path(f).stem}]({_copied(f, c, out_path)})"
                for f in c.figures
                if str(f).endswith(".png") and Path(f).is_file()
            ]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _copied(figure, comp, out_path: Path) -> str:
    """The figure copied beside the page, under ``img/beyond/`` (a documentation site serves
    only what is under its folder), as a link relative to the page."""
    dest = out_path.parent / "img" / "beyond" / f"{Path(comp.folder).name}-{Path(figure).name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(figure, dest)
    return os.path.relpath(dest, out_path.parent)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="comparison folders, each ladder's rungs easy to hard")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "beyond-the-paper.md")
    args = ap.parse_args(argv)
    from stablebptt.analysis import comparison

    try:
        comps = [comparison.load(f) for f in args.folders]
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page(comps, args.out.resolve()))
    print(f"wrote {args.out} from {len(comps)} comparison(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
