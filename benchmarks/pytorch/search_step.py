#!/usr/bin/env python3
"""One full first-order search step of the DARTS supernet in PyTorch: the twin of
benchmarks/bench_search_step.cpp.

    python3 benchmarks/pytorch/search_step.py                     # all modes, one fresh process each
    python3 benchmarks/pytorch/search_step.py --mode egs4_node_sparse --steps 3
    python3 benchmarks/pytorch/search_step.py --threads 1 --clock process

The network is a reimplementation of DARTS' cnn/model_search.py (quark0/darts) with the ops of
cnn/operations.py, as ALGORITHMS.md §1.1-1.2 specifies them: non-affine BN inside the mixed ops and
the preprocessing, a non-affine BN after each pooling op (search only), FactorizedReduce for
skip_connect at stride 2 and for preprocess0 after a reduction cell, 8 cells (C = 16, reductions
at 2 and 5, stem multiplier 3), global average pooling and a linear classifier (10 classes).
The mixed op is the reference's `sum(w * op(x) for w, op in zip(weights, ops))`, the "none" op
included (Zero: x.mul(0.)).

One step = one first-order architecture step on an architecture batch (fresh estimator sample,
forward, gradient of the loss to alpha only, Adam lr 3e-4, betas (0.5, 0.999), wd 1e-3), then one
weight step on a weight batch (fresh sample, no gradient to alpha, forward + backward, grad-norm
clip 5, SGD lr 0.025, momentum 0.9, wd 3e-4). Batch 64, 3 x 32 x 32 synthetic images (fixed seed).
As in datanas, the architecture step differentiates alpha only (torch.autograd.grad(loss, alphas):
no weight gradient kernel runs; DARTS' own code calls loss.backward() there and computes the weight
gradients for nothing, which would only make PyTorch slower) and the weight step does not
differentiate alpha (the mixing weights are computed under no_grad).

Modes:
  softmax_edge_dense  DARTS: w = softmax(alpha) per edge (row), every op runs
  egs4_node_dense     DATA (EGS, M = 4, one group per node over all (edge, op) pairs): p = softmax,
                      4 straight-through Gumbel one-hots (tau 5), b = their element-wise max (OR),
                      w = b / sum(b); every op runs (the reference code)
  egs4_node_sparse    the same weights; only ops with w > 0 run (GDAS-style code)

Output: one JSON object per mode: ms_per_step (median wall time of --steps steps after --warmup
steps), cpu_ms_per_step (median process CPU time), images_per_s (64 + 64 images per step),
peak_rss_MB (resource.getrusage ru_maxrss of the process that ran the mode; each mode runs in a
fresh process unless --mode is given), rss_after_setup_MB (VmRSS after building the model, before
any step: the cost of the interpreter and of the torch libraries), params (asserted = 1930618).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = ["softmax_edge_dense", "egs4_node_dense", "egs4_node_sparse"]
DARTS_PARAMS = 1930618
BATCH = 64
IMAGES = 4 * BATCH


def build(torch):
    nn = torch.nn
    F = torch.nn.functional

    class ReLUConvBN(nn.Module):
        def __init__(self, c_in, c_out, k, stride, pad, affine=False):
            super().__init__()
            self.op = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, k, stride, pad, bias=False),
                                    nn.BatchNorm2d(c_out, affine=affine))

        def forward(self, x):
            return self.op(x)

    class DilConv(nn.Module):
        def __init__(self, c_in, c_out, k, stride, pad, dilation, affine=False):
            super().__init__()
            self.op = nn.Sequential(
                nn.ReLU(inplace=False),
                nn.Conv2d(c_in, c_in, k, stride, pad, dilation=dilation, groups=c_in, bias=False),
                nn.Conv2d(c_in, c_out, 1, padding=0, bias=False),
                nn.BatchNorm2d(c_out, affine=affine))

        def forward(self, x):
            return self.op(x)

    class SepConv(nn.Module):
        def __init__(self, c_in, c_out, k, stride, pad, affine=False):
            super().__init__()
            self.op = nn.Sequential(
                nn.ReLU(inplace=False),
                nn.Conv2d(c_in, c_in, k, stride, pad, groups=c_in, bias=False),
                nn.Conv2d(c_in, c_in, 1, padding=0, bias=False),
                nn.BatchNorm2d(c_in, affine=affine),
                nn.ReLU(inplace=False),
                nn.Conv2d(c_in, c_in, k, 1, pad, groups=c_in, bias=False),
                nn.Conv2d(c_in, c_out, 1, padding=0, bias=False),
                nn.BatchNorm2d(c_out, affine=affine))

        def forward(self, x):
            return self.op(x)

    class Identity(nn.Module):
        def forward(self, x):
            return x

    class Zero(nn.Module):
        def __init__(self, stride):
            super().__init__()
            self.stride = stride

        def forward(self, x):
            if self.stride == 1:
                return x.mul(0.)
            return x[:, :, ::self.stride, ::self.stride].mul(0.)

    class FactorizedReduce(nn.Module):
        def __init__(self, c_in, c_out, affine=False):
            super().__init__()
            assert c_out % 2 == 0
            self.relu = nn.ReLU(inplace=False)
            self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
            self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
            self.bn = nn.BatchNorm2d(c_out, affine=affine)

        def forward(self, x):
            x = self.relu(x)
            return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))

    OPS = {
        "none": lambda C, s: Zero(s),
        "max_pool_3x3": lambda C, s: nn.Sequential(nn.MaxPool2d(3, stride=s, padding=1),
                                                   nn.BatchNorm2d(C, affine=False)),
        "avg_pool_3x3": lambda C, s: nn.Sequential(nn.AvgPool2d(3, stride=s, padding=1, count_include_pad=False),
                                                   nn.BatchNorm2d(C, affine=False)),
        "skip_connect": lambda C, s: Identity() if s == 1 else FactorizedReduce(C, C, affine=False),
        "sep_conv_3x3": lambda C, s: SepConv(C, C, 3, s, 1, affine=False),
        "sep_conv_5x5": lambda C, s: SepConv(C, C, 5, s, 2, affine=False),
        "dil_conv_3x3": lambda C, s: DilConv(C, C, 3, s, 2, 2, affine=False),
        "dil_conv_5x5": lambda C, s: DilConv(C, C, 5, s, 4, 2, affine=False),
    }
    PRIMITIVES = list(OPS)  # ALGORITHMS.md §1.1 column order

    class MixedOp(nn.Module):
        def __init__(self, C, stride):
            super().__init__()
            self._ops = nn.ModuleList([OPS[p](C, stride) for p in PRIMITIVES])

        def forward(self, x, weights, sparse):
            if not sparse:  # the reference: every op, including none
                return sum(w * op(x) for w, op in zip(weights, self._ops))
            # GDAS-style: only the selected ops run (host-side selection, as GDAS' argmax)
            sel = [k for k, v in enumerate(weights.detach().tolist()) if v != 0.0]
            if not sel:
                return None
            return sum(weights[k] * self._ops[k](x) for k in sel)

    class Cell(nn.Module):
        def __init__(self, steps, multiplier, C_pp, C_p, C, reduction, reduction_prev):
            super().__init__()
            self.reduction = reduction
            self.preprocess0 = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                                else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False))
            self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
            self._steps, self._multiplier = steps, multiplier
            self._ops = nn.ModuleList()
            for i in range(steps):
                for j in range(2 + i):
                    self._ops.append(MixedOp(C, 2 if reduction and j < 2 else 1))

        def forward(self, s0, s1, weights, sparse):
            states = [self.preprocess0(s0), self.preprocess1(s1)]
            offset = 0
            for i in range(self._steps):
                terms = [self._ops[offset + j](h, weights[offset + j], sparse) for j, h in enumerate(states)]
                terms = [t for t in terms if t is not None]
                offset += len(states)
                states.append(sum(terms))
            return torch.cat(states[-self._multiplier:], dim=1)

    class Network(nn.Module):
        def __init__(self, C=16, num_classes=10, layers=8, steps=4, multiplier=4, stem_multiplier=3):
            super().__init__()
            self._steps = steps
            C_curr = stem_multiplier * C
            self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
            C_pp, C_p, C_curr = C_curr, C_curr, C
            self.cells = nn.ModuleList()
            reduction_prev = False
            for i in range(layers):
                reduction = i in [layers // 3, 2 * layers // 3]
                if reduction:
                    C_curr *= 2
                cell = Cell(steps, multiplier, C_pp, C_p, C_curr, reduction, reduction_prev)
                reduction_prev = reduction
                self.cells.append(cell)
                C_pp, C_p = C_p, multiplier * C_curr
            self.global_pooling = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(C_p, num_classes)
            k = sum(2 + i for i in range(steps))
            # not registered as parameters (as in model_search.py)
            self.alphas_normal = (1e-3 * torch.randn(k, len(PRIMITIVES))).requires_grad_(True)
            self.alphas_reduce = (1e-3 * torch.randn(k, len(PRIMITIVES))).requires_grad_(True)

        def arch_parameters(self):
            return [self.alphas_normal, self.alphas_reduce]

        def forward(self, x, w_normal, w_reduce, sparse):
            s0 = s1 = self.stem(x)
            for cell in self.cells:
                s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal, sparse)
            return self.classifier(self.global_pooling(s1).flatten(1))

    return Network, PRIMITIVES


def egs_node_weights(torch, alpha, steps, M, tau):
    """EGS per node: one categorical group per node over its (2 + i) x K (edge, op) pairs."""
    F = torch.nn.functional
    out, offset = [], 0
    for i in range(steps):
        n = 2 + i
        logits = alpha[offset:offset + n].reshape(-1)
        logp = F.log_softmax(logits, dim=-1)
        zs = []
        for _ in range(M):
            g = -torch.empty_like(logp).exponential_().log()
            y = F.softmax((logp + g) / tau, dim=-1)
            h = F.one_hot(y.argmax(), y.numel()).to(y.dtype)
            zs.append(h - y.detach() + y)
        b = torch.stack(zs).max(dim=0).values
        out.append((b / b.sum()).reshape(n, -1))
        offset += n
    return torch.cat(out, dim=0)


def run_mode(args):
    import torch
    torch.set_num_threads(args.threads or os.cpu_count())
    # datanas runs float convolutions in full FMA precision (no TF32): the same work here.
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.manual_seed(1)
    Network, _ = build(torch)
    dev = torch.device(args.device)
    model = Network().to(dev)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    assert params == DARTS_PARAMS, f"DARTS supernet: {params} parameters, expected {DARTS_PARAMS}"
    alphas = model.arch_parameters()
    w_opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(alphas, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    g = torch.Generator().manual_seed(20261128)
    images = torch.rand(IMAGES, 3, 32, 32, generator=g)
    images = ((images - 0.5) / 0.29).to(dev)
    labels = torch.randint(0, 10, (IMAGES,), generator=g).to(dev)
    half = IMAGES // 2
    mode = args.mode
    sparse = mode.endswith("sparse")
    tau = 5.0
    crit = torch.nn.CrossEntropyLoss()

    def mixing():
        if mode == "softmax_edge_dense":
            return [torch.softmax(a, dim=-1) for a in alphas]
        return [egs_node_weights(torch, a, 4, 4, tau) for a in alphas]

    state = {"step": 0}

    def step():
        b = state["step"] % (half // BATCH)
        state["step"] += 1
        xw, yw = images[b * BATCH:(b + 1) * BATCH], labels[b * BATCH:(b + 1) * BATCH]
        xa, ya = images[half + b * BATCH:half + (b + 1) * BATCH], labels[half + b * BATCH:half + (b + 1) * BATCH]
        # architecture step (first order): gradient to alpha only
        wn, wr = mixing()
        loss = crit(model(xa, wn, wr, sparse), ya)
        grads = torch.autograd.grad(loss, alphas)
        for a, ga in zip(alphas, grads):
            a.grad = ga
        a_opt.step()
        # weight step: fresh sample, no gradient to alpha
        with torch.no_grad():
            wn, wr = mixing()
        w_opt.zero_grad(set_to_none=True)
        loss = crit(model(xw, wn, wr, sparse), yw)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        w_opt.step()

    rss_setup = current_rss_mb()
    gpu = dev.type == "cuda"
    for _ in range(args.warmup):
        step()
    if gpu:
        # GPU: CUDA events around each step (the twin of benchmarks/gpu/bench_gpu_step.cpp),
        # peak = torch's allocator high-water mark over the timed steps (tensors, not the cache).
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        if gpu:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            step()
            e1.record()
            e1.synchronize()
            wall.append(e0.elapsed_time(e1))
        else:
            step()
            wall.append(1e3 * (time.perf_counter() - t0))
        cpu.append(1e3 * (time.process_time() - c0))
    ms = statistics.median(wall)
    extra = {}
    if gpu:
        extra = {"device": torch.cuda.get_device_name(0), "tf32": args.tf32,
                 "gpu_peak_MB": round(torch.cuda.max_memory_allocated() / 2**20, 2)}
    return {**extra,
        "mode": mode, "steps": args.steps, "threads": torch.get_num_threads(),
        "ms_per_step": round(ms, 3), "cpu_ms_per_step": round(statistics.median(cpu), 3),
        "wall_ms_all": [round(v, 1) for v in wall], "images_per_s": round(2 * BATCH / (ms / 1e3), 2),
        "rss_after_setup_MB": round(rss_setup, 2),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 2),
        "params": params, "torch": torch.__version__,
    }


def current_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024.0
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES, help="run this mode in this process (default: each mode in a fresh one)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default os.cpu_count())")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (GPU: CUDA-event timing, gpu_peak_MB)")
    ap.add_argument("--tf32", action="store_true",
                    help="GPU: let cuDNN and cuBLAS use TF32 (torch's default for cuDNN; datanas never does)")
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    out = []
    for m in MODES:
        cmd = [sys.executable, os.path.abspath(__file__), "--mode", m, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device]
        if args.tf32:
            cmd.append("--tf32")
        out.append(json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
