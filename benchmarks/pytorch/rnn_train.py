#!/usr/bin/env python3
"""Training throughput of the DARTS recurrent cell in PyTorch, doing the work datanas-train-rnn
does (for benchmarking datanas against it; see docs/experiments.md (section 2)):

  PTB vocabulary as data.py (<eos> per line), batchify, variable BPTT windows (bptt w.p. 0.95 else
  bptt/2, N(., 5), >= 5, <= bptt + 20), embedding dropout, locked dropout on the embedding and on
  the outputs, variational x / h masks shared over time (h mask also before every node's matmul),
  a DARTS_V2 cell, tied decoder, CE + beta * TAR, clip 0.25, SGD lr 20 scaled by seq_len / bptt.

Prints tokens per second of one training epoch over the first --train-limit tokens.
Run with OMP_NUM_THREADS=1 (and the same for datanas) for a like-for-like single-thread number.
"""
import argparse
import math
import os
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

DARTS_V2 = [('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5), ('tanh', 3),
            ('relu', 5)]
ACT = {'tanh': torch.tanh, 'relu': torch.relu, 'sigmoid': torch.sigmoid, 'identity': lambda x: x}


def read_corpus(path, vocab):
    ids = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            for w in line.split() + ['<eos>']:
                ids.append(vocab.setdefault(w, len(vocab)))
    return ids


def batchify(ids, bsz):
    rows = len(ids) // bsz
    return torch.tensor(ids[:rows * bsz], dtype=torch.long).view(bsz, rows).t().contiguous()


def mask(shape, p):
    return torch.empty(shape).bernoulli_(1 - p) / (1 - p)


class Model(nn.Module):
    def __init__(self, ntok, nhid, genotype, init=0.04):
        super().__init__()
        self.nhid, self.genotype = nhid, genotype
        self.encoder = nn.Embedding(ntok, nhid)
        self.w0 = nn.Parameter(torch.empty(2 * nhid, 2 * nhid).uniform_(-init, init))
        self.ws = nn.ParameterList([nn.Parameter(torch.empty(nhid, 2 * nhid).uniform_(-init, init)) for _ in genotype])
        self.decoder = nn.Linear(nhid, ntok)
        self.encoder.weight.data.uniform_(-init, init)
        self.decoder.weight = self.encoder.weight
        self.decoder.bias.data.zero_()

    def cell(self, x, h, xm, hm):
        c0, h0 = torch.split(torch.cat([x * xm, h * hm], -1).mm(self.w0), self.nhid, -1)
        states = [h + torch.sigmoid(c0) * (torch.tanh(h0) - h)]
        for i, (name, p) in enumerate(self.genotype):
            s = states[p]
            c, hh = torch.split((s * hm).mm(self.ws[i]), self.nhid, -1)
            states.append(s + torch.sigmoid(c) * (ACT[name](hh) - s))
        return torch.stack(states[1:], -1).mean(-1)

    def forward(self, inp, h, p):
        T, B = inp.shape
        w = self.encoder.weight
        w = w * mask((w.size(0), 1), p['e'])  # embedding dropout (whole words)
        emb = F.embedding(inp, w) * mask((1, B, self.nhid), p['i'])
        xm, hm = mask((B, self.nhid), p['x']), mask((B, self.nhid), p['h'])
        outs = []
        for t in range(T):
            h = self.cell(emb[t], h, xm, hm)
            outs.append(h)
        raw = torch.stack(outs)
        out = raw * mask((1, B, self.nhid), p['o'])
        return self.decoder(out.view(-1, self.nhid)), raw, h


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data-dir', default='../shared/data/ptb')
    ap.add_argument('--nhid', type=int, default=850)
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--bptt', type=int, default=35)
    ap.add_argument('--train-limit', type=int, default=100000)
    ap.add_argument('--lr', type=float, default=20)
    ap.add_argument('--seed', type=int, default=1267)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    vocab = {}
    train = read_corpus(os.path.join(a.data_dir, 'ptb.train.txt'), vocab)
    for s in ('valid', 'test'):
        read_corpus(os.path.join(a.data_dir, 'ptb.%s.txt' % s), vocab)
    data = batchify(train[:a.train_limit], a.batch_size)
    model = Model(len(vocab), a.nhid, DARTS_V2)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, weight_decay=8e-7)
    p = dict(o=0.75, h=0.25, x=0.75, i=0.2, e=0.1)
    hidden = torch.zeros(a.batch_size, a.nhid)
    model.train()
    i, tokens, loss_sum = 0, 0, 0.0
    start = time.perf_counter()
    while i < data.size(0) - 2:
        base = a.bptt if random.random() < 0.95 else a.bptt / 2
        seq = min(max(5, int(random.gauss(base, 5))), a.bptt + 20)
        n = min(seq, data.size(0) - 1 - i)
        inp, tgt = data[i:i + n], data[i + 1:i + 1 + n].reshape(-1)
        for g in opt.param_groups:
            g['lr'] = a.lr * seq / a.bptt
        hidden = hidden.detach()
        logits, raw, hidden = model(inp, hidden, p)
        ce = F.cross_entropy(logits, tgt)
        loss = ce + 1e-3 * (raw[1:] - raw[:-1]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        loss_sum += ce.item() * tgt.numel()
        tokens += tgt.numel()
        i += seq
    secs = time.perf_counter() - start
    print('pytorch %s, %d threads: nhid %d batch %d: %d tokens in %.1f s = %.0f tok/s (train loss %.4f, ppl %.1f)' %
          (torch.__version__, torch.get_num_threads(), a.nhid, a.batch_size, tokens, secs, tokens / secs,
           loss_sum / tokens, math.exp(loss_sum / tokens)))


if __name__ == '__main__':
    main()
