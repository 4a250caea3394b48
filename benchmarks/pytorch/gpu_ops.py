#!/usr/bin/env python3
"""The PyTorch twin of the "op/..." rows of benchmarks/gpu/bench_gpu_step.cpp: forward + backward
of single ops at the DARTS search network's sizes (batch 64, C = 16, 32 x 32), every input
requiring grad, the output gradient all ones, timed with CUDA events after warm-up (median of
--reps), on the same card.

    python3 benchmarks/pytorch/gpu_ops.py [--reps 20] [--warmup 3] [--tf32]

Output: one JSON object per line, {"what": "op/<name>", "ms": median, "ms_all": [...]}, with the
names bench_gpu_step uses (its depthwise rows exist twice there: cuDNN, and "+own" for datanas'
kernels; PyTorch picks its own implementation for float depthwise convolutions, reported in the
first line). TF32 is off unless --tf32, as datanas runs float convolutions in full FMA precision.
"""

import argparse
import json
import statistics
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

BATCH, C, HW = 64, 16, 32


def time_it(f, warmup, reps):
    for _ in range(warmup):
        f()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        f()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1))
    return statistics.median(times), times


def op_case(name, shapes, op, warmup, reps, gen):
    xs = [torch.randn(s, generator=gen).cuda().requires_grad_(True) for s in shapes]
    dy = {}

    def f():
        y = op(xs)
        if "dy" not in dy:
            dy["dy"] = torch.ones_like(y)
        y.backward(dy["dy"])

    ms, times = time_it(f, warmup, reps)
    print(json.dumps({"what": "op/" + name, "ms": round(ms, 4), "ms_all": [round(t, 3) for t in times]}),
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tf32", action="store_true", help="let cuDNN and cuBLAS use TF32 (torch's default)")
    args = ap.parse_args()
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = False
    print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                      "cudnn": torch.backends.cudnn.version(), "tf32": args.tf32}), flush=True)
    gen = torch.Generator().manual_seed(4)
    x = (BATCH, C, HW, HW)
    w, r = args.warmup, args.reps
    op_case("relu", [x], lambda v: F.relu(v[0]), w, r, gen)
    op_case("conv3x3_general_16x16", [x, (16, 16, 3, 3)], lambda v: F.conv2d(v[0], v[1], padding=1), w, r, gen)
    op_case("conv3x3_depthwise", [x, (16, 1, 3, 3)], lambda v: F.conv2d(v[0], v[1], padding=1, groups=16), w, r, gen)
    op_case("conv5x5_depthwise", [x, (16, 1, 5, 5)], lambda v: F.conv2d(v[0], v[1], padding=2, groups=16), w, r, gen)
    op_case("conv5x5_depthwise_dil2", [x, (16, 1, 5, 5)],
            lambda v: F.conv2d(v[0], v[1], padding=4, dilation=2, groups=16), w, r, gen)
    op_case("conv3x3_depthwise_stride2", [x, (16, 1, 3, 3)],
            lambda v: F.conv2d(v[0], v[1], stride=2, padding=1, groups=16), w, r, gen)
    op_case("conv1x1", [x, (16, 16, 1, 1)], lambda v: F.conv2d(v[0], v[1]), w, r, gen)
    rm, rv = torch.zeros(16, device="cuda"), torch.ones(16, device="cuda")
    op_case("batch_norm_nonaffine_train", [x],
            lambda v: F.batch_norm(v[0], rm, rv, training=True, momentum=0.1, eps=1e-5), w, r, gen)
    op_case("max_pool3x3", [x], lambda v: F.max_pool2d(v[0], 3, 1, 1), w, r, gen)
    op_case("avg_pool3x3", [x], lambda v: F.avg_pool2d(v[0], 3, 1, 1, count_include_pad=False), w, r, gen)
    op_case("weighted_sum_8", [x] * 8 + [(8,)], lambda v: sum(v[8][i] * v[i] for i in range(8)), w, r, gen)


if __name__ == "__main__":
    main()
