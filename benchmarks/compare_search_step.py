#!/usr/bin/env python3
"""Runs the datanas search-step benchmark and its PyTorch twin, prints a markdown table.

    python3 benchmarks/compare_search_step.py --build-dir build-sbench
    python3 benchmarks/compare_search_step.py --threads 1 --clock cpu --runs 2 --save out-step
    python3 benchmarks/compare_search_step.py --load out-step/*.json       # table from saved runs

Every (side, mode) runs in a fresh process, so that the peak RSS (getrusage ru_maxrss at exit)
belongs to that mode alone: datanas as `bench_search_step --peak-rss MODE --steps N` (a plain loop
of the Google Benchmark step, one JSON line), PyTorch as `pytorch/search_step.py --mode MODE`.
Each process runs --warmup untimed steps, then --steps timed ones and reports their median.
With --runs > 1 the table keeps per (side, mode) the lowest median (load from other processes
only adds time) and marks a time whose runs differ by more than 10 % with their ratio, e.g.
(x1.31); peak RSS is the maximum over the runs.

--clock wall: wall time per step (the default; meaningful on an otherwise idle machine).
--clock cpu: process CPU time per step (all threads); with --threads 1 it is the work done,
unaffected by time the process spent descheduled.
Ratios: speed = PyTorch time / datanas time (above 1: datanas faster); memory = datanas peak RSS /
PyTorch peak RSS (below 1: datanas smaller). Standard library only.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_SCRIPT = os.path.join(HERE, "pytorch", "search_step.py")
MODES = ["softmax_edge_dense", "egs4_node_dense", "egs4_node_sparse"]
LABEL = {
    "softmax_edge_dense": "Softmax (DARTS), per edge, dense",
    "egs4_node_dense": "EGS M=4, per node, dense",
    "egs4_node_sparse": "EGS M=4, per node, sparse",
}


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def run_json(cmd, env):
    print(f"[load {loadavg()}] $ " + " ".join(cmd), file=sys.stderr)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
    lines = [l for l in out.splitlines() if l.strip().startswith("{")]
    return json.loads(lines[-1])


def measure(args, side, mode):
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if side == "datanas":
        exe = os.path.join(args.build_dir, "benchmarks", "bench_search_step")
        cmd = [exe, "--peak-rss", mode, "--steps", str(args.steps)]
    else:
        cmd = [sys.executable, TORCH_SCRIPT, "--mode", mode, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads or os.cpu_count())]
    t0, load = time.time(), loadavg()
    r = run_json(cmd, env)
    r.update(side=side, load_before=load, load_after=loadavg(), seconds=round(time.time() - t0, 1))
    return r


def fmt_ms(vals):
    lo, hi = min(vals), max(vals)
    s = f"{lo:,.0f}"
    return s + (f" (x{hi / lo:.2f})" if hi > 1.10 * lo else "")


def table(results, clock):
    key = "cpu_ms_per_step" if clock == "cpu" else "ms_per_step"
    by = {}
    for r in results:
        by.setdefault((r["side"], r["mode"]), []).append(r)
    unit = "CPU ms / step" if clock == "cpu" else "ms / step"
    rows = [f"| mode | datanas {unit} | PyTorch {unit} | speed ratio (PyTorch / datanas) | datanas images/s "
            f"| datanas peak MB | PyTorch peak MB | memory ratio (datanas / PyTorch) | datanas allocator peak MB "
            f"| PyTorch RSS before the first step MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in MODES:
        d, t = by.get(("datanas", m)), by.get(("torch", m))
        if not d or not t:
            continue
        dms, tms = [r[key] for r in d], [r[key] for r in t]
        dmem, tmem = max(r["peak_rss_MB"] for r in d), max(r["peak_rss_MB"] for r in t)
        rows.append(
            f"| {LABEL[m]} | {fmt_ms(dms)} | {fmt_ms(tms)} | {min(tms) / min(dms):.2f} "
            f"| {2 * 64 / (min(dms) / 1e3):.1f} | {dmem:,.0f} | {tmem:,.0f} | {dmem / tmem:.2f} "
            f"| {max(r['alloc_peak_MB'] for r in d):,.0f} | {max(r['rss_after_setup_MB'] for r in t):,.0f} |")
    d_dense, t_dense = by.get(("datanas", "egs4_node_sparse")), by.get(("torch", "softmax_edge_dense"))
    notes = []
    if d_dense and t_dense:
        notes.append(f"EGS sparse (datanas) vs Softmax dense (PyTorch): "
                     f"{min(r[key] for r in t_dense) / min(r[key] for r in d_dense):.2f}x")
    for side in ("datanas", "torch"):
        for m in MODES:
            if by.get((side, m)):
                notes.append(f"{side} {m}: threads {by[(side, m)][0]['threads']}, runs {len(by[(side, m)])}, "
                             f"load before each run: {', '.join(r['load_before'] for r in by[(side, m)])}")
    return "\n".join(rows) + "\n\n" + "\n".join("- " + n for n in notes)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default="build-sbench")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="PyTorch warm-up steps (datanas always runs 1)")
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS / torch threads (default: all)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--sides", default="datanas,torch")
    ap.add_argument("--save", help="directory for the raw JSON of each run")
    ap.add_argument("--load", nargs="*", help="saved JSON files instead of running")
    args = ap.parse_args()
    results = []
    if args.load:
        for p in args.load:
            for f in glob.glob(p):
                with open(f) as fh:
                    results.append(json.load(fh))
    else:
        if args.save:
            os.makedirs(args.save, exist_ok=True)
        for run in range(args.runs):
            for m in args.modes.split(","):
                for side in args.sides.split(","):  # both sides of a mode back to back
                    r = measure(args, side, m)
                    results.append(r)
                    print(json.dumps(r), file=sys.stderr)
                    if args.save:
                        stamp = time.strftime("%H%M%S")
                        with open(os.path.join(args.save, f"{side}_{m}_t{r['threads']}_{run}_{stamp}.json"), "w") as fh:
                            json.dump(r, fh)
    print(table(results, args.clock))


if __name__ == "__main__":
    main()
