#!/usr/bin/env python3
"""The PyTorch twin of benchmarks/bench_ops.cpp and benchmarks/bench_autograd.cpp.

Same ops, same sizes, same inputs (bit-identical, from the same integer hash), same set of
gradients (inputs and weights require grad), same reduction (sum), same names. Each case: a
warm-up, then the median of repeats, each repeat a loop long enough to time reliably.

    python3 benchmarks/pytorch/ops.py                  # op suite, JSON {name: ms per iteration}
    python3 benchmarks/pytorch/ops.py --suite autograd # the chain-of-100 overhead suite
    python3 benchmarks/pytorch/ops.py --suite gemm     # torch.mm on bench_gemm.cpp's shapes
    python3 benchmarks/pytorch/ops.py --verify         # checksums, compare with bench_ops --verify

Where the C++ library has a fused op and PyTorch has none (the DARTS mixed op), the PyTorch side
is written as the DARTS reference code writes it.
"""

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

BATCH = 64
SIZES = [(16, 32), (32, 16), (64, 8)]  # (C, H = W): the DARTS search sizes on CIFAR
CHAIN = 100
CHAIN_SIZES = [1, 16, 65536, 1048576]


def hashed(shape, seed, scale=1.0):
    """bench_common.hpp hashed(): element i is ((i+1)*2654435761 + seed*40503) mod 2^32 mapped
    to [-1, 1) in double, times scale, rounded once to float32."""
    n = math.prod(shape)
    i = torch.arange(1, n + 1, dtype=torch.int64)
    h = (i * 2654435761 + seed * 40503) % 4294967296
    return ((h.double() / 4294967296.0 * 2.0 - 1.0) * scale).float().reshape(shape)


def param(shape, seed, scale=1.0):
    return hashed(shape, seed, scale).requires_grad_(True)


def bn_nonaffine(x, stats):
    # nn.BatchNorm2d(C, affine=False) in training mode: batch statistics, running stats updated.
    return F.batch_norm(x, stats[0], stats[1], None, None, True, 0.1, 1e-5)


def running_stats(c):
    return (torch.zeros(c), torch.ones(c))


# Each factory returns (leaves, forward, scalar): forward() builds the graph and returns the op
# output, or the loss itself when scalar.


def depthwise_case(c, hw, k, dil):
    x = param((BATCH, c, hw, hw), 1)
    w = param((c, 1, k, k), 2, 1.0 / k)
    pad = dil * (k - 1) // 2
    return [x, w], lambda: F.conv2d(x, w, None, 1, pad, dil, c), False


def conv_case(c, hw, cout, k, stride):
    x = param((BATCH, c, hw, hw), 1)
    w = param((cout, c, k, k), 2, 1.0 / math.sqrt(c * k * k))
    return [x, w], lambda: F.conv2d(x, w, None, stride, (k - 1) // 2), False


def wide_conv_case(batch, c, hw):
    x = param((batch, c, hw, hw), 1)
    w = param((c, c, 3, 3), 2, 1.0 / math.sqrt(c * 9))
    return [x, w], lambda: F.conv2d(x, w, None, 1, 1), False


def sep_conv_case(c, hw, stride=1):
    x = param((BATCH, c, hw, hw), 1)
    dw1, pw1 = param((c, 1, 3, 3), 2, 1.0 / 3), param((c, c, 1, 1), 3, 1.0 / math.sqrt(c))
    dw2, pw2 = param((c, 1, 3, 3), 4, 1.0 / 3), param((c, c, 1, 1), 5, 1.0 / math.sqrt(c))
    bn1, bn2 = running_stats(c), running_stats(c)

    def fwd():
        h = F.conv2d(F.conv2d(F.relu(x), dw1, None, stride, 1, 1, c), pw1)
        h = bn_nonaffine(h, bn1)
        h = F.conv2d(F.conv2d(F.relu(h), dw2, None, 1, 1, 1, c), pw2)
        return bn_nonaffine(h, bn2)

    return [x, dw1, pw1, dw2, pw2], fwd, False


def bn_case(c, hw):
    x = param((BATCH, c, hw, hw), 1)
    stats = running_stats(c)
    return [x], lambda: bn_nonaffine(x, stats), False


def bn_affine_case(c, hw):
    x, gamma, beta = param((BATCH, c, hw, hw), 1), param((c,), 2), param((c,), 3)
    stats = running_stats(c)
    return [x, gamma, beta], lambda: F.batch_norm(x, stats[0], stats[1], gamma, beta, True, 0.1,
                                                  1e-5), False


def unary_case(c, hw, f):
    x = param((BATCH, c, hw, hw), 1)
    return [x], lambda: f(x), False


def add_case(c, hw):
    a, b = param((BATCH, c, hw, hw), 1), param((BATCH, c, hw, hw), 2)
    return [a, b], lambda: a + b, False


def weighted_sum_case(c, hw):
    # The DARTS MixedOp: sum(w * op(x)). Term 0 is "none"; the C++ side skips its symbolic zero,
    # so here it is left out too (w.grad[0] is still produced, and is 0, by the indexing).
    terms = [param((BATCH, c, hw, hw), 10 + i) for i in range(1, 8)]
    w = param((8,), 3, 0.5)

    def fwd():
        y = w[1] * terms[0]
        for i in range(2, 8):
            y = y + w[i] * terms[i - 1]
        return y

    return terms + [w], fwd, False


def concat_case(c, hw):
    parts = [param((BATCH, c, hw, hw), 20 + i) for i in range(4)]
    return parts, lambda: torch.cat(parts, 1), False


def linear_case():
    x, w, b = param((BATCH, 256), 1), param((10, 256), 2, 1.0 / 16), param((10,), 3)
    return [x, w, b], lambda: F.linear(x, w, b), False


def cross_entropy_case():
    logits = param((BATCH, 10), 1, 3.0)
    labels = torch.arange(BATCH, dtype=torch.int64) % 10
    return [logits], lambda: F.cross_entropy(logits, labels), True


def bn_rows_case():
    # The RNN search cell's batch norm (DARTS: BatchNorm1d(affine=False) on a [256, 300] state),
    # with batch statistics only, as datanas keeps no running ones there.
    x = param((256, 300), 1)
    return [x], lambda: F.batch_norm(x, None, None, None, None, True, 0.1, 1e-5), False


def op_cases():
    """(name, factory) in the order of bench_ops.cpp."""
    cases = []
    for c, hw in SIZES:
        sh = f"C{c}/{hw}x{hw}"

        def add(op, make):
            cases.append((f"{op}/{sh}", make))

        add("dw3x3", lambda c=c, hw=hw: depthwise_case(c, hw, 3, 1))
        add("dw5x5", lambda c=c, hw=hw: depthwise_case(c, hw, 5, 1))
        add("dw3x3_dil2", lambda c=c, hw=hw: depthwise_case(c, hw, 3, 2))
        add("dw5x5_dil2", lambda c=c, hw=hw: depthwise_case(c, hw, 5, 2))
        add("conv1x1", lambda c=c, hw=hw: conv_case(c, hw, c, 1, 1))
        add("conv1x1_s2_half", lambda c=c, hw=hw: conv_case(c, hw, c // 2, 1, 2))
        add("conv3x3", lambda c=c, hw=hw: conv_case(c, hw, c, 3, 1))
        add("bn_train", lambda c=c, hw=hw: bn_case(c, hw))
        add("bn_train_affine", lambda c=c, hw=hw: bn_affine_case(c, hw))
        add("relu", lambda c=c, hw=hw: unary_case(c, hw, F.relu))
        for s in (1, 2):
            add(f"maxpool3x3_s{s}",
                lambda c=c, hw=hw, s=s: unary_case(c, hw, lambda x: F.max_pool2d(x, 3, s, 1)))
            add(f"avgpool3x3_s{s}",
                lambda c=c, hw=hw, s=s: unary_case(
                    c, hw, lambda x: F.avg_pool2d(x, 3, s, 1, count_include_pad=False)))
        # DARTS: nn.AdaptiveAvgPool2d(1) then view(N, -1); torch takes its mean() fast path.
        add("global_avg_pool",
            lambda c=c, hw=hw: unary_case(c, hw, lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1)))
        add("add", lambda c=c, hw=hw: add_case(c, hw))
        add("weighted_sum8", lambda c=c, hw=hw: weighted_sum_case(c, hw))
        add("concat4", lambda c=c, hw=hw: concat_case(c, hw))
        add("shift_crop", lambda c=c, hw=hw: unary_case(c, hw, lambda x: x[:, :, 1:, 1:]))
        add("sep_conv_3x3", lambda c=c, hw=hw: sep_conv_case(c, hw))
        if hw > 8:
            add("sep_conv_3x3_s2", lambda c=c, hw=hw: sep_conv_case(c, hw, 2))
    # Dense 3x3 convolutions wider than a DARTS cell's, at small batches (bench_ops.cpp).
    for batch, c, hw in ((8, 256, 14), (8, 512, 7), (2, 512, 7)):
        cases.append((f"conv3x3_wide/B{batch}_C{c}/{hw}x{hw}",
                      lambda batch=batch, c=c, hw=hw: wide_conv_case(batch, c, hw)))
    cases.append(("linear/64x256to10", linear_case))
    cases.append(("cross_entropy/64x10", cross_entropy_case))
    cases.append(("bn_rows/256x300", bn_rows_case))
    return cases


def op_step(make):
    leaves, fwd, scalar = make()

    def step():
        for leaf in leaves:
            leaf.grad = None  # lazy zero, as Var::zero_grad()
        y = fwd()
        (y if scalar else y.sum()).backward()

    return step


def chain(x):
    y = x
    for i in range(CHAIN):
        y = F.relu(y) if i % 2 == 0 else y + x
    return y


def autograd_cases():
    cases = []
    for n in CHAIN_SIZES:

        def fwd_bwd(n=n):
            x = param((n,), 1)

            def step():
                x.grad = None
                chain(x).sum().backward()

            return step

        def fwd_nograd(n=n):
            x = param((n,), 1)

            def step():
                with torch.no_grad():
                    chain(x)

            return step

        cases.append((f"chain100/fwd_bwd/n{n}", fwd_bwd))
        cases.append((f"chain100/fwd_nograd/n{n}", fwd_nograd))
    return cases


# bench_gemm.cpp's (m, n, k), in its order: C [m x n] = A B (form nn) or A^T B with A stored
# k x m (form tn), or A B^T with B stored n x k (form nt, the weight gradient: n and k of these
# shapes exchanged, as bench_gemm does). torch.mm writes into a preallocated C, as the C++
# kernels do, on one thread whatever --threads says (the convolutions run these products one
# per image and thread).
GEMM_SHAPES = [(16, 1024, 16), (32, 256, 32), (64, 64, 64), (16, 784, 16), (32, 196, 32), (64, 49, 64),
               (36, 1024, 36), (72, 256, 72), (144, 64, 144), (144, 64, 576),
               (64, 256, 288), (64, 256, 576), (64, 256, 1152), (144, 64, 1152),
               (512, 49, 4608), (2240, 128, 10000), (2240, 850, 10000),
               (1700, 1700, 64), (1700, 1700, 512), (850, 1700, 64), (850, 1700, 512),
               (768, 1, 512)]


def gemm_cases():
    cases = []
    for form in ("nn", "tn", "nt"):
        for m, n, k in GEMM_SHAPES:
            if form == "nt":
                n, k = k, n

            def make(form=form, m=m, n=n, k=k):
                a = hashed((k, m) if form == "tn" else (m, k), 1)
                a = a.t() if form == "tn" else a
                b = hashed((n, k), 2).t() if form == "nt" else hashed((k, n), 2)
                c = torch.empty(m, n)

                def step():
                    torch.mm(a, b, out=c)

                return step

            cases.append((f"gemm/{form}/m{m}_n{n}_k{k}/torch", make))
    return cases


def time_step(step, warmup_s, repeat_s, repeats, clock=time.perf_counter):
    """Median seconds per call: warm-up, then `repeats` loops of about repeat_s each."""
    t0, calls = clock(), 0
    while calls < 3 or clock() - t0 < warmup_s:
        step()
        calls += 1
    per_call = (clock() - t0) / calls
    iters = max(1, int(repeat_s / max(per_call, 1e-9)))
    samples = []
    for _ in range(repeats):
        t = clock()
        for _ in range(iters):
            step()
        samples.append((clock() - t) / iters)
    return statistics.median(samples)


def checksum(g):
    g = g.detach().double().flatten()
    k = (torch.arange(g.numel(), dtype=torch.int64) % 7 - 3).double()
    return [float((g * k).sum()), float(g.abs().sum())]


def verify(cases):
    out = {}
    for name, make in cases:
        leaves, fwd, scalar = make()
        y = fwd()
        loss = y if scalar else F.relu(y).sum()  # as bench_ops --verify: see there why relu
        loss.backward()
        out[name] = {"loss": loss.item(),
                     "grads": [checksum(l.grad if l.grad is not None else torch.zeros_like(l))
                               for l in leaves]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=["ops", "autograd", "gemm"], default="ops")
    ap.add_argument("--filter", default="", help="regex on the benchmark names")
    ap.add_argument("--verify", action="store_true", help="print checksums instead of timing")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--repeat-time", type=float, default=0.1, help="seconds per repeat")
    ap.add_argument("--warmup", type=float, default=0.2, help="seconds of warm-up per case")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--clock", choices=["wall", "process"], default="wall",
                    help="process: CPU time of the process (with --threads 1, robust to load "
                    "from other processes; bench_ops' cpu_time is the same measure)")
    args = ap.parse_args()

    if args.verify and args.suite != "ops":
        ap.error("--verify checks the op suite only")
    torch.set_num_threads(1 if args.suite == "gemm" else args.threads)
    cases = {"ops": op_cases, "autograd": autograd_cases, "gemm": gemm_cases}[args.suite]()
    cases = [(n, m) for n, m in cases if re.search(args.filter, n)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    if args.verify:
        json.dump(verify(cases), sys.stdout, indent=1)
        print()
        return
    results = {}
    for name, make in cases:
        step = op_step(make) if args.suite == "ops" else make()
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        results[name] = 1e3 * time_step(step, args.warmup, args.repeat_time, args.repeats, clock)
        print(f"{name:40s} {results[name]:10.4f} ms", file=sys.stderr)
    json.dump(results, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
