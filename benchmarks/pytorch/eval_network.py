"""The DARTS evaluation network (ALGORITHMS.md 1.4) written in PyTorch from the specification,
as the independent reference for datanas' EvalNetwork: parameter counts ("param size", without
the auxiliary head) and the training-step benchmark beside benchmarks/bench_train_step.cpp.

    python3 benchmarks/pytorch/eval_network.py --params            # counts of the shipped genotypes
    python3 benchmarks/pytorch/eval_network.py --step --genotype DARTS_V2 --init-channels 16 --layers 8
"""
import argparse
import json
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_step import current_rss_mb

DARTS_V1 = dict(
    normal=[[("sep_conv_3x3", 1), ("sep_conv_3x3", 0)], [("skip_connect", 0), ("sep_conv_3x3", 1)],
            [("skip_connect", 0), ("sep_conv_3x3", 1)], [("sep_conv_3x3", 0), ("skip_connect", 2)]],
    reduce=[[("max_pool_3x3", 0), ("max_pool_3x3", 1)], [("skip_connect", 2), ("max_pool_3x3", 0)],
            [("max_pool_3x3", 0), ("skip_connect", 2)], [("skip_connect", 2), ("avg_pool_3x3", 0)]])
DARTS_V2 = dict(
    normal=[[("sep_conv_3x3", 0), ("sep_conv_3x3", 1)], [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)],
            [("sep_conv_3x3", 1), ("skip_connect", 0)], [("skip_connect", 0), ("dil_conv_3x3", 2)]],
    reduce=[[("max_pool_3x3", 0), ("max_pool_3x3", 1)], [("skip_connect", 2), ("max_pool_3x3", 1)],
            [("max_pool_3x3", 0), ("skip_connect", 2)], [("skip_connect", 2), ("max_pool_3x3", 1)]])
DATA_M4 = dict(
    normal=[[("skip_connect", 0), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1)],
            [("skip_connect", 2), ("skip_connect", 1), ("sep_conv_3x3", 2)],
            [("sep_conv_5x5", 3), ("skip_connect", 3)],
            [("skip_connect", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 2)]],
    reduce=[[("skip_connect", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 1)],
            [("sep_conv_5x5", 0), ("dil_conv_5x5", 2), ("skip_connect", 1)],
            [("max_pool_3x3", 0), ("skip_connect", 2)],
            [("dil_conv_3x3", 1), ("dil_conv_5x5", 1), ("skip_connect", 3)]])
DATA_M7 = dict(
    normal=[[("skip_connect", 0), ("sep_conv_3x3", 0), ("skip_connect", 1), ("sep_conv_3x3", 1)],
            [("skip_connect", 0), ("sep_conv_3x3", 2), ("skip_connect", 1)],
            [("skip_connect", 0), ("dil_conv_3x3", 3), ("skip_connect", 2)],
            [("skip_connect", 1), ("sep_conv_3x3", 2), ("skip_connect", 2)]],
    reduce=[[("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 1)],
            [("sep_conv_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 2)],
            [("dil_conv_3x3", 1), ("skip_connect", 2), ("dil_conv_3x3", 2), ("sep_conv_3x3", 2),
             ("dil_conv_3x3", 3)],
            [("skip_connect", 0), ("sep_conv_3x3", 0)]])
GENOTYPES = dict(DARTS_V1=DARTS_V1, DARTS_V2=DARTS_V2, DATA_M4=DATA_M4, DATA_M7=DATA_M7)


def relu_conv_bn(cin, cout, k, stride, pad, dilation=1, groups=1):
    return [nn.ReLU(), nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False)]


class FactorizedReduce(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv_1 = nn.Conv2d(cin, cout // 2, 1, 2, bias=False)
        self.conv_2 = nn.Conv2d(cin, cout // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def make_op(name, c, stride):
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    if name.startswith("sep_conv"):
        k = int(name[-1])
        return nn.Sequential(
            nn.ReLU(), nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(), nn.Conv2d(c, c, k, 1, k // 2, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c))
    if name.startswith("dil_conv"):
        k = int(name[-1])
        return nn.Sequential(
            nn.ReLU(), nn.Conv2d(c, c, k, stride, k - 1, dilation=2, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
    raise ValueError(name)


def drop_path(x, p):
    keep = 1.0 - p
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    def __init__(self, nodes, c_pp, c_p, c, reduction, reduction_prev):
        super().__init__()
        self.preprocess0 = FactorizedReduce(c_pp, c) if reduction_prev else nn.Sequential(
            *relu_conv_bn(c_pp, c, 1, 1, 0), nn.BatchNorm2d(c))
        self.preprocess1 = nn.Sequential(*relu_conv_bn(c_p, c, 1, 1, 0), nn.BatchNorm2d(c))
        self.terms = [(i, j) for i, node in enumerate(nodes) for (_, j) in node]
        self._ops = nn.ModuleList(
            [make_op(op, c, 2 if reduction and j < 2 else 1) for node in nodes for (op, j) in node])
        self.n = len(nodes)
        self.multiplier = len(nodes)

    def forward(self, s0, s1, p):
        states = [self.preprocess0(s0), self.preprocess1(s1)] + [None] * self.n
        for (i, j), op in zip(self.terms, self._ops):
            y = op(states[j])
            if self.training and p > 0 and not isinstance(op, nn.Identity):
                y = drop_path(y, p)
            states[i + 2] = y if states[i + 2] is None else states[i + 2] + y
        return torch.cat(states[2:], dim=1)


class AuxiliaryHead(nn.Module):
    def __init__(self, c, classes, stride):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(), nn.AvgPool2d(5, stride=stride, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU())
        self.classifier = nn.Linear(768, classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class Network(nn.Module):
    def __init__(self, genotype, c=36, layers=20, in_channels=3, image_size=32, classes=10, auxiliary=True):
        super().__init__()
        self.layers = layers
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 3 * c, 3, padding=1, bias=False), nn.BatchNorm2d(3 * c))
        c_pp, c_p, c_cur = 3 * c, 3 * c, c
        self.cells = nn.ModuleList()
        reduction_prev, hw = False, image_size
        self.auxiliary_head = None
        for i in range(layers):
            reduction = layers >= 3 and i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_cur *= 2
                hw = (hw + 1) // 2
            cell = Cell(genotype["reduce" if reduction else "normal"], c_pp, c_p, c_cur, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_cur
            if i == 2 * layers // 3 and auxiliary:
                self.auxiliary_head = AuxiliaryHead(c_p, classes, 3 if hw == 8 else 2)
        self.classifier = nn.Linear(c_p, classes)
        self.drop_path_prob = 0.0

    def forward(self, x):
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self.layers // 3 and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1)), aux


def param_size(model):
    """DARTS' count_parameters_in_MB: every parameter not in the auxiliary head, in millions."""
    return sum(p.numel() for n, p in model.named_parameters() if "auxiliary" not in n) / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", action="store_true")
    ap.add_argument("--step", action="store_true", help="time training steps")
    ap.add_argument("--genotype", default="DARTS_V2")
    ap.add_argument("--init-channels", type=int, default=36)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=96)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--in-channels", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true",
                    help="with --step: one JSON line (median ms, process CPU ms, peak RSS) instead of text")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.params:
        for name, g in GENOTYPES.items():
            m = Network(g, a.init_channels, a.layers, a.in_channels, a.image_size)
            aux = sum(p.numel() for n, p in m.named_parameters() if "auxiliary" in n)
            print(f"{name}: param size = {param_size(m):.6f}MB (auxiliary head {aux})")
    if a.step:
        torch.manual_seed(0)
        m = Network(GENOTYPES[a.genotype], a.init_channels, a.layers, a.in_channels, a.image_size)
        m.drop_path_prob = 0.1
        opt = torch.optim.SGD(m.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
        x = torch.randn(a.batch_size, a.in_channels, a.image_size, a.image_size)
        y = torch.randint(0, 10, (a.batch_size,))
        rss_setup = current_rss_mb()
        times, cpu_times = [], []
        for s in range(a.steps + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            logits, aux = m(x)
            loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(m.parameters(), 5)
            opt.step()
            if s > 0:  # the first step warms up the allocator
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
        times.sort()
        cpu_times.sort()
        median_ms = 1000 * times[len(times) // 2]
        # ru_maxrss: the process's peak resident memory (KiB on Linux), interpreter and libraries
        # included; rss_after_setup_MB says how much of it was there before the first step.
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        if a.json:
            print(json.dumps({
                "side": "pytorch", "genotype": a.genotype, "init_channels": a.init_channels,
                "layers": a.layers, "batch_size": a.batch_size, "steps": len(times),
                "threads": torch.get_num_threads(), "ms_per_step": round(median_ms, 3),
                "cpu_ms_per_step": round(1000 * cpu_times[len(cpu_times) // 2], 3),
                "rss_after_setup_MB": round(rss_setup, 2), "peak_rss_MB": round(peak_mb, 2)}))
        else:
            print(f"pytorch train step {a.genotype} C={a.init_channels} L={a.layers} batch {a.batch_size}: "
                  f"median {median_ms:.1f} ms over {len(times)} steps, peak RSS {peak_mb:.0f} MB "
                  f"({rss_setup:.0f} MB after setup)")


if __name__ == "__main__":
    main()
