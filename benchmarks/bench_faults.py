"""Fault injection (issue 19): kill ``stablebptt sweep`` and ``stablebptt train`` with SIGKILL
at random moments, run them again, and check that nothing was lost, nothing was computed
twice and every result equals an uninterrupted run's, bit for bit.

    python benchmarks/bench_faults.py --trials 10                 # ~5 min on 2 busy cores
    python benchmarks/bench_faults.py --trials 4 --out            # + appended to benchmarks/data/faults-<date>.md
    python benchmarks/bench_faults.py --trials 6 --workers 2      # local pool; also kills workers
    python benchmarks/bench_faults.py --trials 2 --kinds train --kills 1   # smallest run

Everything goes through the command line in fresh processes (``python -c "from
stablebptt.cli import app; app()" ...``, as tests/test_resume.py runs it), in a temporary
folder (``--keep DIR`` keeps it), with a compilation cache of its own shared by all
processes:

1. References. A tiny cart-pole sweep written by the script (``--modes`` × ``--clips`` ×
   ``--seeds``, ``--epochs`` epochs; ``--executor serial`` with ``--workers 0``, the
   default, else the local process pool with that many workers) and one ``stablebptt
   train`` run, both with ``--checkpoint-seconds`` (default 0.25 s, so that checkpoints
   happen and a kill usually loses a few epochs after the last one). Each is computed twice,
   uninterrupted (cold, then warm cache): the two must agree bit for bit, or the
   benchmark stops (exit code 2: without a reproducible reference nothing can be judged).
   The warm run's wall time T is the window the kill moments are drawn from.
2. Trials. Per trial and kind (``--kinds sweep,train``): a fresh folder; k kills, k drawn
   from 1..``--kills``, each at a moment drawn uniformly from (``--earliest``·T, T) after
   the start of that invocation (default (0.25 T, T): the first seconds are start-up;
   ``--seed`` seeds the draws, so a trial's plan is reproducible, not what it hits).
   Invocation i is started, SIGKILLed at its moment
   (with ``--workers`` ≥ 2, half the sweep's kills hit a pool worker instead, shown as
   ``w``: the sweep then exits on its own with failed jobs), and the next one started; an
   invocation that ends before its moment ends the killing. Then a last invocation runs to
   the end and must exit 0.
3. Checks after each trial, against the reference:

   * ``runs``: finished result folders (``result.json``); ``lost``: reference run ids
     without one (a folder that is no reference run is a failure too);
   * ``dup``: runs computed twice: a finished folder rewritten by a later invocation
     (``result.json``'s inode or mtime changed between invocations), or a last invocation
     that computed more runs than were unfinished before it (the sweep's summary line
     ``N jobs: C computed, S already done``; ``stablebptt train`` prints "already trained"
     for a finished run);
   * ``left``: leftovers: entries under ``<root>/.partial/`` or ``.tmp-*`` folders;
   * ``equal``: every run's ``metrics.csv`` (all columns but ``wall_s``, compared as
     text: the CSV holds each float's shortest round-trip repr), ``result.json`` (all
     but ``compile_s``/``train_s``), ``config.json`` and ``weights.npz`` (array by array)
     identical to the reference's;
   * ``resumed``: runs whose manifest says they continued from a checkpoint (shows that
     the kills hit training, not only the start-up).

A trial fails if any run is lost or duplicated, anything is left over, a result differs
from the reference, the last invocation exits non-zero or reports failed or claimed jobs,
a pool worker outlives a killed sweep by more than 5 s, or an invocation hangs
(``--timeout``); failed trials keep their folders (printed). The table (trial, kind, kill
moments, kills done, runs, dup, lost, left, resumed, equal, wall seconds) and a summary
line are printed; ``--out [FILE]`` also appends them to a Markdown file (default
``benchmarks/data/faults-<date>.md``, one section per run), ``--json FILE`` writes the
raw rows. Exit code 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLI = [sys.executable, "-c", "from stablebptt.cli import app; app()"]
SUMMARY = re.compile(
    r"(\d+) jobs: (\d+) computed, (\d+) already done, (?:(\d+) being computed by other processes, )?"
    r"(\d+) diverged, (\d+) failed"
)


# ----------------------------------------------------------------------------- the commands
def spec_toml(args) -> str:
    modes = ", ".join(f'"{m}"' for m in args.modes.split(","))
    clips = ", ".join(f'"{c}"' for c in args.clips.split(","))
    return (
        f'name = "faults"\nseeds = {args.seeds}\n[[experiment]]\nproblem = "cartpole"\n'
        f"problem_params = {{ steps = {args.steps} }}\nmodes = [{modes}]\nclips = [{clips}]\n"
        f"[experiment.config]\nepochs = {args.epochs}\nn_train = 16\nn_test = 8\n"
    )


def command(kind: str, root: Path, args, spec: Path) -> list[str]:
    ck = ["--checkpoint-seconds", str(args.checkpoint_seconds)]
    if kind == "sweep":
        ex = ["--executor", "serial"] if args.workers == 0 else ["--executor", "local", "--workers", str(args.workers)]
        return [*CLI, "sweep", str(spec), "--out", str(root), *ex, *ck]
    return [
        *CLI,
        "train",
        "cartpole",
        "--param",
        f"steps={args.steps}",
        "--epochs",
        str(args.train_epochs),
        "--n-train",
        "32",
        "--n-test",
        "16",
        *ck,
        "--out",
        str(root),
    ]


def child_env(cache: Path) -> dict:
    env = dict(os.environ, STABLEBPTT_CACHE_DIR=str(cache), COLUMNS="250", PYTHONUNBUFFERED="1")
    if (REPO / "src" / "stablebptt").is_dir():  # this checkout's library, not another installed copy
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    f = open(log, "w")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    f.close()
    return p


def workers_of(pid: int) -> list[int]:
    """The live process-pool workers (``spawn_main``) whose parent is ``pid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"spawn_main" in (d / "cmdline").read_bytes():
                out.append(int(d.name))
        except (OSError, IndexError, ValueError):
            pass
    return out


def group_workers(pgid: int) -> list[int]:
    """Live pool workers (``spawn_main``) in process group ``pgid`` (an invocation's)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (
                int((d / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid
                and b"spawn_main" in (d / "cmdline").read_bytes()
            ):
                out.append(int(d.name))
        except (OSError, IndexError, ValueError):
            pass
    return out


def kill_tree(p: subprocess.Popen, grace: float = 5.0) -> list[int]:
    """End what is left of an invocation: the command (SIGKILL) and, after ``grace`` seconds
    in which a dead sweep's workers should have died with it (``PR_SET_PDEATHSIG``), its
    process group. Returns the workers that outlived the command (orphans)."""
    if p.poll() is None:
        p.kill()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.perf_counter() + grace
    orphans = group_workers(p.pid)
    while orphans and time.perf_counter() < deadline:
        time.sleep(0.1)
        orphans = group_workers(p.pid)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return orphans


# ----------------------------------------------------------------------------- reading results
def finished(root: Path) -> dict[str, tuple[int, int]]:
    """run id -> (inode, mtime_ns) of its result.json, for every finished run folder."""
    got = {}
    if root.is_dir():
        for p in root.iterdir():
            try:
                st = (p / "result.json").stat()
            except OSError:
                continue
            got[p.name] = (st.st_ino, st.st_mtime_ns)
    return got


def fingerprint(folder: Path) -> dict:
    """What must be identical between two computations of one run (everything but times)."""
    import numpy as np

    lines = (folder / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, c in enumerate(header) if c != "wall_s"]
    metrics = [[row.split(",")[i] for i in keep] for row in [lines[0], *lines[1:]]]
    result = {
        k: v for k, v in json.loads((folder / "result.json").read_text()).items() if k not in ("compile_s", "train_s")
    }
    config = json.loads((folder / "config.json").read_text())
    with np.load(folder / "weights.npz") as w:
        weights = {k: (str(w[k].dtype), w[k].shape, w[k].tobytes()) for k in w.files}
    return {"metrics": metrics, "result": result, "config": config, "weights": weights}


def differences(ref: dict, got: dict) -> list[str]:
    return [k for k in ("metrics", "result", "config", "weights") if ref[k] != got[k]]


def leftovers(root: Path) -> list[str]:
    left = [str(p.relative_to(root)) for p in sorted(root.glob(".partial/*"))]
    return left + [p.name for p in sorted(root.glob(".tmp-*"))]


def resumed(root: Path, ids) -> int:
    n = 0
    for k in ids:
        try:
            ran = json.loads((root / k / "manifest.json").read_text()).get("ran", {})
        except (OSError, ValueError):
            continue
        n += bool(ran.get("resumed_from_epoch"))
    return n


# ----------------------------------------------------------------------------- one trial
def run_to_end(cmd, env, log: Path, timeout: float) -> tuple[int | None, float]:
    t0 = time.perf_counter()
    p = start(cmd, env, log)
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        kill_tree(p)
    return rc, time.perf_counter() - t0


def reference(kind: str, args, base: Path, spec: Path, env: dict) -> tuple[dict, float]:
    """Two uninterrupted computations (cold, warm cache); their fingerprints must agree."""
    prints, wall = [], 0.0
    for i in range(2):
        root = base / f"ref-{kind}-{i}"
        rc, wall = run_to_end(command(kind, root, args, spec), env, base / f"ref-{kind}-{i}.log", args.timeout)
        if rc != 0:
            sys.exit(f"reference {kind} run {i} failed (rc {rc}); see {base / f'ref-{kind}-{i}.log'}")
        prints.append({k: fingerprint(root / k) for k in finished(root)})
        print(
            f"reference {kind} ({'cold' if i == 0 else 'warm'} cache): {len(prints[-1])} run(s), {wall:.1f} s",
            flush=True,
        )
    a, b = prints
    bad = sorted(k for k in a if k not in b or differences(a[k], b[k])) + sorted(set(b) - set(a))
    if bad:
        print(
            f"the two uninterrupted {kind} references differ ({', '.join(bad)}): the results are not "
            "reproducible here, so the faults cannot be judged bit for bit",
            file=sys.stderr,
        )
        sys.exit(2)
    return a, wall


def trial(
    n: int, kind: str, args, base: Path, spec: Path, env: dict, ref: dict, window: float, rng: random.Random
) -> dict:
    root = base / f"trial-{n}-{kind}"
    k = rng.randint(1, args.kills)
    plan = [
        (
            rng.uniform(args.earliest * window, window),
            "worker" if kind == "sweep" and args.workers >= 2 and rng.random() < 0.5 else "main",
        )
        for _ in range(k)
    ]
    victim = random.Random(f"{args.seed}-{n}-{kind}")  # not rng: the plans stay independent of timing
    cmd = command(kind, root, args, spec)
    row = {"trial": n, "kind": kind, "plan": plan, "kills": [], "rcs": [], "problems": []}
    t0 = time.perf_counter()
    seen: dict[str, tuple[int, int]] = {}
    rewritten: set[str] = set()

    def snapshot():
        now = finished(root)
        rewritten.update(r for r, st in now.items() if r in seen and seen[r] != st)
        seen.update({r: st for r, st in now.items() if r not in seen})

    for i, (at, target) in enumerate(plan):
        log = base / f"trial-{n}-{kind}-{i}.log"
        p = start(cmd, env, log)
        t_start = time.perf_counter()
        try:
            while p.poll() is None and time.perf_counter() - t_start < at:
                time.sleep(0.01)
            if p.poll() is not None:  # ended before its moment: nothing left to kill
                row["rcs"].append(p.returncode)
                snapshot()
                break
            hit = "main"
            if target == "worker":
                ws = workers_of(p.pid)
                if ws:
                    os.kill(victim.choice(ws), signal.SIGKILL)
                    hit = "worker"
            if hit == "main":
                p.send_signal(signal.SIGKILL)
            row["kills"].append((round(time.perf_counter() - t_start, 2), hit))
            try:  # a worker's death: the sweep reports failed jobs and ends by itself
                rc = p.wait(timeout=args.timeout if hit == "worker" else 60)
            except subprocess.TimeoutExpired:
                rc = None
                row["problems"].append(f"invocation {i} still running {args.timeout:.0f} s after a worker was killed")
            row["rcs"].append(rc)
        finally:
            orphans = kill_tree(p)
        if orphans:
            row["problems"].append(f"invocation {i}: {len(orphans)} worker(s) outlived the sweep")
        snapshot()

    before = dict(finished(root))
    log = base / f"trial-{n}-{kind}-last.log"
    rc, _ = run_to_end(cmd, env, log, args.timeout)
    row["rcs"].append(rc)
    snapshot()
    text = log.read_text(errors="replace")
    if rc != 0:
        row["problems"].append(f"last invocation: rc {rc} (log {log})")
    todo = len(ref) - len([r for r in before if r in ref])
    if kind == "sweep":
        m = SUMMARY.search(text)
        if m is None:
            computed = None
            row["problems"].append(f"no summary line in {log}")
        else:
            jobs, computed, skipped, claimed, _, failed = (int(x) if x else 0 for x in m.groups())
            if claimed:
                row["problems"].append(f"{claimed} run(s) claimed by other processes in the last invocation")
            if failed:
                row["problems"].append(f"{failed} failed job(s) in the last invocation")
            if jobs != len(ref):
                row["problems"].append(f"{jobs} jobs, the reference has {len(ref)}")
    else:
        computed = 0 if "already trained" in text else 1 if rc == 0 else None
    row["computed_last"], row["todo_last"] = computed, todo
    now = finished(root)
    extra = sorted(set(now) - set(ref))
    lost = sorted(set(ref) - set(now))
    dup = set(rewritten)
    over = max(0, (computed or 0) - todo)
    if extra:
        row["problems"].append(f"folders that are not reference runs: {', '.join(extra)}")
    row["runs"], row["lost"], row["extra"] = len(now), lost, extra
    row["dup"] = len(dup) + over
    row["rewritten"] = sorted(dup)
    if over:
        row["problems"].append(f"last invocation computed {computed} run(s), only {todo} were unfinished")
    row["left"] = leftovers(root)
    row["resumed"] = resumed(root, now)
    unequal = {}
    for r in sorted(set(ref) & set(now)):
        d = differences(ref[r], fingerprint(root / r))
        if d:
            unequal[r] = d
    row["unequal"] = unequal
    row["equal"] = not unequal and not lost
    row["wall_s"] = time.perf_counter() - t0
    row["failed"] = bool(lost or row["dup"] or row["left"] or unequal or row["problems"])
    if args.keep is None and not row["failed"]:
        shutil.rmtree(root, ignore_errors=True)
    return row


# ----------------------------------------------------------------------------- report
HEAD = ["trial", "kind", "kill moments (s)", "kills", "runs", "dup", "lost", "left", "resumed", "equal", "wall s"]


def cells(r: dict) -> list[str]:
    planned = ", ".join(f"{'w' if t == 'worker' else ''}{at:.1f}" for at, t in r["plan"])
    done = len(r["kills"])
    n_workers = sum(1 for _, h in r["kills"] if h == "worker")
    kills = f"{done}/{len(r['plan'])}" + (f" ({n_workers} w)" if n_workers else "")
    return [
        str(r["trial"]),
        r["kind"],
        planned,
        kills,
        str(r["runs"]),
        str(r["dup"]),
        str(len(r["lost"])),
        str(len(r["left"])),
        str(r["resumed"]),
        "yes" if r["equal"] else "NO",
        f"{r['wall_s']:.1f}",
    ]


def table(rows: list[dict]) -> str:
    body = [cells(r) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(HEAD)]
    line = lambda c: "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |"
    return "\n".join([line(HEAD), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def summary(rows: list[dict], wall: float) -> str:
    kills = sum(len(r["kills"]) for r in rows)
    wk = sum(1 for r in rows for _, h in r["kills"] if h == "worker")
    failed = [r for r in rows if r["failed"]]
    kinds = ", ".join(f"{sum(1 for r in rows if r['kind'] == k)} {k}" for k in dict.fromkeys(r["kind"] for r in rows))
    return (
        f"{len(rows)} trials ({kinds}), {kills} kills"
        + (f" ({wk} of workers)" if wk else "")
        + f", {sum(r['resumed'] for r in rows)} runs resumed from a checkpoint, {len(failed)} failed"
        + f", {sum(r['dup'] for r in rows)} duplicated, {sum(len(r['lost']) for r in rows)} lost"
        + f"; wall {wall:.0f} s"
    )


def details(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if not r["failed"]:
            continue
        what = [*r["problems"]]
        if r["lost"]:
            what.append(f"lost {', '.join(r['lost'])}")
        if r["rewritten"]:
            what.append(f"rewritten after they had finished: {', '.join(r['rewritten'])}")
        if r["left"]:
            what.append(f"left over: {', '.join(r['left'])}")
        for k, d in r["unequal"].items():
            what.append(f"{k} differs from the reference in {', '.join(d)}")
        kills = ", ".join(f"{h} at {t:.2f} s" for t, h in r["kills"]) or "none"
        out.append(f"- trial {r['trial']} {r['kind']}: {'; '.join(what)} (kills: {kills}; exit codes {r['rcs']})")
    return out


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill plans (how many kills, when, whom)")
    ap.add_argument("--kills", type=int, default=3, help="at most this many kills per trial (drawn from 1..KILLS)")
    ap.add_argument("--kinds", default="sweep,train", help="what each trial kills: sweep, train or both")
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="sweep executor: 0 = serial (the process is the worker), N = local pool of N workers "
        "(N ≥ 2: half the kills hit a worker)",
    )
    ap.add_argument("--modes", default="R,C")
    ap.add_argument("--clips", default="none")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8, help="cart-pole simulator steps")
    ap.add_argument("--epochs", type=int, default=800, help="epochs of each sweep run")
    ap.add_argument("--train-epochs", type=int, default=1000, help="epochs of the train run")
    ap.add_argument(
        "--earliest",
        type=float,
        default=0.25,
        help="kill moments are drawn from (EARLIEST·T, T), T = the warm reference's wall time (the "
        "first seconds are the interpreter's and JAX's start-up)",
    )
    ap.add_argument("--checkpoint-seconds", type=float, default=0.25)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before an invocation counts as hung")
    ap.add_argument(
        "--keep",
        default=None,
        help="work in this folder and keep it (default: a temporary one, kept only for failed trials)",
    )
    ap.add_argument(
        "--out",
        nargs="?",
        const="auto",
        default=None,
        help="append the table to a Markdown file (default: benchmarks/data/faults-<UTC date>.md)",
    )
    ap.add_argument("--json", default=None, help="write the rows as JSON")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in ("sweep", "train") for k in kinds):
        ap.error(f"--kinds {args.kinds!r}: allowed sweep, train")
    if args.workers == 1:
        print("--workers 1: a local pool of one worker (no worker kills; those need --workers 2 or more)")

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-faults-"))
    base.mkdir(parents=True, exist_ok=True)
    spec = base / "faults.toml"
    spec.write_text(spec_toml(args))
    env = child_env(base / "cache")
    t0 = time.perf_counter()
    refs = {k: reference(k, args, base, spec, env) for k in kinds}
    rng = random.Random(args.seed)
    rows = []
    for n in range(1, args.trials + 1):
        for kind in kinds:
            ref, window = refs[kind]
            r = trial(n, kind, args, base, spec, env, ref, window, rng)
            rows.append(r)
            print(
                f"trial {n} {kind}: kills {r['kills']} rcs {r['rcs']} runs {r['runs']} dup {r['dup']} "
                f"lost {len(r['lost'])} left {len(r['left'])} resumed {r['resumed']} "
                f"{'equal' if r['equal'] else 'NOT EQUAL'} {r['wall_s']:.1f} s" + (" FAILED" if r["failed"] else ""),
                flush=True,
            )
    wall = time.perf_counter() - t0
    text = table(rows)
    line = summary(rows, wall)
    bad = details(rows)
    print()
    print(text)
    print()
    print(line)
    for b in bad:
        print(b)
    if bad:
        print(f"work folder kept: {base}")
    elif args.keep is None:
        shutil.rmtree(base, ignore_errors=True)

    argv_s = " ".join(sys.argv[1:] if argv is None else argv)
    if args.out:
        now = _dt.datetime.now(_dt.UTC)
        path = HERE / "data" / f"faults-{now.date().isoformat()}.md" if args.out == "auto" else Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        windows = ", ".join(f"{k} {refs[k][1]:.1f} s" for k in kinds)
        runs = ", ".join(f"{k} {len(refs[k][0])}" for k in kinds)
        md = (
            []
            if path.exists()
            else [
                f"# Fault injection ({now.date().isoformat()})",
                "",
                "Written by `benchmarks/bench_faults.py --out` (its docstring says what is "
                "checked); one section per run.",
                "",
            ]
        )
        md += [
            f"## {now.strftime('%H:%M')} UTC: `python benchmarks/bench_faults.py {argv_s}`",
            "",
            f"Commit {commit() or '?'}, {os.cpu_count()} cores, load "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end. "
            f"Sweep: cart-pole steps={args.steps}, modes {args.modes}, clips {args.clips}, {args.seeds} seeds, "
            f"{args.epochs} epochs, "
            + ("serial executor" if args.workers == 0 else f"local pool of {args.workers} workers")
            + f"; train: {args.train_epochs} epochs; checkpoints every {args.checkpoint_seconds} s. "
            f"Runs per reference: {runs}. Kill moments drawn from ({args.earliest:g}·T, T), T = the warm "
            f"reference's wall time ({windows}); `w` = a sweep worker killed, not the sweep. `kills` = done / "
            "planned (an invocation that ends before its moment ends the killing); `resumed` = runs that "
            "continued from a checkpoint.",
            "",
            text,
            "",
            f"**{line}**",
            "",
        ]
        if bad:
            md += ["Failures:", "", *bad, ""]
        with open(path, "a") as f:
            f.write("\n".join(md) + "\n")
        print(f"written: {path}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "rows": rows, "wall_s": wall}, indent=2, default=str)
        )
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
