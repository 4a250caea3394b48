#!/usr/bin/env python3
"""Search throughput of the DARTS recurrent search cell in PyTorch, doing the work
datanas-search-rnn does with --estimator softmax --granularity edge (DARTS, first order), for
benchmarking datanas against it:

  for each window of the training stream (bptt, or bptt / 2 with probability 0.05; no jitter, as
  DARTS' search script):
    architecture step: Adam (lr 3e-3, wd 1e-3) on alpha only, loss = CE on the window of the
      validation stream (batchified with the training batch size) at row i mod (rows - 1), with
      its own hidden state; the weights are frozen (datanas computes dL/dalpha only; DARTS'
      architect.py also fills the weights' gradients and throws them away, more work than this)
    weight step: SGD (lr 20 * seq_len / bptt, wd 5e-7) on CE + 1e-3 TAR, clip 0.25 over the
      weights (alpha is not a module parameter, as in DARTS' model_search.py)

The cell is DARTS' DARTSCellSearch (rnn/model_search.py): node i multiplies all its i + 1
predecessor states by W_i in one stacked product, mixes the four non-none ops of each with the
softmax of alpha, and batch-normalises (non-affine, batch statistics; datanas keeps no running
statistics, so neither does this). Dropout masks as in training (rnn_train.py), search values.

Prints training + architecture tokens per second (datanas' tokens_per_second), validation
excluded. Run with OMP_NUM_THREADS=1 (and the same for datanas) for a single-thread number.
"""
import argparse
import math
import os
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from rnn_train import ACT, batchify, mask, read_corpus

PRIMITIVES = ['none', 'tanh', 'relu', 'sigmoid', 'identity']
STEPS = 8


def bn(s):
    return F.batch_norm(s, None, None, training=True)


class SearchModel(nn.Module):
    def __init__(self, ntok, nhid, init=0.04):
        super().__init__()
        self.nhid = nhid
        self.encoder = nn.Embedding(ntok, nhid)
        self.w0 = nn.Parameter(torch.empty(2 * nhid, 2 * nhid).uniform_(-init, init))
        self.ws = nn.ParameterList([nn.Parameter(torch.empty(nhid, 2 * nhid).uniform_(-init, init))
                                    for _ in range(STEPS)])
        self.decoder = nn.Linear(nhid, ntok)
        self.encoder.weight.data.uniform_(-init, init)
        self.decoder.weight = self.encoder.weight
        self.decoder.bias.data.zero_()
        edges = STEPS * (STEPS + 1) // 2
        self.alpha = (1e-3 * torch.randn(edges, len(PRIMITIVES))).requires_grad_()  # not a parameter

    def cell(self, x, h, xm, hm, probs):
        c0, h0 = torch.split(torch.cat([x * xm, h * hm], -1).mm(self.w0), self.nhid, -1)
        s0 = bn(h + torch.sigmoid(c0) * (torch.tanh(h0) - h))
        states, offset = s0.unsqueeze(0), 0
        for i in range(STEPS):
            ch = (states * hm.unsqueeze(0)).view(-1, self.nhid).mm(self.ws[i]).view(i + 1, -1, 2 * self.nhid)
            c, hh = torch.split(ch, self.nhid, -1)
            c = torch.sigmoid(c)
            s = torch.zeros_like(s0)
            for k, name in enumerate(PRIMITIVES):
                if name == 'none':
                    continue
                unweighted = states + c * (ACT[name](hh) - states)
                s = s + torch.sum(probs[offset:offset + i + 1, k].view(-1, 1, 1) * unweighted, 0)
            states = torch.cat([states, bn(s).unsqueeze(0)], 0)
            offset += i + 1
        return states[1:].mean(0)

    def forward(self, inp, h, p):
        T, B = inp.shape
        probs = F.softmax(self.alpha, -1)
        emb = F.embedding(inp, self.encoder.weight) * mask((1, B, self.nhid), p['i'])
        xm, hm = mask((B, self.nhid), p['x']), mask((B, self.nhid), p['h'])
        outs = []
        for t in range(T):
            h = self.cell(emb[t], h, xm, hm, probs)
            outs.append(h)
        raw = torch.stack(outs)
        out = raw * mask((1, B, self.nhid), p['o'])
        return self.decoder(out.view(-1, self.nhid)), raw, h


def window(data, i, n):
    n = min(n, data.size(0) - 1 - i)
    return data[i:i + n], data[i + 1:i + 1 + n].reshape(-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data-dir', default='../shared/data/ptb')
    ap.add_argument('--nhid', type=int, default=300)
    ap.add_argument('--batch-size', type=int, default=256)
    ap.add_argument('--bptt', type=int, default=35)
    ap.add_argument('--train-limit', type=int, default=50000, help='first N training tokens')
    ap.add_argument('--eval-limit', type=int, default=20000, help='first N validation tokens (architecture stream)')
    ap.add_argument('--seed', type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    vocab = {}
    train = read_corpus(os.path.join(a.data_dir, 'ptb.train.txt'), vocab)
    valid = read_corpus(os.path.join(a.data_dir, 'ptb.valid.txt'), vocab)
    read_corpus(os.path.join(a.data_dir, 'ptb.test.txt'), vocab)
    data = batchify(train[:a.train_limit], a.batch_size)
    search = batchify(valid[:a.eval_limit], a.batch_size)
    if data.size(0) < 3 or search.size(0) < 2:
        raise SystemExit('streams too short for batch %d: raise --train-limit / --eval-limit' % a.batch_size)
    model = SearchModel(len(vocab), a.nhid)
    weights = list(model.parameters())
    w_opt = torch.optim.SGD(weights, lr=20, weight_decay=5e-7)
    a_opt = torch.optim.Adam([model.alpha], lr=3e-3, weight_decay=1e-3)
    p = dict(o=0.75, h=0.25, x=0.75, i=0.2)  # dropoute = 0 in the search
    hidden = torch.zeros(a.batch_size, a.nhid)
    hidden_valid = torch.zeros(a.batch_size, a.nhid)
    model.train()
    i, steps, tokens, loss_sum = 0, 0, 0, 0.0
    start = time.perf_counter()
    while i < data.size(0) - 2:
        seq = a.bptt if random.random() < 0.95 else a.bptt // 2
        # Architecture step: dL/dalpha only.
        for w in weights:
            w.requires_grad_(False)
        inp, tgt = window(search, i % (search.size(0) - 1), a.bptt)
        logits, _, hidden_valid = model(inp, hidden_valid.detach(), p)
        a_opt.zero_grad()
        F.cross_entropy(logits, tgt).backward()
        a_opt.step()
        for w in weights:
            w.requires_grad_(True)
        # Weight step: alpha frozen.
        model.alpha.requires_grad_(False)
        inp, tgt = window(data, i, seq)
        for g in w_opt.param_groups:
            g['lr'] = 20 * seq / a.bptt
        logits, raw, hidden = model(inp, hidden.detach(), p)
        ce = F.cross_entropy(logits, tgt)
        loss = ce + 1e-3 * (raw[1:] - raw[:-1]).pow(2).mean()
        w_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, 0.25)
        w_opt.step()
        model.alpha.requires_grad_(True)
        loss_sum += ce.item() * tgt.numel()
        tokens += tgt.numel()
        steps += 1
        i += seq
    secs = time.perf_counter() - start
    counted = tokens + steps * a.bptt * a.batch_size
    print('pytorch %s, %d threads: search nhid %d batch %d: %d steps, %d tokens in %.1f s = %.0f tok/s '
          '(train loss %.4f, ppl %.1f)' % (torch.__version__, torch.get_num_threads(), a.nhid, a.batch_size, steps,
                                          counted, secs, counted / secs, loss_sum / tokens,
                                          math.exp(loss_sum / tokens)))


if __name__ == '__main__':
    main()
