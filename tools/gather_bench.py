"""GPU time of one batch's window gather: advanced indexing (a row index per element) against index_select of the
windows' contiguous spans (`tradelib.train.sources.take_spans`), full.yaml's shape (3.96M rows x 12 features, windows of
64, batch 1024). The GPU sleeps while all 300 gathers are queued, so the events time the GPU alone.

    python tools/gather_bench.py        # needs CUDA
"""
import time

import torch

dev = torch.device("cuda")
N, F, W, B = 3_959_737, 12, 64, 1024
X = torch.randn(N, F, device=dev)
y = torch.randn(N, device=dev)
offsets = torch.arange(-W + 1, 1, device=dev)
spans = X.as_strided((N - W + 1, W * F), (F, 1))
g = torch.Generator(device=dev).manual_seed(0)


def adv(ends):
    return X[ends[:, None] + offsets], y[ends]


def sel(ends):
    return torch.index_select(spans, 0, ends - (W - 1)).view(len(ends), W, F), y[ends]


def ends_batch():
    return torch.randint(W - 1, N, (B,), device=dev, generator=g)


e = ends_batch()
a, b = adv(e), sel(e)
assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
for name, fn in [("advanced indexing", adv), ("index_select spans", sel)] * 2:
    batches = [ends_batch() for _ in range(300)]
    torch.cuda.synchronize()
    s, t = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(int(1e9))  # while every launch is queued
    t0 = time.perf_counter()
    s.record()
    for ends in batches:
        fn(ends)
    t.record()
    host = (time.perf_counter() - t0) / len(batches) * 1e6
    torch.cuda.synchronize()
    print(f"{name:20s} GPU {s.elapsed_time(t) / len(batches) * 1e3:7.1f} us/batch  host launch {host:6.1f} us/batch")
