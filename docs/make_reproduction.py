"""Write docs/reproduction.md from the committed full-scale records (figures into docs/img/reproduction/).

    python docs/make_reproduction.py                      # results/paper/<figure>/ only
    python docs/make_reproduction.py --sweeps sweeps      # plus local quick sweeps, if present

Every number and figure of the page is computed from the run records under ``--records``
(``results/paper/<figure>/<run>/``: config.json, result.json, manifest.json, metrics.csv.gz)
through the paper's claims (``experiments/paper/claims.py``, on :mod:`stablebptt.analysis.stats`) and
:mod:`stablebptt.analysis.plots`, except the two toy figures (``experiments/paper/figures.py``),
which are recomputed (deterministic, half a minute). ``docs/reproduction_notes.md`` (the
interpretation, written by hand) is appended; its first line records the record counts it
was written for, and the page warns when the records have changed since.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

from stablebptt.analysis import plots, results, stats

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT / "experiments" / "paper"))  # the paper's claims and figures (not installed)

import claims  # noqa: E402
import figures  # noqa: E402

IMG = DOCS / "img" / "reproduction"
NOTES = DOCS / "reproduction_notes.md"

#: what experiments.md asks for, per figure
FIGURES = {
    "cartpole": {"title": "Cart-pole swing-up, 1–4 poles", "levels": [1, 2, 3, 4], "epochs": 1000},
    "guidance": {"title": "Guidance by repulsion, rc = 1 … 0.001", "levels": [1.0, 0.1, 0.01, 0.001], "epochs": 100},
    "quantum": {"title": "Quantum control, target eigenstates 3, 4, 5", "levels": [3, 4, 5], "epochs": 1000},
}
MODES, CLIPS, SEEDS = "RMCS", ("none", "value", "norm"), 5


# ----------------------------------------------------------------------------- records
def manifests(root: Path) -> pd.DataFrame:
    """One row per run folder: level, config, and where/how it ran (from manifest.json)."""
    col = plots.LEVEL_PARAMS
    rows = []
    for folder in results.run_folders(root):
        cfg = json.loads((folder / "config.json").read_text())
        res = json.loads((folder / "result.json").read_text())
        man = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").is_file() else {}
        c = cfg["config"]
        kind = man.get("device", {}).get("kind", "not recorded")
        rows.append(
            {
                "level": c["problem_params"].get(col[c["problem"]].removeprefix("param_")),
                "mode": c["mode"],
                "clip": c["clip"],
                "seed": cfg["seed"],
                "epochs": res["epochs_done"],
                "status": res["status"],
                "device": "CPU" if kind == "cpu" else kind,
                "commit": str(man.get("commit", "not recorded"))[:7],
                "jax": man.get("versions", {}).get("jax", "?"),
                "date": str(man.get("date", "?"))[:10],
                "lanes": "vmapped lanes" if man.get("vmapped_lanes") else "one run per process",
            }
        )
    return pd.DataFrame(rows)


def provenance_table(m: pd.DataFrame, figure: str) -> str:
    """Markdown: per level, how many of the 48/36 configurations × seeds ran, where and how."""
    spec = FIGURES[figure]
    rows = [
        "| level | runs (of 12 configs × 5 seeds) | seeds | epochs | hardware | commit | jax | date | batching |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in spec["levels"]:
        at = m[m["level"].astype(float) == float(level)] if len(m) else m
        name = stats.level_name(figure, level)
        if at.empty:
            rows.append(f"| {name} | 0 | – | – | not measured | | | | |")
            continue
        for (dev, commit, jax, date, lanes), g in at.groupby(["device", "commit", "jax", "date", "lanes"]):
            seeds = sorted(g["seed"].unique())
            div = int((g["status"] == "diverged").sum())
            ep = f"{g['epochs'].min()}–{g['epochs'].max()}" if g["epochs"].nunique() > 1 else f"{g['epochs'].iloc[0]}"
            rows.append(
                f"| {name} | {len(g)}{f' ({div} diverged)' if div else ''} | {', '.join(map(str, seeds))} | "
                f"{ep} | {dev} | `{commit}` | {jax} | {date} | {lanes} |"
            )
    return "\n".join(rows) + "\n"


def record_counts(records: Path) -> dict[str, int]:
    return {f: len(results.run_folders(records / f)) if (records / f).is_dir() else 0 for f in FIGURES}


# ----------------------------------------------------------------------------- sections
def figure_images(df: pd.DataFrame, figure: str, prefix: str = "paper") -> list[str]:
    """Draw the figure and its paired picture into IMG; Markdown image lines."""
    IMG.mkdir(parents=True, exist_ok=True)
    out = []
    fig = plots.problem_figure(df, figure)
    name = f"{prefix}-{figure}-test-loss"
    plots.save_figure(fig, IMG, name, ["png"])
    out += [f"![{figure}: test loss]({IMG.relative_to(DOCS)}/{name}.png)", ""]
    try:
        fig = plots.paired_figure(df, figure)
    except ValueError as e:
        out += [f"_Paired picture: not drawn ({e})._", ""]
    else:
        name = f"{prefix}-{figure}-paired-R-C"
        plots.save_figure(fig, IMG, name, ["png"])
        out += [f"![{figure}: C against R per seed]({IMG.relative_to(DOCS)}/{name}.png)", ""]
    return out


def figure_section(records: Path, figure: str, figure_claims: list[stats.Claim]) -> list[str]:
    spec = FIGURES[figure]
    root = records / figure
    out = [f"## {spec['title']}", ""]
    if not root.is_dir() or not results.run_folders(root):
        return out + [f"_Not measured: no records under `{root.relative_to(ROOT)}`._", ""]
    df = results.collect(root)
    m = manifests(root)
    out += [
        f"Records: `{root.relative_to(ROOT)}/`, {len(m)} run{'s' if len(m) != 1 else ''} (the full plan: "
        f"{len(spec['levels'])} levels × 4 modes × 3 clippings = {len(spec['levels']) * 12} configurations, "
        f"× {SEEDS} seeds, {spec['epochs']} epochs each).",
        "",
        provenance_table(m, figure),
    ]
    out += figure_images(df, figure)
    runs = stats.final_losses(df)
    col = plots.LEVEL_PARAMS[figure]
    out += [
        "Final test loss (last point of the 30-epoch moving average): geometric mean ×/÷ geometric std "
        "over seeds (n = seeds).",
        "",
        stats.final_loss_table(runs, col, figure),
    ]
    if figure == "guidance":
        at10 = stats.final_losses(df, epoch=10)
        out += [
            "At epoch 10 (where the authors' script stopped; the 30-epoch average there still weights "
            "epoch 1 by 21/30):",
            "",
            stats.final_loss_table(at10, col, figure),
            "Raw test loss at epoch 10:",
            "",
            stats.final_loss_table(stats.final_losses(df, epoch=10, window=1), col, figure),
        ]
    out += ["### Claims", ""]
    for c in figure_claims:
        out += [stats.claim_details(c)]
    return out


def toy_section() -> tuple[list[str], stats.Claim]:
    """Fig. 1 and Fig. 2 recomputed (deterministic), and claim 1."""
    r1 = figures.fig1_fields(IMG, formats=["png"])
    r2 = figures.fig2_rotation(IMG, formats=["png"])
    c = claims.fig2_claim(r2["losses"])
    lines = [
        "## Toy figures (recomputed, no records needed)",
        "",
        f"Fig. 1: spread (95th/5th percentile over L < 10) of ‖G‖ = {r1['spread_G']:.4g}, of ‖M‖ = "
        f"{r1['spread_M']:.4g} (method.md: ≈ 1.8e3 and ≈ 68).",
        "",
        f"![Fig. 1]({IMG.relative_to(DOCS)}/fig1-fields.png)",
        "",
        f"![Fig. 2]({IMG.relative_to(DOCS)}/fig2-rotation.png)",
        "",
        stats.claim_details(c),
    ]
    return lines, c


def smoke_section(sweeps: Path | None) -> list[str]:
    out = [
        "## Running it yourself",
        "",
        "The paper's claims, sweep specs and figure scripts are in the repository's `experiments/paper/` "
        "(not part of the installed package; see its `README.md`). One figure end to end — its sweep "
        "(resumable: finished runs are never recomputed), then its figures and a `SUMMARY.md` table in "
        "the sweep folder:",
        "",
        "```bash",
        "python experiments/paper/reproduce.py cartpole --quick   # cartpole | guidance | quantum | toys; "
        "without --quick the full sweep",
        "```",
        "",
        "### Smoke checks: the quick sweeps",
        "",
        "Short runs of the whole pipeline (sweep → figures → tables) on a laptop-sized budget; not "
        "evidence for the paper's long-horizon claims. Commands:",
        "",
        "```bash",
    ]
    out += [
        f"python experiments/paper/reproduce.py {k} --quick --seeds 3 --vmap-seeds --out sweeps/{k}-quick"
        for k in ("toys", "cartpole", "guidance", "quantum")
    ]
    out += ["python docs/make_reproduction.py --sweeps sweeps", "```", ""]
    found = [sweeps / f"{k}-quick" for k in ("toys", "cartpole", "guidance", "quantum")] if sweeps else []
    found = [r for r in found if r.is_dir() and results.run_folders(r)]
    if not found:
        return out + [
            "Their records are not committed (`sweeps/` is local), so this page shows none of their figures.",
            "",
        ]
    for r in found:
        df = results.collect(r)
        n = df.groupby("run_id")["seed"].first().nunique()
        out += [f"#### `{r.name}`: {df['run_id'].nunique()} runs, {n} seeds, {int(df['epochs'].max())} epochs", ""]
        for problem in sorted(df["problem"].unique()):
            out += figure_images(df, problem, prefix=r.name)
    return out


def notes_section(records: Path) -> list[str]:
    if not NOTES.is_file():
        return []
    text = NOTES.read_text()
    now = record_counts(records)
    m = re.match(r"<!--\s*records:(.*?)-->", text)
    written = dict(re.findall(r"(\w+)=(\d+)", m.group(1))) if m else {}
    stale = {k: (int(written.get(k, -1)), v) for k, v in now.items() if int(written.get(k, -1)) != v}
    out = ["## Reading the results (notes written by hand)", ""]
    if stale:
        out += [
            "> **These notes were written for a different set of records** ("
            + ", ".join(f"{k}: {a if a >= 0 else '?'} then, {b} now" for k, (a, b) in stale.items())
            + "); the tables and verdicts above are current, the notes may not be.",
            "",
        ]
    return out + [text[m.end() :].strip() if m else text.strip(), ""]


# ----------------------------------------------------------------------------- page
INTRO = """# Reproducing the paper's figures

Generated by `docs/make_reproduction.py` from the run records committed under `results/paper/`
(nothing here is typed by hand except the notes at the end). Regenerate with

```bash
python docs/make_reproduction.py
```

How to read the numbers:

* **final loss** of a run: the last point of its 30-epoch trailing moving average of the test
  loss (left-padded with the first value, as the authors smooth). A diverged run counts as ∞.
* **paired by seed**: a seed fixes the data and the initial weights, the same for every mode,
  so modes are compared seed by seed: e.g. R/C = R's final loss / C's, per seed.
* **gm**: geometric mean over seeds (losses span decades); **95 % CI**: percentile bootstrap
  over seeds (10 000 resamples, seeded; with 5 seeds it is a rough interval that tends to be
  too narrow, so treat an interval that barely clears a threshold with care).
* **verdict** from the interval: *held* (all of it on the claim's side of the threshold),
  *not held* (all of it on the other side), *undecided at n seeds* (it straddles the
  threshold; one seed gives no interval and is always undecided). *Not measured*: no records.
* Every threshold (10×, 1e-2, 1.5, …) is our provisional reading of the authors' plots
  (`experiments.md`), not a number printed in the paper; each claim is shown beside the
  qualitative statement it stands for, so a reader can see which part failed.
* Figures: one panel column per complexity level, one row per clipping mode; line =
  geometric mean over seeds, band = ×/÷ one geometric std; each mode has its own marker.
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", default=str(ROOT / "results" / "paper"), help="folder with one sub-folder per figure")
    ap.add_argument("--sweeps", default=None, help="folder with local quick sweeps (<name>-quick)")
    ap.add_argument("--no-toys", action="store_true", help="skip recomputing the toy figures")
    args = ap.parse_args(argv)
    records = Path(args.records).resolve()
    tables = {f: results.collect(records / f) if (records / f).is_dir() else pd.DataFrame() for f in FIGURES}

    per_figure = {
        "cartpole": claims.cartpole_claims(tables["cartpole"]),
        "quantum": claims.quantum_claims(tables["quantum"]),
        "guidance": [
            claims.guidance_claim(tables["guidance"]),
            claims.guidance_claim(tables["guidance"], epoch=10),
            claims.guidance_claim(tables["guidance"], epoch=10, window=1),
        ],
    }
    c_m = claims.c_vs_m({f: t for f, t in tables.items() if not t.empty})
    toy_lines, toy_claim = ([], None) if args.no_toys else toy_section()
    everything = (
        ([toy_claim] if toy_claim else [])
        + per_figure["cartpole"]
        + per_figure["quantum"]
        + per_figure["guidance"]
        + [c_m]
    )

    out = [INTRO, "## Verdicts at a glance", "", stats.claims_summary(everything)]
    for figure in ("cartpole", "guidance", "quantum"):
        out += figure_section(records, figure, per_figure[figure])
    out += ["## C ≤ M across all figures", "", stats.claim_details(c_m)]
    out += toy_lines
    out += notes_section(records)
    out += smoke_section(Path(args.sweeps) if args.sweeps else None)
    (DOCS / "reproduction.md").write_text("\n".join(out).rstrip() + "\n")
    print(f"wrote {DOCS / 'reproduction.md'}")


if __name__ == "__main__":
    main()
