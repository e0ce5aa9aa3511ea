"""Merge the two device runs of 2026-11-27 (NVIDIA H200) into ``merged_gpu.json``, the
``gpu.json`` that ``benchmarks/run_all.py --from DIR`` renders (copy it and
``gpu_quick.json`` into DIR).

    python benchmarks/data/gpu-2026-11-27/merge.py

Run 1 (``bash benchmarks/gpu_session.sh``): env.txt, run1_gpu.json (precision),
gpu_check.txt (its throughput lines: the part ran past its time limit, so they are not in
the JSON), gpu_quick.json + quick.txt (the quick cart-pole figure), tests_cpu_tail.txt.
Run 2 (``gpu_check.py --parts precision --problems quantum``, then ``--parts
epochs,throughput --problems cartpole,guidance,quantum --modes R,C --cases ...``):
run2_precision.json, run2_gpu.json (epochs); its throughput part printed one row (K = 512)
before its time limit, copied below from the call's output. The one-step 1-ulp floors were
not measured on the GPU host; they are measured here, on this machine's CPU.
"""

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
import gpu_check as g  # noqa: E402

RUN2_PRINTED = ["cartpole  C K=  512:    5.68 ms/update,     90152 seed-updates/s (compile 14.8 s)"]
QUANTUM_C_NOTE = (
    "measured before quantum.solve_tridiagonal: C's two fields were folded into two right-hand-side columns, "
    "which the GPU solver loops over system by system on the host; the fix (one column per system off the CPU) "
    "is tested structurally but not yet timed on a GPU (no device time left)"
)


def main():
    r1 = json.loads((HERE / "run1_gpu.json").read_text())
    r2p = json.loads((HERE / "run2_precision.json").read_text())
    r2 = json.loads((HERE / "run2_gpu.json").read_text())
    prec = [r for r in r1["precision"] if r["problem"] != "quantum"] + r2p["precision"]
    floors = {
        (r["problem"], r["mode"]): r["step_floor_ulp_x0"]
        for r in g.precision_check(("cartpole", "guidance", "quantum"), ("R", "C"))
    }
    for r in prec:
        r["step_floor_ulp_x0"] = floors[(r["problem"], r["mode"])]
        r["step_floor_measured_on"] = "the 2-core CPU of results.md (not the GPU host)"
        r["ok_highest"] = g.passes(r)
    pat = re.compile(r"(\w+)\s+(\w) K=\s*(\d+):\s+([\d.]+) ms/update,\s+(\d+) seed-updates/s \(compile ([\d.]+) s\)")
    thr = []
    for line in (HERE / "gpu_check.txt").read_text().splitlines() + RUN2_PRINTED:
        m = pat.search(line)
        if m:
            p, mode, K, ms, sus, cs = m.groups()
            thr.append(
                {
                    "problem": p,
                    "mode": mode,
                    "K": int(K),
                    "update_s": float(ms) / 1e3,
                    "seed_updates_per_s": float(sus),
                    "compile_s": float(cs),
                }
            )
    epochs = r2["epochs"]
    for r in epochs:
        if (r["problem"], r["mode"]) == ("quantum", "C"):
            r["note"] = QUANTUM_C_NOTE
    out = {
        "machine": r2["machine"],
        "device": "NVIDIA H200 (" + r2["device"] + ")",
        "backend": r2["backend"],
        "precision": prec,
        "throughput": thr,
        "epochs": epochs,
        "source": "two device runs on 2026-11-27, merged by benchmarks/data/gpu-2026-11-27/merge.py",
    }
    (HERE / "merged_gpu.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {HERE / 'merged_gpu.json'}")


if __name__ == "__main__":
    main()
