#!/usr/bin/env python3
"""Runs the datanas micro-benchmarks and their PyTorch twin, prints markdown tables.

    python3 benchmarks/compare_ops.py --build-dir build-bench            # ops, autograd, gemm
    python3 benchmarks/compare_ops.py --suite ops --runs 3 --save out/   # keep the raw JSON
    python3 benchmarks/compare_ops.py --suite ops \
        --datanas-json-ops out/datanas_ops_*.json \
        --torch-json-ops out/torch_ops_*.json                            # tables from saved runs
    python3 benchmarks/compare_ops.py --verify                           # same results? (no timing)
    python3 benchmarks/compare_ops.py --suite gemm --threads 1 --clock cpu  # small_gemm, Eigen, torch.mm

Ratio = PyTorch time / datanas time: above 1 datanas is faster. Each run gives per benchmark the
median of repeats (Google Benchmark --benchmark_repetitions, ops.py --repeats); with several runs
(--runs, default 2) the table keeps the lowest median and marks benchmarks whose runs differ by
more than 10 %. Standard library only.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_SCRIPT = os.path.join(HERE, "pytorch", "ops.py")
EXE = {"ops": "bench_ops", "autograd": "bench_autograd", "gemm": "bench_gemm"}
CHAIN = 100  # ops per chain in bench_autograd.cpp and ops.py


def run(cmd, env=None):
    print("$ " + " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout


def gbench_ms(doc, field="real_time"):
    """{name: ms per iteration} from Google Benchmark JSON: the median aggregate when there were
    repetitions, else the single run. The '/real_time' suffix is dropped from names."""
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    medians, singles = {}, {}
    for b in doc["benchmarks"]:
        name = re.sub(r"(/real_time|/min_warmup_time:[^/]*)+$", "", b.get("run_name", b["name"]))
        ms = b[field] * scale[b["time_unit"]]
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians[name] = ms
        else:
            singles.setdefault(name, ms)
    return {**singles, **medians}


# Each run goes group by group, both sides of a group back to back, and waits before each group
# until the machine is idle: on a small shared machine, a compiler on the other core stalls
# every OpenMP barrier of both libraries and makes a whole run worthless.
GROUPS = {
    "ops": ["C16/", "C32/", "C64/", "^(linear|cross_entropy)/"],
    "autograd": ["/n(1|16)(/|$)", "/n(65536|1048576)(/|$)"],
    "gemm": ["/nn/", "/tn/", "/nt/"],
}


def datanas_run(args, suite, regex):
    exe = os.path.join(args.build_dir, "benchmarks", EXE[suite])
    text = run([exe, "--benchmark_format=json", f"--benchmark_repetitions={args.repeats}",
                "--benchmark_report_aggregates_only=true",
                f"--benchmark_min_time={args.repeat_time}",
                f"--benchmark_min_warmup_time={args.warmup}", f"--benchmark_filter={regex}"],
               env=thread_env(args))
    return gbench_ms(json.loads(text), "cpu_time" if args.clock == "cpu" else "real_time")


def thread_env(args):
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def torch_run(args, suite, regex):
    text = run([sys.executable, TORCH_SCRIPT, "--suite", suite, "--filter", regex,
                "--repeats", str(args.repeats), "--repeat-time", str(args.repeat_time),
                "--warmup", str(args.warmup), "--threads", str(args.threads or os.cpu_count()),
                "--clock", "process" if args.clock == "cpu" else "wall"],
               env=thread_env(args))
    return json.loads(text)


def busy_fraction(seconds=1.0):
    """Fraction of all CPUs busy during the next `seconds` (this process sleeps meanwhile)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(args):
    """Waits for 3 consecutive seconds under --idle-below CPU use, at most --max-wait s."""
    if args.max_wait <= 0 or not os.path.exists("/proc/stat"):
        return
    start, quiet = time.time(), 0
    while time.time() - start < args.max_wait:
        quiet = quiet + 1 if busy_fraction() < args.idle_below else 0
        if quiet >= 3:
            return
    print(f"warning: still busy after {args.max_wait} s, measuring anyway", file=sys.stderr)


def results(args, suite):
    """Per side a list of {name: ms}, one per run: from the given JSON files, or from --runs
    fresh runs (saved under --save as <side>_<suite>_<run>.json)."""
    ours = [load(p) for p in getattr(args, f"datanas_json_{suite}") or []]
    theirs = [load(p) for p in getattr(args, f"torch_json_{suite}") or []]
    if ours or theirs:
        return ours, theirs
    groups = [args.filter] if args.filter else GROUPS[suite]
    for k in range(args.runs):
        o, t = {}, {}
        for g in groups:
            # Alternate which side goes first, so neither always follows the idle wait.
            for side in (("ours", "theirs") if k % 2 == 0 else ("theirs", "ours")):
                wait_idle(args)
                if side == "ours":
                    o.update(datanas_run(args, suite, g))
                else:
                    t.update(torch_run(args, suite, g))
                # Saved after every group, so an interrupted run keeps what it measured.
                save(args, f"datanas_{suite}_{k}.json", json.dumps(o, indent=1))
                save(args, f"torch_{suite}_{k}.json", json.dumps(t, indent=1))
        ours.append(o)
        theirs.append(t)
    return ours, theirs


def load(path):
    """{name: ms} from Google Benchmark JSON or from a flat {name: ms} file."""
    with open(path) as f:
        doc = json.load(f)
    return gbench_ms(doc) if "benchmarks" in doc else doc


def merge(runs):
    """{name: (best ms, spread)}: the lowest median over the runs (interference from other
    processes only ever adds time) and max / min over the runs, to show how stable it was."""
    out = {}
    for r in runs:
        for name, ms in r.items():
            out.setdefault(name, []).append(ms)
    return {n: (min(v), max(v) / min(v)) for n, v in out.items()}


def save(args, name, text):
    """Writes `text` to --save/<name> when --save is given."""
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        with open(os.path.join(args.save, name), "w") as f:
            f.write(text)


def fmt(x, digits=3):
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" if x < 100 else f"{x:.1f}"


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def noisy(spread):
    """Marks a time whose runs disagreed by more than 10 %: ' (x1.23)'."""
    return f" (x{spread:.2f})" if spread and spread > 1.10 else ""


def ops_table(ours, theirs):
    """ours, theirs: merge() output. Spread over the runs in parentheses when above 1.10."""
    lines = ["| op | shape | datanas ms | PyTorch ms | ratio (PyTorch / datanas) | faster |",
             "|---|---|---:|---:|---:|---|"]
    ratios, slower = [], []
    names = list(ours) + [n for n in theirs if n not in ours]
    for name in names:
        op, _, shape = name.partition("/")
        (a, sa), (b, sb) = ours.get(name, (None, None)), theirs.get(name, (None, None))
        r = b / a if a and b else None
        if r is not None:
            ratios.append(r)
            if r < 1:
                slower.append(name)
        who = "" if r is None else ("datanas" if r >= 1 else "**PyTorch**")
        lines.append(f"| {op} | {shape} | {fmt(a)}{noisy(sa)} | {fmt(b)}{noisy(sb)} | "
                     f"{'n/a' if r is None else f'{r:.2f}'} | {who} |")
    lines.append("")
    lines.append(f"{len(ratios)} ops compared; geometric mean of the ratios "
                 f"{geomean(ratios):.2f}; datanas slower on {len(slower)}: "
                 f"{', '.join(slower) if slower else 'none'}.")
    return "\n".join(lines)


def autograd_table(ours, theirs):
    lines = ["| chain of 100 relu/add | elements | datanas us / iter | datanas ns / op | "
             "PyTorch us / iter | PyTorch ns / op | ratio (PyTorch / datanas) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in list(ours) + [n for n in theirs if n not in ours]:
        m = re.match(r"chain100/([^/]+)/n(\d+)$", name)
        if not m:
            continue
        (a, sa), (b, sb) = ours.get(name, (None, None)), theirs.get(name, (None, None))
        r = b / a if a and b else None
        us = lambda ms: None if ms is None else ms * 1e3  # noqa: E731
        per_op = lambda ms: None if ms is None else ms * 1e6 / CHAIN  # noqa: E731
        lines.append(f"| {m.group(1)} | {m.group(2)} | {fmt(us(a), 1)}{noisy(sa)} | "
                     f"{fmt(per_op(a), 1)} | {fmt(us(b), 1)}{noisy(sb)} | {fmt(per_op(b), 1)} | "
                     f"{'n/a' if r is None else f'{r:.2f}'} |")
    return "\n".join(lines)


def gemm_table(ours, theirs):
    """bench_gemm's two kernels and ops.py's torch.mm per shape: ms, and GFLOP/s of the small
    product (2 m n k per call)."""
    lines = ["| form | m x n x k | small_gemm ms | Eigen ms | torch.mm ms | GFLOP/s (small) | "
             "Eigen / small | torch / small |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    rows = {}
    for side in (ours, theirs):
        for name, v in side.items():
            m = re.match(r"gemm/(\w+)/m(\d+)_n(\d+)_k(\d+)/(\w+)$", name)
            if m:
                rows.setdefault(m.groups()[:4], {})[m.group(5)] = v
    for (form, mm, n, k), r in rows.items():
        small, eig, tor = (r.get(x, (None, None)) for x in ("small", "eigen", "torch"))
        ratio = lambda b: "n/a" if not (b[0] and small[0]) else f"{b[0] / small[0]:.2f}"  # noqa: E731
        gflops = 2e-6 * int(mm) * int(n) * int(k) / small[0] if small[0] else None
        lines.append(f"| {form} | {mm} x {n} x {k} | {fmt(small[0], 4)}{noisy(small[1])} | "
                     f"{fmt(eig[0], 4)}{noisy(eig[1])} | {fmt(tor[0], 4)}{noisy(tor[1])} | "
                     f"{fmt(gflops, 1)} | {ratio(eig)} | {ratio(tor)} |")
    return "\n".join(lines)


def verify(args):
    """Both sides run one iteration with a sum(relu(y)) loss and print checksums of the loss and
    of every gradient; they must agree to float rounding."""
    exe = os.path.join(args.build_dir, "benchmarks", "bench_ops")
    ours = json.loads(run([exe, "--verify"]))
    theirs = json.loads(run([sys.executable, TORCH_SCRIPT, "--verify", "--filter", args.filter]))
    bad = 0
    for name, o in ours.items():
        if args.filter and not re.search(args.filter, name):
            continue
        t = theirs.get(name)
        if t is None:
            print(f"MISSING in ops.py: {name}")
            bad += 1
            continue
        problems = []
        if not close(o["loss"], t["loss"], abs(t["loss"])):
            problems.append(f"loss {o['loss']:.6g} vs {t['loss']:.6g}")
        if len(o["grads"]) != len(t["grads"]):
            problems.append(f"{len(o['grads'])} gradients vs {len(t['grads'])}")
        for i, (g, h) in enumerate(zip(o["grads"], t["grads"])):
            # The weighted checksum is compared on the scale of sum |g|: it may cancel to ~0.
            if not (close(g[1], h[1], h[1]) and close(g[0], h[0], h[1])):
                problems.append(f"grad {i}: {g} vs {h}")
        print(f"{'ok  ' if not problems else 'FAIL'} {name}" +
              (": " + "; ".join(problems) if problems else ""))
        bad += bool(problems)
    for name in theirs:
        if name not in ours:
            print(f"MISSING in bench_ops: {name}")
            bad += 1
    print(f"{bad} problem(s)")
    return 1 if bad else 0


def close(a, b, scale, rtol=2e-3):
    return abs(a - b) <= rtol * abs(scale) + 1e-6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=["ops", "autograd", "gemm", "all"], default="all")
    ap.add_argument("--build-dir", default="build-bench")
    ap.add_argument("--filter", default="", help="regex on the benchmark names")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--repeat-time", type=float, default=0.1, help="seconds per repeat")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads of both sides (OMP_NUM_THREADS, torch.set_num_threads); "
                    "0: all cores")
    ap.add_argument("--clock", choices=["real", "cpu"], default="real",
                    help="cpu: CPU time instead of wall time; needs --threads 1. On a machine "
                    "that others load, the only measure that stays meaningful")
    ap.add_argument("--warmup", type=float, default=0.2, help="seconds of warm-up per benchmark")
    ap.add_argument("--save", help="directory to keep the {name: ms} JSON of every run")
    ap.add_argument("--max-wait", type=float, default=600,
                    help="seconds to wait for an idle machine before each group (0: never)")
    ap.add_argument("--idle-below", type=float, default=0.10,
                    help="CPU use (fraction of all cores) that counts as idle")
    ap.add_argument("--runs", type=int, default=2,
                    help="runs of each side; the table keeps the lowest median per benchmark")
    for suite in EXE:
        ap.add_argument(f"--datanas-json-{suite}", nargs="+",
                        help=f"read {EXE[suite]} JSON files (one per run) instead of running")
        ap.add_argument(f"--torch-json-{suite}", nargs="+",
                        help=f"read ops.py --suite {suite} JSON files instead of running")
    ap.add_argument("--verify", action="store_true", help="compare results, do not time")
    args = ap.parse_args()

    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu needs --threads 1: Google Benchmark's cpu_time is the main thread's")
    if args.verify:
        return verify(args)
    suites = list(EXE) if args.suite == "all" else [args.suite]
    tables = {"ops": ops_table, "autograd": autograd_table, "gemm": gemm_table}
    for suite in suites:
        ours, theirs = (merge(r) for r in results(args, suite))
        print(tables[suite](ours, theirs))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
